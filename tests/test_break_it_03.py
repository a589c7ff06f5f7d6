"""Lesson 03's break-it catalogue: each learner-plausible edit makes the lesson name what broke.

Each case applies an edit to a copy of a lesson (tests/breakit.py), runs lesson 03 in-process at --quick
and checks: no traceback; each claim the edit breaks prints DOES NOT HOLD; every key insight that rests
on a broken claim prints DOES NOT HOLD too, so no insight asserts what the run contradicted. The
unedited lesson holds every claim at seeds 0, 1 and 2 at its default sizes.
"""
import pytest

from breakit import Edit, check_named, flat, run_lesson

# Each claim of lesson 03 that a key insight sums up, and that insight.
INSIGHT_OF = {
    "order-blind": "insight-order", "positions-give-order": "insight-order",
    "module-adds-table": "insight-module", "buffer-not-saved": "insight-module", "max-len-is-a-cache": "insight-module",
    "wavelengths-formula": "insight-wavelengths", "low-dims-fastest": "insight-wavelengths",
    "M_k-moves-every-p": "insight-relative", "M_k-is-a-rotation": "insight-relative",
    "dot-depends-on-offset": "insight-look-back", "look-back-peaks": "insight-look-back",
    "bigger-c-more-weight": "insight-look-back",
    "layouts-equivalent": "insight-layouts", "sines-then-cosines": "insight-layouts",
    "pe-length": "insight-loudness",
}
TABLE = "torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)"

# name: (the edits, the claims they break). Each edit is something a learner might do; the claims are the
# ones the lesson must then print as DOES NOT HOLD.
CATALOGUE = {
    # the table
    "sin in place of cos": ([Edit(3, "torch.cos(angles)]", "torch.sin(angles)]")],
                            ["entries-by-hand", "row-0-is-0-1", "table-angles", "M_k-moves-every-p",
                             "dot-depends-on-offset", "look-back-peaks", "sines-then-cosines", "pe-length"]),
    "sin and cos swapped": ([Edit(3, TABLE, "torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).flatten(1)")],
                            ["entries-by-hand", "row-0-is-0-1", "table-angles", "M_k-moves-every-p",
                             "look-back-peaks", "sines-then-cosines"]),
    "concatenated, not interleaved": ([Edit(3, TABLE, "torch.stack([torch.sin(angles), torch.cos(angles)], dim=1)"
                                                      ".flatten(1)")],
                                      ["entries-by-hand", "row-0-is-0-1", "table-angles", "M_k-moves-every-p",
                                       "look-back-peaks", "sines-then-cosines"]),
    "exponent i/d_model, not 2i/d_model": ([Edit(3, "two_i = torch.arange(0, d_model, 2, dtype=torch.float64)",
                                                 "two_i = torch.arange(0, d_model // 2, dtype=torch.float64)")],
                                           ["entries-by-hand", "wavelengths-formula"]),
    "exponent without its minus": ([Edit(3, "return BASE ** (-two_i / d_model)", "return BASE ** (two_i / d_model)")],
                                   ["entries-by-hand", "wavelengths-formula", "low-dims-fastest"]),
    "positions divided by max_len": ([Edit(3, "position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)",
                                           "position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1) / max_len")],
                                     ["entries-by-hand", "table-angles", "max-len-is-a-cache", "M_k-moves-every-p",
                                      "dot-depends-on-offset"]),
    # the module that adds it
    "positions added twice": ([Edit(3, "return self.dropout(x + self.pe[:T])",
                                    "return self.dropout(x + self.pe[:T] + self.pe[:T])")], ["module-adds-table"]),
    # challenges/bugs.py no_positions: the embeddings pass through without their positions
    "no positions (bugs.py no_positions)": ([Edit(3, "return self.dropout(x + self.pe[:T])", "return self.dropout(x)")],
                                            ["positions-give-order", "module-adds-table"]),
    "the table indexed by the batch axis": ([Edit(3, "T = x.size(1)", "T = x.size(0)")],
                                            ["positions-give-order", "module-adds-table", "refuses-too-long"]),
    "the table saved in state_dict": ([Edit(3, "persistent=False)", "persistent=True)")], ["buffer-not-saved"]),
    # relative positions and the layouts
    "M_k with the wrong sign": ([Edit(3, "M[idx + 1, idx], M[idx + 1, idx + 1] = -s, c",
                                      "M[idx + 1, idx], M[idx + 1, idx + 1] = s, c")],
                                ["M_k-moves-every-p", "M_k-is-a-rotation", "look-back-peaks"]),
    "columns reordered, weights not": ([Edit(3, "permuted.weight.copy_(layer.weight[:, order])",
                                             "permuted.weight.copy_(layer.weight)")], ["layouts-equivalent"]),
    # earlier lessons, as lesson 03 uses them
    "heads merged without the transpose (lesson 02)": ([Edit(2, "x.transpose(1, 2).reshape(B, T, self.d_model)",
                                                             "x.reshape(B, T, self.d_model)")], ["order-blind"]),
    "causal mask flipped (lesson 01)": ([Edit(1, "torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))",
                                              "torch.triu(torch.ones(T, T, dtype=torch.bool, device=device))")],
                                        ["look-back-peaks"]),
}


