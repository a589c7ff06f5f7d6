"""Checks of the `positional_encoding` exercise: sinusoidal_positional_encoding(max_len, d_model).

The table is compared with the paper's sinusoids, computed in float64 by pe_variant: column pair
(2i, 2i+1) holds the sine and cosine of p / 10000^(2i / d_model) at position p. pe_variant also
computes the known mistakes (PE_MISTAKES: sin and cos swapped, halves concatenated, the wrong
exponent, positions from 1, ...) to name the one made. An odd d_model is checked too: its last
column is a sine without its cosine.
"""
import functools

import torch

from exercises.checks.helpers import Checklist, Hint, call, compare, dtype_hint, expect, expect_shape

CHECKS = Checklist()


def pe_variant(max_len, d_model, mistake=None):
    """The paper's table in float64, or the table with one known mistake."""
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


SWAPPED = Hint(
    "sin and cos swapped", "Row 0 starts with 1 instead of 0: look at which columns get the sines.",
    "Sines go in the even columns (0, 2, 4, ...) and cosines in the odd ones: at position 0 every sine is 0 and "
    "every cosine 1, so row 0 reads 0, 1, 0, 1, ...",
    "pe[:, 0::2] = torch.sin(angles); pe[:, 1::2] = torch.cos(angles)")
HALVES = Hint(
    "concatenated halves", "All the sines come first, then all the cosines: look at how the two are put into the "
    "table.", "The paper (and this course) interleave them: column 2i is a sine, 2i+1 the cosine of the same "
    "angle. Concatenated halves are as good for a model but a different table.",
    "pe[:, 0::2] = torch.sin(angles); pe[:, 1::2] = torch.cos(angles)")
OWN_INDEX = Hint(
    "odd column's own frequency", "The odd columns do not share the frequency of the even column before them: "
    "look at the exponent of the odd columns.", "Columns 2i and 2i+1 form a pair: the sine and cosine of one "
    "angle, so both use the exponent 2i / d_model, not their own column index.",
    "frequencies for the pairs only: torch.arange(0, d_model, 2) / d_model in the exponent")
I_NOT_2I = Hint(
    "i instead of 2i", "The frequencies fall too slowly across the columns: look at the exponent.",
    "The exponent is the even column index 2i over d_model, so it runs from 0 to almost 1 across the table.",
    "exponent = torch.arange(0, d_model, 2) / d_model  # 2i / d_model")
FROM_ONE = Hint(
    "positions from 1", "Row 0 is not [0, 1, 0, 1, ...]: look at where the positions start.",
    "Row p encodes position p, and positions start at 0: sin 0 = 0, cos 0 = 1.",
    "position = torch.arange(max_len).unsqueeze(1)")
MULTIPLIED = Hint(
    "multiplied by the scale", "The angles grow far too fast in the later columns: look at how the position meets "
    "the frequency.", "The later pairs are the slow ones: their wavelengths grow geometrically, so the position "
    "is divided by 10000^(2i / d_model).", "angles = position / 10000 ** (2i / d_model)")
ODD_D_MODEL = Hint(
    "odd d_model", "A shape error with an odd d_model: look at the line that fills the cosine columns.",
    "With an odd d_model there is one sine column more than cosine columns: (d_model + 1) // 2 sines and "
    "d_model // 2 cosines; the last column is a sine without its cosine.",
    "pe[:, 1::2] = torch.cos(angles)[:, : d_model // 2]")
ROWS_COLUMNS = Hint(
    "rows and columns", "The table is (d_model, max_len): look at which dimension holds the positions.",
    "Row p is position p, so the table is (max_len, d_model) and adds to embeddings (T, d_model).",
    "pe = torch.zeros(max_len, d_model)")
PE_MISTAKES = [(SWAPPED, "swapped"), (HALVES, "halves"), (OWN_INDEX, "own_index"), (I_NOT_2I, "i_not_2i"),
               (FROM_ONE, "from_one"), (MULTIPLIED, "multiplied")]


def _pe_case(fn, max_len, d_model, rows=slice(None)):
    pe = call(fn, max_len, d_model)
    expect_shape(f"sinusoidal_positional_encoding({max_len}, {d_model})", pe, (max_len, d_model),
                 legend=" = (max_len, d_model)", hints={(d_model, max_len): ROWS_COLUMNS,
                                                        (max_len, d_model + 1): ODD_D_MODEL})
    variants = [(hint, functools.partial(lambda m: pe_variant(max_len, d_model, m)[rows], m))
                for hint, m in PE_MISTAKES]
    compare(f"PE({max_len}, {d_model})[{'row 0' if rows == 0 else 'all rows'}]", pe[rows],
            pe_variant(max_len, d_model)[rows].float(), variants=variants, atol=2e-4, rtol=1e-4)


@CHECKS.add("shape and dtype: (50, 16) gives a (50, 16) float32 table")
def pe_shape(fn):
    pe = call(fn, 50, 16)
    expect_shape("sinusoidal_positional_encoding(50, 16)", pe, (50, 16), legend=" = (max_len, d_model)",
                 hints={(16, 50): ROWS_COLUMNS})
    expect(pe.dtype == torch.float32, f"dtype is {pe.dtype}, expected torch.float32",
           hint=dtype_hint(pe.dtype, torch.float32))


@CHECKS.add("row 0 (position 0)")
def pe_position_zero(fn):
    _pe_case(fn, 10, 8, rows=0)


@CHECKS.add("the table for max_len=64, d_model=16 equals the paper's")
def pe_closed_form(fn):
    _pe_case(fn, 64, 16)


@CHECKS.add("other sizes: (1, 6), (30, 10), (512, 128)")
def pe_other_sizes(fn):
    for max_len, d_model in ((1, 6), (30, 10), (512, 128)):
        _pe_case(fn, max_len, d_model)


@CHECKS.add("an odd d_model: (7, 5) and (12, 9), the last column a sine without its cosine", on_error=ODD_D_MODEL)
def pe_odd_sizes(fn):
    for max_len, d_model in ((7, 5), (12, 9)):
        _pe_case(fn, max_len, d_model)
