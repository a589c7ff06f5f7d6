"""Checks of the `beam_search` exercise: beam_search(model, src, beam_size, max_len, length_penalty=0.0).

The learner's search runs on stand-in models (stand_in_model.TableModel) whose next-token scores
come from a fixed table, so its answers can be compared with greedy decoding and with exhaustive
search over every possible answer: the output format, beam size 1 = greedy, the returned score,
the best answer when every candidate is kept, a model where greedy is wrong, and length_penalty
(the ranking, and the returned score, which stays the summed log-probability). A wrong answer is
compared with what each known mistake returns on every example, and the mistake that explains all
of them gives the hint.
"""
import math

import torch

from exercises.checks.helpers import (CheckFailed, Checklist, Hint, call_keeping_inputs, describe, expect, expect_kind,
                                      expect_pair, randint)
from exercises.checks.stand_in_model import (TableModel, all_answers, answer_of, exhaustive_best, greedy,
                                             sequence_scores, special_tokens, words)

CHECKS = Checklist()

MAX_LEN_HINT = Hint(
    "max_len", "More columns than max_len: look at the loop that appends tokens and at what you return.",
    "max_len counts the generated tokens (answer + EOS); BOS is not part of the result.",
    "for _ in range(max_len): ...; return seqs[..., 1:]  # without BOS")
TOKEN_IDS = Hint(
    "token ids", "The tokens are not integers: look at the dtype of the tensor that holds the hypotheses.",
    "Token ids index the vocabulary, so they are whole numbers (torch.long, like src and topk's indices).",
    "ys = torch.full((B * K, 1), BOS, dtype=torch.long, device=src.device)")
ONE_SCORE = Hint(
    "one score per example", "scores is not one number per example: look at what you return besides the tokens.",
    "The contract returns the best hypothesis's summed log-probability for each example: shape (B,).",
    "return tokens, scores[torch.arange(B), best]")
FLOAT_SCORE = Hint(
    "float score", "The scores are not floats: look at the tensor that accumulates them.",
    "A summed log-probability is a real number.", "scores = torch.zeros(B, K)  # float")


def _run_beam(fn, model, src, beam_size, max_len, **kwargs):
    result = call_keeping_inputs(fn, model, src, beam_size, max_len, names=("model", "src"), **kwargs)
    tokens, scores = expect_pair(result, "(tokens, scores)")
    B = src.size(0)
    expect(torch.is_tensor(tokens) and tokens.dim() == 2 and tokens.size(0) == B,
           f"tokens: expected a tensor (B={B}, L), got {describe(tokens)}")
    expect_kind("tokens", tokens, device=src.device)
    expect(tokens.size(1) <= max_len, f"tokens has {tokens.size(1)} columns, more than max_len={max_len}",
           hint=MAX_LEN_HINT)
    expect(not tokens.dtype.is_floating_point and tokens.dtype != torch.bool,
           f"tokens has dtype {tokens.dtype}, expected integer token ids (torch.long)", hint=TOKEN_IDS)
    expect(torch.is_tensor(scores) and tuple(scores.shape) == (B,),
           f"scores: expected a tensor of shape ({B},), got {describe(scores)}", hint=ONE_SCORE)
    expect_kind("scores", scores, device=src.device)
    expect(scores.dtype.is_floating_point, f"scores has dtype {scores.dtype}, expected float log-probabilities",
           hint=FLOAT_SCORE)
    return tokens, scores


def _sources(model, B, T=3):
    return randint(model.FIRST_DIGIT, model.vocab_size, (B, T))


def _first_mismatch(model, src, tokens, expected):
    """(example, its expected answer, the returned one) of the first example that differs, or None."""
    for b in range(src.size(0)):
        got = answer_of(model, tokens[b])
        if got != expected[b]:
            return b, expected[b], got
    return None


def _explained_by(model, src, tokens, mistakes):
    """The hint of the first known mistake whose answers equal the returned ones on every example."""
    got = [answer_of(model, tokens[b]) for b in range(src.size(0))]
    for hint, answer in mistakes:
        if all(got[b] == answer(b) for b in range(src.size(0))):
            return hint
    return None


AFTER_THE_END = Hint(
    "extended after EOS", "Tokens follow EOS in a returned row: look at what happens to a hypothesis once it "
    "produced EOS.", "A hypothesis that produced EOS is finished: its only continuation is PAD, at "
    "log-probability 0, so its score stays frozen while it competes with the unfinished ones.",
    "log_probs = torch.where(finished[..., None], after_eos, log_probs)  # after_eos: 0 for PAD, -inf elsewhere")
