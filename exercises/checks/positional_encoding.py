"""Checks of the `positional_encoding` exercise: sinusoidal_positional_encoding(max_len, d_model).

The table is compared with the closed form, computed in float64 by pe_variant:
PE[p, 2i] = sin(p / 10000^(2i / d_model)), PE[p, 2i+1] = cos(p / 10000^(2i / d_model)).
pe_variant also computes the known mistakes (PE_MISTAKES: sin and cos swapped, halves concatenated,
the wrong exponent, positions from 1, ...) to name the one made.
"""
import functools

import torch

from exercises.checks.helpers import Checklist, compare, dtype_hint, expect, expect_shape

CHECKS = Checklist()


def pe_variant(max_len, d_model, mistake=None):
    """The closed form in float64, or with one known mistake."""
    p = torch.arange(max_len, dtype=torch.float64)[:, None] + (1 if mistake == "from_one" else 0)
    col = torch.arange(d_model, dtype=torch.float64)
    two_i = col - col % 2  # both columns of pair i use 2i
    exponent = {"own_index": col, "i_not_2i": two_i / 2}.get(mistake, two_i) / d_model
    angle = p * 10000.0 ** exponent if mistake == "multiplied" else p / 10000.0 ** exponent
    even = (col % 2 == 0)
    if mistake == "swapped":
        return torch.where(even, torch.cos(angle), torch.sin(angle))
    if mistake == "halves":
        half = (d_model + 1) // 2
        freq = p / 10000.0 ** (2 * torch.arange(half, dtype=torch.float64) / d_model)
        return torch.cat([torch.sin(freq), torch.cos(freq)[:, : d_model - half]], dim=1)
    return torch.where(even, torch.sin(angle), torch.cos(angle))


PE_MISTAKES = [
    ("sines and cosines are swapped: sin goes in the even columns (0, 2, 4, ...), cos in the odd ones",
     "swapped"),
    ("all sines first, then all cosines (concatenated halves): a model learns as well from that layout, "
     "but this course and the paper interleave them: pe[:, 0::2] = sin, pe[:, 1::2] = cos", "halves"),
    ("the odd column 2i+1 used its own index in the exponent; both columns of pair i share the "
     "frequency 1 / 10000^(2i / d_model)", "own_index"),
    ("the exponent used the pair number i instead of 2i: 10000^(2i / d_model), 2i being the even column",
     "i_not_2i"),
    ("positions start at 0: the first row is position 0 (sin 0 = 0, cos 0 = 1)", "from_one"),
    ("p was multiplied by 10000^(2i / d_model) instead of divided by it", "multiplied"),
]


def _pe_case(fn, max_len, d_model, rows=slice(None)):
    pe = fn(max_len, d_model)
    expect_shape(f"sinusoidal_positional_encoding({max_len}, {d_model})", pe, (max_len, d_model),
                 legend=" = (max_len, d_model)",
                 hints={(d_model, max_len): "rows are positions, columns are dimensions: (max_len, d_model)"})
    variants = [(hint, functools.partial(lambda m: pe_variant(max_len, d_model, m)[rows], m)) for hint, m in PE_MISTAKES]
    compare(f"PE({max_len}, {d_model})[{'row 0' if rows == 0 else 'all rows'}]", pe[rows],
            pe_variant(max_len, d_model)[rows].float(), variants=variants, atol=2e-4, rtol=1e-4)


@CHECKS.add("shape and dtype: (50, 16) gives a (50, 16) float32 table")
def pe_shape(fn):
    pe = fn(50, 16)
    expect_shape("sinusoidal_positional_encoding(50, 16)", pe, (50, 16), legend=" = (max_len, d_model)",
                 hints={(16, 50): "rows are positions, columns are dimensions: (max_len, d_model)"})
    expect(pe.dtype == torch.float32, f"dtype is {pe.dtype}, expected torch.float32",
           "hint: " + ("the table is added to float32 embeddings; a float64 table would turn them into float64"
                       if pe.dtype == torch.float64 else dtype_hint(pe.dtype, torch.float32)))


@CHECKS.add("row 0 (position 0) is [0, 1, 0, 1, ...]: sin 0 = 0, cos 0 = 1")
def pe_position_zero(fn):
    _pe_case(fn, 10, 8, rows=0)


@CHECKS.add("closed form (64, 16): PE[p, 2i] = sin(p / 10000^(2i/d_model)), PE[p, 2i+1] = cos(...)")
def pe_closed_form(fn):
    _pe_case(fn, 64, 16)


@CHECKS.add("other sizes: (1, 6), (30, 10), (512, 128)")
def pe_other_sizes(fn):
    for max_len, d_model in ((1, 6), (30, 10), (512, 128)):
        _pe_case(fn, max_len, d_model)


