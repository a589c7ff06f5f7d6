"""Lesson 03: the sinusoidal table, the module that adds it, relative positions, order blindness."""
import argparse
import math
import re

import pytest
import torch

from common import claims, load_lesson
from conftest import expect_user_error

L3 = load_lesson(3)


def closed_form(max_len, d_model):
    """The table written out entry by entry with math.sin / math.cos (float64)."""
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    for p in range(max_len):
        for col in range(d_model):
            two_i = col - col % 2  # columns 2i and 2i+1 share the angle p / 10000^(2i/d_model)
            angle = p / 10000 ** (two_i / d_model)
            table[p, col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("max_len, d_model", [(1, 4), (20, 8), (17, 7), (9, 1), (40, 10), (50, 64)])
def test_table_matches_the_closed_form_entry_by_entry(max_len, d_model):
    pe = L3.sinusoidal_positional_encoding(max_len, d_model)
    assert pe.shape == (max_len, d_model) and pe.dtype == torch.float32
    # angles in float64, so every entry is the closed form rounded to float32 (error <= 2^-25)
    torch.testing.assert_close(pe.double(), closed_form(max_len, d_model), atol=3e-8, rtol=0)


@pytest.mark.parametrize("d_model", [6, 7, 64])
def test_values_in_unit_range_and_first_row_is_0_1_0_1(d_model):
    pe = L3.sinusoidal_positional_encoding(2000, d_model)
    assert pe.abs().max().item() <= 1.0
    assert pe.min().item() < -0.99 and pe.max().item() > 0.99  # the fast columns reach both ends
    expected_row0 = torch.tensor([float(col % 2) for col in range(d_model)])  # sin 0 = 0, cos 0 = 1
    assert torch.equal(pe[0], expected_row0)


def test_wavelengths_follow_the_formula_and_are_measured_on_the_table():
    d_model = 16
    wavelengths = L3.pair_wavelengths(d_model)
    assert wavelengths.shape == (d_model // 2,)
    expected = torch.tensor([2 * math.pi * 10000 ** (2 * i / d_model) for i in range(d_model // 2)],
                            dtype=torch.float64)
    torch.testing.assert_close(wavelengths, expected)
    # Measured on the table: the angle of pair i is atan2(sin, cos); its mean step per position
    # (wrapped to (-pi, pi]) is w_i, and the wavelength 2*pi / w_i.
    pe = L3.sinusoidal_positional_encoding(128, d_model).double()
    angle = torch.atan2(pe[:, 0::2], pe[:, 1::2])  # (max_len, d_model/2)
    step = torch.remainder(angle[1:] - angle[:-1] + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(2 * math.pi / step.mean(0), wavelengths, rtol=1e-5, atol=0)
    # and each pair is no faster than the one before it
    change = (pe[1:] - pe[:-1]).abs().mean(0).view(-1, 2).mean(1)
    assert torch.all(change[1:] <= change[:-1])


def test_max_len_is_only_a_cache_of_the_formula():
    short, long = L3.sinusoidal_positional_encoding(50, 12), L3.sinusoidal_positional_encoding(300, 12)
    assert torch.equal(long[:50], short)
    assert torch.equal(L3.PositionalEncoding(12, max_len=300)(torch.zeros(1, 50, 12))[0], short)


def test_module_adds_exactly_the_table_and_has_no_parameters():
    module = L3.PositionalEncoding(16, max_len=40)
    x = torch.randn(3, 25, 16)
    table = L3.sinusoidal_positional_encoding(40, 16)
    assert torch.equal(module(x), x + table[:25])
    assert sum(p.numel() for p in module.parameters()) == 0
    assert list(module.state_dict()) == []  # non-persistent buffer: not saved in checkpoints
    assert torch.equal(dict(module.named_buffers())["pe"], table)
    assert torch.equal(module(x[:, :5]), x[:, :5] + table[:5])  # shorter sequences use the first rows


def test_module_buffer_moves_with_to():
    module = L3.PositionalEncoding(8, max_len=12).to(torch.float64)
    assert module.pe.dtype == torch.float64
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    assert module(x).dtype == torch.float64
    assert module.to("meta").pe.device.type == "meta"  # a device move without needing a GPU
    if torch.cuda.is_available():
        assert L3.PositionalEncoding(8, max_len=12).to("cuda").pe.device.type == "cuda"


def test_dropout_only_in_training_mode():
    module = L3.PositionalEncoding(8, max_len=12, dropout=0.5)
    x = torch.randn(2, 10, 8)
    expected = x + L3.sinusoidal_positional_encoding(12, 8)[:10]
    assert torch.equal(module.eval()(x), expected)
    torch.manual_seed(0)
    dropped = module.train()(x)
    zeros = dropped == 0
    assert 0.3 < zeros.float().mean().item() < 0.7  # about half of the entries dropped
    # the kept entries are scaled by 1 / (1 - 0.5)
    torch.testing.assert_close(dropped[~zeros], 2 * expected[~zeros])


def test_sequence_longer_than_max_len_raises():
    module = L3.PositionalEncoding(8, max_len=12)
    assert module(torch.zeros(2, 12, 8)).shape == (2, 12, 8)  # exactly max_len is fine
    with pytest.raises(ValueError, match="max_len"):
        module(torch.zeros(2, 13, 8))


@pytest.mark.parametrize("k", [1, 2, 7, 30])
def test_relative_position_matrix_maps_every_p_to_p_plus_k(k):
    d_model, max_len = 32, 80
    pe = L3.sinusoidal_positional_encoding(max_len, d_model)
    M = L3.relative_position_matrix(k, d_model)
    assert M.shape == (d_model, d_model)
    moved = pe[:-k] @ M.T  # M_k @ PE(p) for every p at once
    torch.testing.assert_close(moved, pe[k:], atol=1e-6, rtol=0)  # float32 rounding of the table
    assert (pe[:-k] - pe[k:]).abs().max() > 0.1  # the shift itself is far from the identity
    # block diagonal (2x2 blocks) and a rotation
    blocks = torch.block_diag(*[torch.ones(2, 2)] * (d_model // 2)).bool()
    assert M[~blocks].abs().max() == 0
    torch.testing.assert_close(M.T @ M, torch.eye(d_model), atol=1e-6, rtol=0)


def test_relative_position_matrix_exact_in_float64_and_needs_even_d_model():
    d_model, k = 12, 5
    table = closed_form(30, d_model)
    M = L3.relative_position_matrix(k, d_model, dtype=torch.float64)
    torch.testing.assert_close(table[:-k] @ M.T, table[k:], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="even"):
        L3.relative_position_matrix(1, 7)


def test_dot_products_depend_only_on_the_offset():
    max_len, d_model = 60, 24
    pe = L3.sinusoidal_positional_encoding(max_len, d_model).double()
    gram = pe @ pe.T
    w = L3.pair_frequencies(d_model)
    for k in range(-(max_len - 1), max_len):
        diagonal = torch.diagonal(gram, k)  # PE(p) . PE(p + k) for every p
        expected = torch.cos(k * w).sum().expand_as(diagonal)  # sum_i cos(k w_i)
        torch.testing.assert_close(diagonal, expected, atol=1e-4, rtol=0)


def test_concatenated_column_order_gives_all_sines_then_all_cosines():
    max_len, d_model = 30, 10
    concat = L3.sinusoidal_positional_encoding(max_len, d_model)[:, L3.concatenated_column_order(d_model)]
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    for p in range(max_len):
        for i in range(d_model // 2):
            angle = p / 10000 ** (2 * i / d_model)
            table[p, i], table[p, d_model // 2 + i] = math.sin(angle), math.cos(angle)
    torch.testing.assert_close(concat.double(), table, atol=3e-8, rtol=0)
    # the same dot products PE(p).PE(q), whatever the column order
    torch.testing.assert_close(concat @ concat.T, table.float() @ table.float().T)


def test_relative_matrices_compose_and_keep_lengths():
    d_model, k = 16, 7
    M1, Mk = (L3.relative_position_matrix(n, d_model, torch.float64) for n in (1, k))
    torch.testing.assert_close(torch.linalg.matrix_power(M1, k), Mk)
    torch.testing.assert_close(L3.relative_position_matrix(-k, d_model, torch.float64), Mk.T)  # M_-k = M_k^T
    pe = L3.sinusoidal_positional_encoding(200, d_model).double()
    torch.testing.assert_close(pe.pow(2).sum(1), torch.full((200,), d_model / 2, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 3])
def test_rotated_query_peaks_k_tokens_back_and_the_margin_does_not_depend_on_c(k):
    pe = L3.sinusoidal_positional_encoding(40, 16)
    T = pe.size(0)
    margins = []
    for c in (1.0, 8.0):
        scores, weights = L3.look_back_weights(pe, k, c)
        p = torch.arange(k, T)
        assert torch.equal(weights[p].argmax(-1), p - k)  # every query p >= k peaks at key p - k
        torch.testing.assert_close(scores[p, p - k], torch.full((T - k,), c * 8.0), rtol=1e-5, atol=1e-5)
        assert torch.all(weights.triu(1) == 0)  # causal: no weight on later keys
        row = scores[-1].clone()
        row[T - 1 - k] = -float("inf")
        margins.append((scores[-1, T - 1 - k] - row.max()) / scores[-1, T - 1 - k])
    torch.testing.assert_close(margins[0], margins[1])
    assert margins[0] < 0.1  # a shallow peak: the best other key scores within 10%


def test_learned_positional_embedding_adds_one_trained_row_per_position():
    learned = L3.LearnedPositionalEmbedding(8, max_len=12)
    x = torch.randn(2, 5, 8)
    assert torch.equal(learned(x), x + learned.table.weight[:5])
    assert sum(p.numel() for p in learned.parameters()) == 12 * 8
    (learned(x) ** 2).sum().backward()
    assert learned.table.weight.grad[:5].abs().sum() > 0 and torch.all(learned.table.weight.grad[5:] == 0)
    with pytest.raises(IndexError):
        learned(torch.zeros(1, 13, 8))  # no row for position 12


def test_attention_is_order_blind_without_positions_but_not_with_them():
    torch.manual_seed(0)
    d_model, T = 16, 10
    attn = load_lesson(2).MultiHeadAttention(d_model, n_heads=4).eval()
    add_positions = L3.PositionalEncoding(d_model, max_len=T)
    x = torch.randn(2, T, d_model)
    perm = torch.roll(torch.arange(T), 3)  # moves every token

    def self_attention(z):
        return attn(z, z, z)[0]

    with torch.no_grad():
        # without positions: shuffle in, the same shuffle out
        torch.testing.assert_close(self_attention(x[:, perm]), self_attention(x)[:, perm])
        with_pe = self_attention(add_positions(x[:, perm])) - self_attention(add_positions(x))[:, perm]
    assert with_pe.abs().max().item() > 1e-2


@pytest.mark.parametrize("flags, contains", [
    (("--d-model", "0"), "--d-model"),
    (("--d-model", "-8"), "--d-model"),
    (("--d-model", "6"), "multiple"),
    (("--max-len", "0"), "--max-len"),
    (("--max-len", "-3"), "--max-len"),
    (("--max-len", "8"), "--max-len"),
    (("--d-model", "64.5"), "--d-model"),
])
def test_bad_sizes_are_one_line_exit_2(capsys, flags, contains):
    expect_user_error(capsys, 3, *flags, contains=contains)


FIGURES = ("positional_encoding_heatmap.png", "positional_encoding_wavelengths.png",
           "positional_encoding_dot_products.png", "positional_encoding_layouts.png")


def test_quick_run_writes_its_figures(run_main, capsys):
    out = run_main(3, "--quick")
    for name in FIGURES:
        path = out / name
        assert path.exists(), name
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    text = capsys.readouterr().out
    assert "Key insights" in text and not re.search(r"\bnan\b", text)
    assert "zigzag" in text  # with BASE = 10000 the last cosine barely moves next to its sine


def test_wavelength_section_works_at_the_smallest_d_model(tmp_path, capsys):
    # d_model = 4 (allowed by --d-model) has only two sin/cos pairs: the table must not ask for pair 2
    args = argparse.Namespace(out_dir=tmp_path, show=False)
    pe = L3.sinusoidal_positional_encoding(16, 4)
    claims.reset()
    insight = L3.section_3_wavelengths(pe, 4, 16, args)
    assert insight.holds and claims.broken() == []
    assert "628.3 (last pair)" in str(insight)  # 2*pi*10000^(2/4): the last of the two pairs
    assert (tmp_path / "positional_encoding_wavelengths.png").exists()


def test_the_smallest_d_model_prints_what_it_has(run_main, capsys):
    run_main(3, "--quick", "--d-model", "4")
    out = " ".join(capsys.readouterr().out.split())
    assert "PE[:4, :4] (first 4 positions, first 4 dimensions) shape=(4, 4)" in out
    assert "the same columns in the order [0, 2, 1, 3]." in out  # the whole order, when it is short


def test_docstring_names_the_base_knob_not_a_fixed_number():
    doc = L3.sinusoidal_positional_encoding.__doc__
    assert "sin(p / BASE^(2i / d_model))" in doc and "10000^" not in doc


def test_attention_that_sees_positions_is_called_out(monkeypatch, capsys):
    class PositionAware(L3.MultiHeadAttention):  # a learner's bug: the output depends on the position
        def forward(self, query, key, value, **kwargs):
            out, weights = super().forward(query, key, value, **kwargs)
            return out + torch.arange(out.size(1), dtype=out.dtype)[:, None], weights

    monkeypatch.setattr(L3, "MultiHeadAttention", PositionAware)
    claims.reset()
    insight = L3.section_1_order_blindness(16, "cpu")
    out = " ".join(capsys.readouterr().out.split())
    assert claims.broken() == ["order-blind", "insight-order"] and not insight.holds
    assert "DOES NOT HOLD: Without positions the two outputs differ only by float rounding" in out
