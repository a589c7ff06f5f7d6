"""Lesson 01's break-it catalogue: edits a learner makes, each run on a copy of the lesson, and what it must say.

For every edit: no traceback; exactly the claims named below print DOES NOT HOLD (with their numbers);
the key insights built from them say so too, so no insight asserts a property the run contradicted.
The unedited lesson holds every claim at seeds 0, 1 and 2 at its default sizes.

Figures are not drawn here (tests/test_01_attention.py checks the PNGs): `titles` records what each
figure's titles say instead, so the catalogue can check that a title stating a property says when the
property broke, and runs in a third of the time.
"""
import pytest

import common
from breakit import Edit, run_lesson

FILL_0 = "        weights = weights.masked_fill(~mask, 0.0)\n"  # the line after the softmax

CATALOGUE = {  # name: (edits, the claims it breaks). Each Edit must match the lesson exactly once.
    # QUICKSTART "Break it on purpose" 1 and challenges/bugs.py no_scaling_*: no 1/sqrt(d_k)
    "no_scaling": ([Edit(1, "scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)",
                         "scores = query @ key.transpose(-2, -1)")],
                   {"function-matches-steps", "matches-pytorch"}),
    # the paper says d_k: a learner divides by it, not by its square root
    "scale_by_d_k": ([Edit(1, "/ math.sqrt(d_k)  # (..., T_q, d_k)", "/ d_k  # (..., T_q, d_k)")],
                     {"function-matches-steps", "matches-pytorch"}),
    # QUICKSTART 2: tril -> triu, every query sees the future (and itself)
    "causal_triu": ([Edit(1, "return torch.tril(", "return torch.triu(")],
                    {"causal-hides-future", "matches-pytorch", "insight-masks"}),
    # challenges/bugs.py flipped_mask: the polarity of nn.MultiheadAttention, True = blocked
    "flipped_mask": ([Edit(1, "return torch.tril(", "return ~torch.tril(")],
                     {"causal-hides-future", "matches-pytorch", "insight-masks"}),
    # QUICKSTART 3: no 0 for a row with nothing to attend to (the if block after the softmax deleted)
    "no_nan_guard": ([Edit(1, "    if mask is not None:\n        # A row where every key is blocked is "
                              "softmax(all -inf) = 0/0 = NaN; make its weights 0.\n" + FILL_0, "")],
                     {"empty-rows-give-0", "matches-pytorch", "insight-masks"}),
    # challenges/bugs.py softmax_wrong_axis: each key's column sums to 1, not each query's row
    "softmax_over_queries": ([Edit(1, "weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)",
                                   "weights = torch.softmax(scores, dim=-2)  # (..., T_q, T_k)")],
                             {"function-matches-steps", "rows-sum-to-1", "cross-rows-sum-to-1",
                              "masked-rows-sum-to-1", "matches-pytorch", "insight-masks"}),
    # the head forgets to pass its mask on: no mask is applied at all
    "mask_not_passed": ([Edit(1, "return scaled_dot_product_attention(Q, K, V, mask)",
                              "return scaled_dot_product_attention(Q, K, V)")],
                        {"causal-hides-future", "padding-hides-filler", "empty-rows-give-0", "insight-masks"}),
    # challenges/bugs.py padding_not_masked: a padding mask that lets every key through
    "padding_not_masked": ([Edit(1, '"padding": keep[:, None, :],', '"padding": torch.ones_like(keep)[:, None, :],')],
                           {"padding-hides-filler", "insight-masks"}),
    # a mask broadcast on the wrong axis: (B, T_q, 1) blocks the padding queries, not the padding keys
    "padding_on_query_axis": ([Edit(1, '"padding": keep[:, None, :],', '"padding": keep[:, :, None],')],
                              {"padding-hides-filler", "insight-masks"}),
    # the wrong mask polarity in masked_fill: the allowed keys get -inf
    "fill_the_allowed_keys": ([Edit(1, 'scores = scores.masked_fill(~mask, float("-inf"))',
                                    'scores = scores.masked_fill(mask, float("-inf"))')],
                              {"masked-rows-sum-to-1", "empty-rows-give-0", "matches-pytorch", "insight-masks"}),
    # masking after the softmax only: blocked keys zeroed, the rest not renormalised
    "mask_after_softmax": ([Edit(1, '        scores = scores.masked_fill(~mask, float("-inf"))\n', "")],
                           {"masked-rows-sum-to-1", "matches-pytorch", "insight-masks"}),
    # nn.MultiheadAttention handed our mask without the ~
    "key_padding_mask_not_inverted": ([Edit(1, '("~keep (True = padding)", ~keep)',
                                            '("~keep (True = padding)", keep)')], {"mha-polarity", "insight-masks"}),
    # section 3 with uniform numbers in [0, 1) (torch.rand) instead of N(0, 1) (torch.randn)
    "rand_not_randn": ([Edit(1, "q = torch.randn(n_queries, d_k, 1, device=device)",
                             "q = torch.rand(n_queries, d_k, 1, device=device)")],
                       {"variance-follows-d_k", "scaling-keeps-variance", "insight-scaling"}),
    # section 3 "scaled" by d_k: the variance falls as 1/d_k instead of staying at 1
    "sweep_divides_by_d_k": ([Edit(1, '("scaled", math.sqrt(d_k))', '("scaled", d_k)')],
                             {"scaling-keeps-variance", "insight-scaling"}),
}