BOS_IN_RESULT = Hint(
    "BOS in the result", "A returned row contains BOS: look at which tokens may be chosen and at what you return.",
    "The answer starts after BOS; PAD and BOS are never generated (restrict_logits rules them out).",
    "log_probs = restrict_logits(F.log_softmax(logits, dim=-1)); return seqs[..., 1:]")


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
                                           f"position {t}, after the answer ended", hint=AFTER_THE_END)
            elif token in (model.EOS, model.PAD):
                seen_end = True
            else:
                expect(token != model.BOS, f"row {b}: {words(model, row)} contains BOS", hint=BOS_IN_RESULT)


GREEDY_ANSWER = Hint(
    "only one hypothesis", "Your answers are greedy decoding's: look at how many hypotheses survive each step.",
    "Beam search keeps the beam_size best partial answers at every step (best by summed log-probability over "
    "all extensions of all of them), not just the single best one.",
    "scores, flat = (scores[..., None] + log_probs).view(B, K * V).topk(K, dim=1)")
NOT_GREEDY_AT_ONE = Hint(
    "beam_size 1", "With beam_size=1 the answer is not greedy decoding's: look at how the next token is chosen "
    "and when a hypothesis stops.", "With one hypothesis, beam search keeps the single best extension at every "
    "step, as greedy does; PAD and BOS are ruled out, and EOS ends the hypothesis.",
    "next token = restrict_logits(log_probs).argmax(-1); stop a hypothesis at EOS")


EOS_FREE = Hint(
    "EOS free", "Every answer ends at once with EOS: look at how EOS is scored.",
    "EOS costs its log-probability like any other token; if it adds nothing to a hypothesis's score, ending "
    "at once always looks best.", "scores = scores[..., None] + log_probs  # EOS's log-probability included")


@CHECKS.add("beam_size=1 returns exactly what greedy decoding returns")
def beam_one_is_greedy(fn):
    model = TableModel(n_digits=3)
    src = _sources(model, 5)
    tokens, _ = _run_beam(fn, model, src, 1, 4)
    wrong = _first_mismatch(model, src, tokens, [greedy(model, src[b], 4) for b in range(src.size(0))])
    if wrong:
        b, expected, got = wrong
        hint = _explained_by(model, src, tokens, [(EOS_FREE, lambda i: [model.EOS])]) or NOT_GREEDY_AT_ONE
        raise CheckFailed(f"example {b}: greedy decoding gives {words(model, expected)}, beam_size=1 gave "
                          f"{words(model, got)}", hint=hint)


SCORE_AFTER_EOS = Hint(
    "score after EOS", "The returned score includes tokens after EOS: look at what a finished hypothesis adds.",
    "A finished hypothesis is not extended; its score stays frozen (PAD adds log-probability 0).",
    "log_probs = torch.where(finished[..., None], after_eos, log_probs)")
SCORE_WITHOUT_EOS = Hint(
    "EOS not scored", "The returned score leaves out EOS's log-probability: look at how EOS is scored.",
    "EOS is a generated token like any other: its log-probability counts in the sum.",
    "scores = scores[..., None] + log_probs  # EOS included")
SCORE_RENORMALISED = Hint(
    "renormalised", "The scores are higher than the model's log-probabilities: look at the order of "
    "log_softmax and ruling out PAD and BOS.", "Lesson 05 takes log_softmax over the whole vocabulary, then "
    "rules out PAD and BOS; ruling them out first renormalises over the remaining tokens.",
    "log_probs = restrict_logits(F.log_softmax(logits, dim=-1))")
SCORE_MEAN = Hint(
    "mean, not sum", "The returned score is a mean per token: look at what you return as the score.",
    "The returned score is the summed log-probability; length normalisation is only for ranking.",
    "return tokens, scores[torch.arange(B), best]")
SCORE_PROBABILITY = Hint(
    "probability, not log", "The returned score is a probability: look at what you return as the score.",
    "Beam search sums log-probabilities (a product of probabilities underflows); return the sum.",
    "return tokens, scores[torch.arange(B), best]  # summed log-probabilities")
SCORE_WRONG = Hint(
    "score", "The returned score is not the returned answer's summed log-probability: look at how scores are "
    "accumulated and which one you return.", "Each hypothesis carries the sum of its tokens' log-probabilities "
    "(EOS included); the one returned belongs to the returned answer.",
    "return tokens, scores[torch.arange(B), best]")