# What the lesson used to print as fact after these edits, now each with its verdict.
SAID = {"sin in place of cos": ["0.540302 0.841471 DOES NOT HOLD: Both entries equal their values by hand",
                                "DOES NOT HOLD: Row 0 is sin 0, cos 0",  # above a row of zeros
                                "4. DOES NOT HOLD: For each offset k a fixed rotation M_k maps PE(p) to PE(p+k)"]}


@pytest.mark.parametrize("name", CATALOGUE)
def test_an_edit_makes_the_lesson_name_what_broke(name, tmp_path):
    edits, breaks = CATALOGUE[name]
    run = run_lesson(3, ["--quick"], tmp_path, *edits)
    check_named(run, breaks, INSIGHT_OF)
    for text in SAID.get(name, []):
        assert text in flat(run.out), text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_unedited_lesson_holds_every_claim(seed, tmp_path):
    run = run_lesson(3, ["--seed", str(seed)], tmp_path)
    assert not run.traceback and run.exit_code is None, run.traceback or run.err
    assert run.broken == [] and "DOES NOT HOLD" not in run.out
    assert len(run.claims) >= 20 and len(run.insights) == 7
    assert all(not isinstance(item, str) for item in run.insights)  # every insight is a checked claim
    assert set(INSIGHT_OF) <= {claim.name for claim in run.claims}  # the table above names real claims


def test_the_claim_helpers_lessons_03_and_04_use():
    from common import claims
    small, large = claims.below("small", "x is small", 0.1, 1), claims.below("large", "y is small", 3, 1, "3.0")
    both = claims.all_of("both", "x and y are small", small, large)
    assert not both and str(both) == "DOES NOT HOLD: x and y are small. Measured: large: 3.0; if it held: large: below 1."
    assert claims.all_of("one", "x is small", small).holds
    title = claims.figure_title("t", "a title that is long enough to wrap", large, width=20)
    assert title.startswith("DOES NOT HOLD: a\n") and max(map(len, title.split("\n"))) <= 20
    assert claims.figure_title("t", "line one\nline two", small) == "line one\nline two"
    assert claims.apart([2, 3], [1, 1.5]) and not claims.apart([2, 3], [2.5]) and not claims.apart([float("nan")], [0])
    assert claims.versus([2, 3], [1], "theirs") == "above theirs in every seed"
    assert claims.versus([0.5], [1, 2], "theirs") == "below theirs in every seed"
    assert claims.versus([1, 3], [2], "theirs").startswith("within the seed spread (2 (1-3) against 2)")
    refused = claims.raises("r", "refused: {error}", lambda: int("x"), ValueError)
    assert refused and str(refused).startswith("refused: ValueError: invalid literal")
    accepted = claims.raises("r", "refused: {error}", lambda: 1, ValueError)
    assert str(accepted) == "DOES NOT HOLD: refused: ValueError. Measured: no error; if it held: a ValueError."
