"""Break lesson 05 on purpose, as a learner would: each edit must make the lesson name what broke.

Every edit is applied to a copy of a lesson (tests/breakit.py) and lesson 05 runs at --quick in this
process. The test asserts that nothing crashed, that the claims the edit breaks print DOES NOT HOLD
(named below), and that no key insight asserts a broken claim as if it held. The edits include
QUICKSTART's "Break it on purpose" items for lesson 05 and the bugs of challenges/bugs.py that
lesson 05 shows.
"""
import pytest

from breakit import Edit, run_lesson

QUICK = ["--quick", "--beam-size", "1"]

CATALOGUE = {
    # QUICKSTART item 5 and bugs.no_positions: the model cannot tell positions apart
    "no_positions": ([Edit(5, "return self.positions(self.embed(tokens) * self.scale)",
                           "return self.embed(tokens) * self.scale")], QUICK,
                     {"positions-added", "reached-target", "cross-attention-aligned"}),
    # QUICKSTART item 2: lesson 01's causal mask flipped, every decoder position sees the future
    "causal_mask_flipped": ([Edit(1, "torch.tril(", "torch.triu(")], QUICK,
                            {"decoder-causal", "cheap-equals-greedy", "cache-identical"}),
    # bugs.no_causal_mask: the decoder's self-attention gets no mask at all
    "no_causal_mask": ([Edit(5, "    return causal_mask(tgt_in.size(1), device=tgt_in.device)", "    return None")],
                       QUICK, {"decoder-causal", "cheap-equals-greedy"}),
    # bugs.unshifted_targets: the decoder reads the answer it must predict
    "unshifted_targets": ([Edit(5, "tgt_in = F.pad(out, (1, 0), value=BOS)", "tgt_in = tgt_out.clone()")], QUICK,
                          {"teacher-forcing-shift", "cheap-equals-greedy"}),
    # the cache forgets the earlier positions: only the newest one is attended to
    "cache_forgets_the_past": ([Edit(5, "self.past = key if self.past is None else torch.cat([self.past, key], dim=1)",
                                     "self.past = key")], QUICK, {"cache-identical"}),
    # beam search keeps the K worst candidates instead of the K best
    "beam_keeps_the_worst": ([Edit(5, "candidates.view(B, K * V).topk(K, dim=1)",
                                   "candidates.view(B, K * V).topk(K, dim=1, largest=False)")],
                             ["--quick", "--beam-size", "4"], {"beam-scores-higher"}),
    # bugs.lr_too_high: a learning rate a hundred times the default
    "lr_too_high": ([Edit(5, "    lr: float = 5e-3 ", "    lr: float = 0.5  ")], QUICK, {"reached-target"}),
    # the gradients of every step pile up: optimizer.zero_grad() deleted
    "no_zero_grad": ([Edit(5, "            optimizer.zero_grad()\n", "")], QUICK, {"reached-target"}),
    # cross-attention reads the decoder instead of the encoder's output
    "cross_attention_reads_the_decoder": ([Edit(5, "out, w = self.cross_attn(h, memory, memory,",
                                                "out, w = self.cross_attn(h, h, h,")], QUICK,
                                          {"decoder-causal", "cheap-equals-greedy", "cross-attention-aligned"}),
    # bugs.padding_not_masked: PAD keys are attended to (inputs of 2 to 6 digits)
    "padding_not_masked": ([Edit(5, "    return (tokens != PAD).unsqueeze(1) if bool((tokens == PAD).any()) else None",
                                 "    return None")], [*QUICK, "--min-len", "2"], {"reached-target"}),
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_an_edit_makes_the_lesson_name_what_broke(tmp_path, name):
    edits, argv, expected = CATALOGUE[name]
    run = run_lesson(5, argv, tmp_path, *edits)
    assert not run.traceback, run.traceback
    assert run.exit_code is None, run.err
    assert expected <= set(run.broken), f"expected {sorted(expected)} to break, broken: {run.broken}"
    assert "DOES NOT HOLD" in run.out
    held = {c.name for c in run.insights if hasattr(c, "holds") and c.holds}
    assert not held & set(run.broken), f"key insights assert broken claims: {held & set(run.broken)}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_unedited_lesson_holds_every_claim(tmp_path, seed):
    run = run_lesson(5, ["--seed", str(seed)], tmp_path)
    assert run.exit_code is None and not run.traceback, run.traceback or run.err
    assert run.broken == [] and "DOES NOT HOLD" not in run.out, run.broken
    assert {"decoder-causal", "positions-added", "reached-target", "cache-identical", "cheap-equals-greedy",
            "beam-scores-higher", "cross-attention-aligned", "reload-same-answers"} <= set(run.held)