def _score_hint(model, src_row, tokens_row, answer, got):
    def near(value):
        return abs(got - float(value)) < 1e-4 * max(1.0, abs(got))

    whole_row = [t for t in tokens_row.tolist() if t != model.PAD]
    expected = float(sequence_scores(model, src_row, [answer])[0])
    if len(whole_row) > len(answer) and near(sequence_scores(model, src_row, [whole_row])[0]):
        return SCORE_AFTER_EOS
    if near(sequence_scores(model, src_row, [answer], skip_eos=True)[0]):
        return SCORE_WITHOUT_EOS
    if near(sequence_scores(model, src_row, [answer], renormalize=True)[0]):
        return SCORE_RENORMALISED
    if near(expected / len(answer)):
        return SCORE_MEAN
    if near(math.exp(expected)):
        return SCORE_PROBABILITY
    return SCORE_WRONG


def _expect_scores(model, src, tokens, scores, title=""):
    for b in range(src.size(0)):
        answer = answer_of(model, tokens[b]) or [model.PAD]
        expected = float(sequence_scores(model, src[b], [answer])[0])
        got = float(scores[b])
        if abs(got - expected) > 1e-4 * max(1.0, abs(expected)):
            raise CheckFailed(f"{title}example {b}: answer {words(model, answer)} has log-probability "
                              f"{expected:.4f}, the returned score is {got:.4f}",
                              hint=_score_hint(model, src[b], tokens[b], answer, got))


@CHECKS.add("scores: the log-probability of the returned answer")
def beam_scores(fn):
    model = TableModel(n_digits=2)
    src = _sources(model, 4)
    tokens, scores = _run_beam(fn, model, src, 3, 3)
    _expect_scores(model, src, tokens, scores)


RENORMALISED_RANKING = Hint(
    "renormalised ranking", "Your answers are the best by log-probabilities renormalised without PAD and BOS: "
    "look at the order of log_softmax and ruling them out.", SCORE_RENORMALISED.concept, SCORE_RENORMALISED.code)
MEAN_RANKING = Hint(
    "ranked by the mean", "Your answers are the best by mean log-probability per token although "
    "length_penalty=0: look at how the final hypotheses are ranked.",
    "length_penalty=0 ranks by the plain summed log-probability: score / length**0 = score.",
    "ranking = scores / lengths ** length_penalty if length_penalty else scores")
FINISHED_DROPPED = Hint(
    "finished hypotheses", "The best answer is missed although every candidate fits in the beam: look at what "
    "happens to hypotheses that produced EOS.", "A finished hypothesis stays in the beam with its frozen score "
    "and competes with the unfinished ones; dropping or extending it loses the best short answers.",
    "log_probs = torch.where(finished[..., None], after_eos, log_probs)  # PAD at 0, the rest -inf")


@CHECKS.add("every candidate kept (beam_size=15, 2 digits, max_len=3): exhaustive search's best")
def beam_exhaustive(fn):
    model = TableModel(n_digits=2, spread=1.2)
    src = _sources(model, 6)
    n_candidates = len(all_answers(model, 3))
    tokens, _ = _run_beam(fn, model, src, n_candidates, 3)
    best = [exhaustive_best(model, src[b], 3) for b in range(src.size(0))]
    wrong = _first_mismatch(model, src, tokens, [answer for answer, _ in best])
    if wrong:
        b, expected, got = wrong
        got_score = float(sequence_scores(model, src[b], [got or [model.PAD]])[0])
        hint = _explained_by(model, src, tokens, [
            (RENORMALISED_RANKING, lambda i: exhaustive_best(model, src[i], 3, renormalize=True)[0]),
            (MEAN_RANKING, lambda i: exhaustive_best(model, src[i], 3, length_penalty=1.0)[0]),
            (GREEDY_ANSWER, lambda i: greedy(model, src[i], 3))]) or FINISHED_DROPPED
        raise CheckFailed(f"example {b}: the best of all {n_candidates} possible answers is {words(model, expected)} "
                          f"(log-probability {best[b][1]:.4f}); you returned {words(model, got)} ({got_score:.4f})",
                          hint=hint)


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


TRAP_GREEDY = Hint(
    "only one hypothesis", "Your answer is greedy's: after step 1 only the single best token survived; look at "
    "how many hypotheses you keep.", "Here the first step's best token (p 0.5) leads nowhere likely, the "
    "runner-up (p 0.4) then ends with EOS at 0.9: only a beam that keeps both finds 0.36 > 0.17.",
    "scores, flat = (scores[..., None] + log_probs).view(B, K * V).topk(K, dim=1)")