@pytest.fixture
def titles(monkeypatch):
    """{figure name: its titles (every axes', then the suptitle)}, recorded instead of drawing the PNG."""
    seen = {}

    def record(fig, out_dir, name, show=False):
        seen[name] = [ax.get_title() for ax in fig.axes] + [fig.get_suptitle()]
        common.pyplot().close(fig)

    monkeypatch.setattr(common, "save_figure", record)
    return seen


def flat(text):
    """Text as printed, whatever the wrapping (which may also break a line after a hyphen)."""
    return " ".join(text.split()).replace("- ", "-")


def check_run(run, breaks):
    """No traceback; exactly `breaks` broken, each printed as DOES NOT HOLD with its numbers; every key
    insight built from a broken claim broken too, and printed so."""
    assert not run.traceback, run.traceback
    assert set(run.broken) == breaks, f"broken: {run.broken}, expected: {sorted(breaks)}"
    out = flat(run.out)
    for claim in run.claims:
        assert flat(str(claim)) in out, f"{claim.name} is not printed as it stands"
        if not claim.holds:
            assert str(claim).startswith("DOES NOT HOLD: ") and "Measured: " in str(claim)
    insights = flat(run.out.split("Key insights")[1])
    assert insights.count("DOES NOT HOLD") == len(run.broken_insights) == len(set(run.broken_insights) & breaks)
    assert bool(run.broken_insights) == bool(breaks), "a learner who reads only the key insights sees what broke"


# The figure titles that state a property these edits break: (figure, what its title must say).
TITLES = {"causal_triu": ("attention_masks.png", "DOES NOT HOLD: Causal: no weight above the diagonal"),
          "flipped_mask": ("attention_masks.png", "DOES NOT HOLD: Causal: no weight above the diagonal"),
          "padding_not_masked": ("attention_masks.png", "DOES NOT HOLD: Padding: no weight on the filler keys"),
          "softmax_over_queries": ("attention_weights.png", "DOES NOT HOLD: Each row of the weights sums to 1"),
          "no_nan_guard": ("attention_masks.png", "DOES NOT HOLD: Ours gives 0, not NaN")}


def check_titles(run, titles):
    """A title built from a claim that broke says DOES NOT HOLD; one built from a claim that held does not."""
    for claim in run.claims:
        for title in (flat(t) for figure in titles.values() for t in figure):
            if flat(claim.text) in title:
                assert ("DOES NOT HOLD" in title) is not claim.holds, (claim.name, title)


@pytest.mark.parametrize("name", CATALOGUE)
def test_the_edit_makes_the_lesson_name_what_broke(name, tmp_path, titles):
    edits, breaks = CATALOGUE[name]
    run = run_lesson(1, ["--quick"], tmp_path, *edits)
    check_run(run, breaks)
    check_titles(run, titles)
    if name in TITLES:
        figure, said = TITLES[name]
        assert any(said in flat(title) for title in titles[figure]), titles[figure]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_unedited_lesson_holds_every_claim(seed, tmp_path, titles):
    run = run_lesson(1, ["--seed", str(seed)], tmp_path)
    check_run(run, set())
    assert "DOES NOT HOLD" not in run.out and len(run.claims) >= 15
    check_titles(run, titles)
    assert not any("DOES NOT HOLD" in title for figure in titles.values() for title in figure)
