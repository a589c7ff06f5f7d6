"""Checks of the `beam_search` exercise: beam_search(model, src, beam_size, max_len, length_penalty=0.0).

The learner's search runs on stand-in models (stand_in_model.TableModel) whose next-token scores
come from a fixed table, so its answers can be compared with greedy decoding and with exhaustive
search over every possible answer: the output format, beam size 1 = greedy, the returned score,
the best answer when every candidate is kept, a model where greedy is wrong, and length_penalty.
"""
import math

import torch

from exercises.checks.helpers import (CheckFailed, Checklist, call_keeping_inputs, describe, expect, expect_kind,
                                      expect_pair)
from exercises.checks.stand_in_model import (TableModel, all_answers, answer_of, exhaustive_best, greedy,
                                             sequence_scores, special_tokens, words)

CHECKS = Checklist()


def _run_beam(fn, model, src, beam_size, max_len, **kwargs):
    result = call_keeping_inputs(fn, model, src, beam_size, max_len, names=("model", "src"), **kwargs)
    tokens, scores = expect_pair(result, "(tokens, scores)")
    B = src.size(0)
    expect(torch.is_tensor(tokens) and tokens.dim() == 2 and tokens.size(0) == B,
           f"tokens: expected a tensor (B={B}, L), got {describe(tokens)}")
    expect_kind("tokens", tokens, device=src.device)
    expect(tokens.size(1) <= max_len, f"tokens has {tokens.size(1)} columns, more than max_len={max_len}",
           "hint: max_len counts the generated tokens (answer + EOS), BOS not included")
    expect(not tokens.dtype.is_floating_point and tokens.dtype != torch.bool,
           f"tokens has dtype {tokens.dtype}, expected integer token ids (torch.long)",
           "hint: token ids index the vocabulary: keep them in a torch.long tensor, as src and topk's indices are")
    expect(torch.is_tensor(scores) and tuple(scores.shape) == (B,),
           f"scores: expected a tensor of shape ({B},), got {describe(scores)}",
           "hint: one summed log-probability per example: the best hypothesis's")
    expect_kind("scores", scores, device=src.device)
    expect(scores.dtype.is_floating_point, f"scores has dtype {scores.dtype}, expected float log-probabilities",
           "hint: a summed log-probability is a float; keep the scores in a float tensor")
    return tokens, scores


def _sources(model, B, T=3):
    return torch.randint(model.FIRST_DIGIT, model.vocab_size, (B, T))


@CHECKS.add("shapes: src (3, 4), beam_size=2, max_len=4 -> tokens (3, L <= 4), scores (3,)")
def beam_shapes(fn):
    model = TableModel()
    _run_beam(fn, model, _sources(model, 3, 4), 2, 4)


@CHECKS.add("format: digits, then EOS, then only PAD")
def beam_format(fn):
    model = TableModel(n_digits=3, spread=1.0)
    tokens, _ = _run_beam(fn, model, _sources(model, 6), 3, 4)
    for b, row in enumerate(tokens.tolist()):
        seen_end = False
        for t, token in enumerate(row):
            if seen_end:
                expect(token == model.PAD, f"row {b}: {words(model, row)} has {words(model, [token])} at "
                                           f"position {t}, after the answer ended",
                       "hint: a hypothesis that produced EOS is finished: it is not extended any more "
                       "(only PAD follows), and it keeps its score")
            elif token in (model.EOS, model.PAD):
                seen_end = True
            else:
                expect(token != model.BOS, f"row {b}: {words(model, row)} contains BOS",
                       "hint: the answer starts after BOS; leave BOS out of the result, and rule out "
                       "PAD and BOS as next tokens (restrict_logits)")


@CHECKS.add("beam_size=1 returns exactly what greedy decoding returns")
def beam_one_is_greedy(fn):
    model = TableModel(n_digits=3)
    src = _sources(model, 5)
    tokens, _ = _run_beam(fn, model, src, 1, 4)
    for b in range(src.size(0)):
        expected = greedy(model, src[b], 4)
        got = answer_of(model, tokens[b])
        expect(got == expected, f"example {b}: greedy decoding gives {words(model, expected)}, "
                                f"beam_size=1 gave {words(model, got)}",
               "hint: with one hypothesis, beam search keeps the single best extension at every step, as "
               "greedy does; rule out PAD and BOS (restrict_logits) and stop a hypothesis at EOS")


@CHECKS.add("scores: the sum of the log-probabilities of the returned tokens")
def beam_scores(fn):
    model = TableModel(n_digits=2)
    src = _sources(model, 4)
    tokens, scores = _run_beam(fn, model, src, 3, 3)
    for b in range(src.size(0)):
        answer = answer_of(model, tokens[b]) or [model.PAD]
        expected = float(sequence_scores(model, src[b], [answer])[0])
        got = float(scores[b])
        if abs(got - expected) > 1e-4 * max(1.0, abs(expected)):
            hint = ""
            whole_row = [t for t in tokens[b].tolist() if t != model.PAD]
            if len(whole_row) > len(answer) and abs(
                    got - float(sequence_scores(model, src[b], [whole_row])[0])) < 1e-4:
                hint = ("the score includes tokens after EOS: a finished hypothesis is not extended, "
                        "its score stays frozen")
            elif abs(got - float(sequence_scores(model, src[b], [answer], skip_eos=True)[0])) < 1e-4:
                hint = "EOS's log-probability is left out: it counts, like every generated token"
            elif abs(got - float(sequence_scores(model, src[b], [answer], renormalize=True)[0])) < 1e-4:
                hint = ("these are log-probabilities renormalised after ruling out PAD and BOS; the lesson "
                        "takes log_softmax over the whole vocabulary first, then rules them out")
            elif abs(got - expected / len(answer)) < 1e-4:
                hint = "this is the mean log-probability per token; return the sum"
            elif abs(got - math.exp(expected)) < 1e-4:
                hint = "this is a probability; return the summed log-probabilities"
            raise CheckFailed(f"example {b}: answer {words(model, answer)} has log-probability "
                              f"{expected:.4f}, the returned score is {got:.4f}", hint and "hint: " + hint)


