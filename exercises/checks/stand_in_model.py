"""The stand-in model the beam-search checks decode with, and exhaustive search over its answers.

TableModel has lesson 05's decoding interface (encode, decode, vocab_size) and nothing to learn:
the scores of each next token come from a fixed table, so every possible answer can be scored
(sequence_scores, all_answers, exhaustive_best) and compared with what a beam search returns.
Unlike the real model it names a wrong use of memory at the call, where the real model would fail
with a shape error.
"""
import functools
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from exercises.checks.helpers import NEG_INF, Hint, describe, expect


TOKENS_SO_FAR = Hint(
    "tokens so far", "model.decode received something other than a (rows, t) tensor of token ids: look at what "
    "you pass it.", "Each row of ys is one hypothesis: BOS, then the tokens chosen so far, as integer ids.",
    "ys = torch.full((B * K, 1), BOS, dtype=torch.long)")
MEMORY_ROWS = Hint(
    "memory rows", "model.decode received more hypotheses than rows of memory: look at how memory is prepared "
    "for the beams.", "Every hypothesis is decoded against its own example's memory, so each example's rows are "
    "repeated for its beam_size hypotheses (src_mask likewise when it is not None).",
    "memory = memory.repeat_interleave(beam_size, dim=0)")


@functools.lru_cache(maxsize=1)
def special_tokens():
    """PAD, BOS, EOS and the first digit's token, from lesson 05 (the beam search's conventions)."""
    from common import load_lesson

    lesson = load_lesson(5)
    return lesson.PAD, lesson.BOS, lesson.EOS, lesson.FIRST_DIGIT


class TableModel(nn.Module):
    """A stand-in for lesson 05's model with its decoding interface and nothing to learn.

    The interface lesson 05's decoders use, as Seq2SeqTransformer has it:
    encode(src) -> (memory, src_mask); decode(tgt_in, memory, src_mask) -> logits (B, T_tgt, vocab_size);
    forward(src, tgt_in) = decode(tgt_in, *encode(src)); vocab_size; eval()/train().
    The logits for a prefix come from `table` when it lists that prefix, else from a random generator
    seeded by (source, prefix), so they are fixed, and exhaustive search can score every possible answer.
    Wrong use of memory is named at the call (CheckFailed) where the real model would fail with a
    shape error.
    """

    def __init__(self, n_digits=2, spread=1.5, table=None):
        super().__init__()
        self.PAD, self.BOS, self.EOS, self.FIRST_DIGIT = special_tokens()
        self.vocab_size = n_digits + self.FIRST_DIGIT
        self.n_digits = n_digits
        self.spread = spread
        self.table = table or {}
        self._table_cache = {}
        # One unused parameter, so `next(model.parameters()).device` works as with a real model.
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    def encode(self, src):
        return src.float().unsqueeze(-1), None  # the memory is just the source

    def _logits(self, source, prefix):
        key = (source, prefix)
        if key not in self._table_cache:
            if prefix in self.table:
                self._table_cache[key] = torch.tensor(self.table[prefix], dtype=torch.float32)
            else:
                rng = random.Random(f"{source}|{prefix}")
                self._table_cache[key] = torch.tensor([rng.gauss(0.0, self.spread) for _ in range(self.vocab_size)])
        return self._table_cache[key]

    def _sources(self, memory, tgt_in, method):
        """The source of each row of tgt_in, read from memory (which must have one row per row)."""
        expect(torch.is_tensor(tgt_in) and tgt_in.dim() == 2 and not tgt_in.dtype.is_floating_point,
               f"model.{method}: expected the tokens so far as an integer tensor (rows, t), got {describe(tgt_in)}",
               hint=TOKENS_SO_FAR)
        expect(memory.size(0) == tgt_in.size(0),
               f"model.{method}: memory has {memory.size(0)} rows but the tokens have {tgt_in.size(0)}: "
               "the model needs one row of memory per hypothesis", hint=MEMORY_ROWS)
        return [tuple(row) for row in memory[..., 0].long().tolist()]

    def decode(self, tgt_in, memory, src_mask=None):
        sources = self._sources(memory, tgt_in, "decode")
        B, T = tgt_in.shape
        rows = tgt_in.tolist()
        logits = torch.empty(B, T, self.vocab_size)
        for b in range(B):
            for t in range(T):
                logits[b, t] = self._logits(sources[b], tuple(rows[b][: t + 1]))
        return logits

    def forward(self, src, tgt_in):
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)


def _restricted_log_probs(model, logits, renormalize=False):
    """log_softmax over the vocabulary, then PAD and BOS ruled out (lesson 05's rule)."""
    if renormalize:  # the mistake: rule out first, then normalise over the allowed tokens
        logits = logits.clone()
        logits[..., [model.PAD, model.BOS]] = NEG_INF
        return F.log_softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits, dim=-1).clone()
    log_probs[..., [model.PAD, model.BOS]] = NEG_INF
    return log_probs


def sequence_scores(model, src_row, candidates, renormalize=False, skip_eos=False):
    """Sum of log-probabilities of each candidate answer (a list of token lists) for one source."""
    L = max(len(c) for c in candidates)
    tokens = torch.full((len(candidates), L), model.PAD, dtype=torch.long)
    for i, c in enumerate(candidates):
        tokens[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    tgt_in = torch.cat([torch.full((len(candidates), 1), model.BOS), tokens[:, :-1]], dim=1)
    src = src_row.unsqueeze(0).expand(len(candidates), -1)
    log_probs = _restricted_log_probs(model, model(src, tgt_in), renormalize)
    picked = log_probs.gather(2, tokens[..., None]).squeeze(2)
    counted = tokens != model.PAD
    if skip_eos:
        counted &= tokens != model.EOS
    return torch.where(counted, picked, torch.zeros_like(picked)).sum(1)


def all_answers(model, max_len):
    """Every possible output: digits then EOS (at most max_len tokens), or max_len digits (unfinished)."""
    digits = list(range(model.FIRST_DIGIT, model.vocab_size))
    answers, prefixes = [], [[]]
    for length in range(max_len):
        answers += [p + [model.EOS] for p in prefixes]
        prefixes = [p + [d] for p in prefixes for d in digits]
    return answers + prefixes  # the unfinished ones have exactly max_len digits


def exhaustive_best(model, src_row, max_len, length_penalty=0.0, length=len, **rule):
    """The best possible answer (and its summed log-probability) ranked by score / length(answer)**length_penalty."""
    answers = all_answers(model, max_len)
    scores = sequence_scores(model, src_row, answers, **rule)
    lengths = torch.tensor([length(a) for a in answers], dtype=torch.float32)
    ranking = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = int(ranking.argmax())
    return answers[best], float(scores[best])


def greedy(model, src_row, max_len):
    answer = []
    memory, src_mask = model.encode(src_row[None])
    while len(answer) < max_len:
        tgt_in = torch.tensor([[model.BOS] + answer])
        token = int(_restricted_log_probs(model, model.decode(tgt_in, memory, src_mask)[0, -1]).argmax())
        answer.append(token)
        if token == model.EOS:
            break
    return answer


def answer_of(model, row):
    """A returned row as a token list: cut at the first EOS (kept) or at the first PAD."""
    out = []
    for token in row.tolist():
        if token == model.PAD:
            break
        out.append(token)
        if token == model.EOS:
            break
    return out


def words(model, answer):
    """Tokens for reading: digits as digits, EOS as EOS."""
    names = {model.PAD: "PAD", model.BOS: "BOS", model.EOS: "EOS"}
    return "[" + " ".join(names.get(t, str(t - model.FIRST_DIGIT)) for t in answer) + "]"