TRAP_OTHER = Hint(
    "hypothesis scores", "The beam did not end on the most likely answer: look at how a hypothesis's score is "
    "accumulated.", "A hypothesis's score is the sum of its tokens' log-probabilities; the best final hypothesis "
    "has the largest sum.", "scores = scores[..., None] + log_probs")


@CHECKS.add("where greedy is wrong: beam_size=2 finds [1 EOS] (p 0.36), greedy [0 EOS] (p 0.17)")
def beam_beats_greedy(fn):
    model = greedy_trap()
    src = _sources(model, 2)
    tokens, _ = _run_beam(fn, model, src, 2, 3)
    best = [model.FIRST_DIGIT + 1, model.EOS]
    for b in range(src.size(0)):
        got = answer_of(model, tokens[b])
        expect(got == best, f"example {b}: expected {words(model, best)}, got {words(model, got)}",
               hint=TRAP_GREEDY if got == greedy(model, src[b], 3) else TRAP_OTHER)


PENALTY_IGNORED = Hint(
    "length_penalty ignored", "With length_penalty=1 your answers are the best by plain log-probability: look at "
    "how the final hypotheses are ranked.", "length_penalty normalises for length when choosing the best final "
    "hypothesis: longer answers are not punished just for having more (negative) terms in their sum.",
    "ranking = scores / lengths.clamp(min=1) ** length_penalty; best = ranking.argmax(dim=1)")
LENGTH_WITH_BOS = Hint(
    "length counts BOS", "Your ranking divides by a length one too long: look at how you count a hypothesis's "
    "length.", "The length counts the generated tokens, up to and including EOS; BOS is given, not generated.",
    "lengths = lengths + (~was_finished).float()  # one per generated token, BOS not counted")
LENGTH_WITHOUT_EOS = Hint(
    "length leaves out EOS", "Your ranking divides finished answers by a length one too short: look at whether "
    "EOS is counted.", "EOS is generated like any token, so it counts in the length (and its log-probability in "
    "the score).", "lengths = lengths.gather(1, beam) + (~was_finished).float()  # EOS counted")
PENALTY_OTHER = Hint(
    "length-normalised ranking", "With length_penalty=1 the chosen answer is not the best by score / length: look "
    "at how the final hypotheses are ranked.", "Rank by score / length ** length_penalty, where length counts the "
    "generated tokens up to and including EOS, and score stays the plain sum.",
    "ranking = scores / lengths.clamp(min=1) ** length_penalty")
PENALTY_SCORE = Hint(
    "returned score normalised", "With length_penalty=1 the returned score is divided by the length: look at what "
    "you return as the score.", "length_penalty decides which hypothesis wins; the score returned stays its summed "
    "log-probability, whatever the ranking.", "return tokens, scores[torch.arange(B), best]  # not ranking[...]")


def _without_eos(answer):
    return max(1, len(answer) - (1 if answer and answer[-1] == special_tokens()[2] else 0))


@CHECKS.add("length_penalty=1.0, every candidate kept: the best by the length-normalised score; the returned "
            "score is still the plain log-probability")
def beam_length_penalty(fn):
    model = TableModel(n_digits=2, spread=1.2)
    src = _sources(model, 6)
    tokens, scores = _run_beam(fn, model, src, len(all_answers(model, 3)), 3, length_penalty=1.0)
    best = [exhaustive_best(model, src[b], 3, length_penalty=1.0) for b in range(src.size(0))]
    wrong = _first_mismatch(model, src, tokens, [answer for answer, _ in best])
    if wrong:
        b, expected, got = wrong
        hint = _explained_by(model, src, tokens, [
            (PENALTY_IGNORED, lambda i: exhaustive_best(model, src[i], 3)[0]),
            (LENGTH_WITH_BOS, lambda i: exhaustive_best(model, src[i], 3, 1.0, length=lambda a: len(a) + 1)[0]),
            (LENGTH_WITHOUT_EOS, lambda i: exhaustive_best(model, src[i], 3, 1.0, length=_without_eos)[0]),
            (GREEDY_ANSWER, lambda i: greedy(model, src[i], 3))]) or PENALTY_OTHER
        raise CheckFailed(f"example {b}: the best answer by log-probability / length is {words(model, expected)} "
                          f"({best[b][1]:.4f} / {len(expected)}); you returned {words(model, got)}", hint=hint)
    try:
        _expect_scores(model, src, tokens, scores, "length_penalty=1: ")
    except CheckFailed as failure:
        failure.hint = PENALTY_SCORE if failure.hint is SCORE_MEAN else failure.hint
        raise