@CHECKS.add("every candidate kept (beam_size=15, 2 digits, max_len=3): exhaustive search's best")
def beam_exhaustive(fn):
    model = TableModel(n_digits=2, spread=1.2)
    src = _sources(model, 6)
    n_candidates = len(all_answers(model, 3))
    tokens, _ = _run_beam(fn, model, src, n_candidates, 3)
    for b in range(src.size(0)):
        best, best_score = exhaustive_best(model, src[b], 3)
        got = answer_of(model, tokens[b])
        if got != best:
            got_score = float(sequence_scores(model, src[b], [got or [model.PAD]])[0])
            hint = ("this is greedy decoding's answer: keep the beam_size best hypotheses at every step, "
                    "not just one" if got == greedy(model, src[b], 3) else
                    "this is the best answer by log-probability renormalised after ruling out PAD and BOS; "
                    "take log_softmax over the whole vocabulary, then rule them out"
                    if got == exhaustive_best(model, src[b], 3, renormalize=True)[0] else
                    "this is the best answer by mean log-probability per token; with length_penalty=0 "
                    "rank by the plain sum" if got == exhaustive_best(model, src[b], 3, length_penalty=1.0)[0]
                    else "a finished hypothesis (ended by EOS) must stay in the beam with its score and "
                         "compete with the unfinished ones")
            raise CheckFailed(f"example {b}: the best of all {n_candidates} possible answers is "
                              f"{words(model, best)} (log-probability {best_score:.4f}); you returned "
                              f"{words(model, got)} ({got_score:.4f})", "hint: " + hint)


def greedy_trap():
    """A model where the greedy first step leads to a worse answer than the runner-up."""
    PAD, BOS, EOS, D0 = special_tokens()
    D1 = D0 + 1

    def row(**p):  # probabilities -> logits (PAD and BOS almost impossible)
        probs = [1e-6] * (D0 + 2)
        for token, value in p.items():
            probs[{"EOS": EOS, "d0": D0, "d1": D1}[token]] = value
        return [math.log(x) for x in probs]

    table = {(BOS,): row(EOS=0.1, d0=0.5, d1=0.4),         # greedy takes d0 ...
             (BOS, D0): row(EOS=0.34, d0=0.33, d1=0.33),   # ... after which nothing is likely: 0.5 * 0.34
             (BOS, D1): row(EOS=0.9, d0=0.05, d1=0.05)}    # d1 then EOS: 0.4 * 0.9 = 0.36, the best
    for a in (D0, D1):
        for b in (D0, D1):
            table[(BOS, a, b)] = row(EOS=0.34, d0=0.33, d1=0.33)
    return TableModel(n_digits=2, table=table)


@CHECKS.add("where greedy is wrong: beam_size=2 finds [1 EOS] (p 0.36), greedy [0 EOS] (p 0.17)")
def beam_beats_greedy(fn):
    model = greedy_trap()
    src = _sources(model, 2)
    tokens, _ = _run_beam(fn, model, src, 2, 3)
    best = [model.FIRST_DIGIT + 1, model.EOS]
    for b in range(src.size(0)):
        got = answer_of(model, tokens[b])
        expect(got == best, f"example {b}: expected {words(model, best)}, got {words(model, got)}",
               "hint: " + ("this is greedy's answer: after step 1 keep both d0 (0.5) and d1 (0.4), then extend "
                           "both and keep the 2 best of all their extensions" if got == greedy(model, src[b], 3)
                           else "score each hypothesis by the sum of its tokens' log-probabilities"))


@CHECKS.add("length_penalty=1.0, every candidate kept: the best by score / length")
def beam_length_penalty(fn):
    model = TableModel(n_digits=2, spread=1.2)
    src = _sources(model, 6)
    tokens, _ = _run_beam(fn, model, src, len(all_answers(model, 3)), 3, length_penalty=1.0)
    for b in range(src.size(0)):
        best, best_score = exhaustive_best(model, src[b], 3, length_penalty=1.0)
        got = answer_of(model, tokens[b])
        if got != best:
            hint = ("this is greedy decoding's answer: keep the beam_size best hypotheses at every step"
                    if got == greedy(model, src[b], 3) else
                    "this is the best by plain log-probability: length_penalty was ignored"
                    if got == exhaustive_best(model, src[b], 3)[0] else
                    "rank the final hypotheses by score / length ** length_penalty, where length counts the "
                    "generated tokens up to and including EOS")
            raise CheckFailed(f"example {b}: the best answer by log-probability / length is {words(model, best)} "
                              f"({best_score:.4f} / {len(best)}); you returned {words(model, got)}", "hint: " + hint)
