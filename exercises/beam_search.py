"""Exercise: beam search (lesson 05), from memory.

The model is lesson 05's Seq2SeqTransformer, or anything with its decoding interface:
    model.vocab_size                                         # V, the number of tokens
    memory, src_mask = model.encode(src)                     # src (B, T_src); src_mask may be None
    logits = model.decode(ys, memory, src_mask)              # ys (N, t) -> (N, t, V), every position
    cache = model.new_cache()                                # a list the model fills (see below)
    logits = model.decode_next(ys, memory, src_mask, cache)  # ys (N, t) -> (N, V), the next token only
Each row of ys is one hypothesis: BOS, then the tokens chosen so far. memory and src_mask need one
row per row of ys: repeat each example's rows for its beam_size hypotheses with
repeat_interleave(beam_size, dim=0) (src_mask only when it is not None).

The next token's scores, either way (the same scores up to rounding; the checker accepts both):
  - simplest: logits = model.decode(ys, memory, src_mask)[:, -1], the whole prefix again every step.
  - as lesson 05 does, faster for long answers: cache = model.new_cache() once, then at every step
    logits = model.decode_next(ys, memory, src_mask, cache); the model runs only the newest token
    and keeps the earlier ones' work in `cache`, one row per row of ys. So when you keep rows `rows`
    of ys (ys = ys[rows]), keep the same rows of the cache: cache = [c[rows] for c in cache].
Score the tokens as lesson 05 does: log_softmax over the whole vocabulary, then rule out PAD and
BOS with restrict_logits (they are never generated). Lesson 05 also switches the model to eval mode
while it decodes (model.eval(), then model.train(was_training) to put it back).

The checker runs your function on small stand-in models with this interface whose next-token
scores come from a fixed table, so it can compare with exhaustive search over every answer.
The stand-in checks at every decode_next call that the cache still matches ys.

Replace the body of the function below, then check it from the repository root:

    python -m exercises check beam_search

The reference version is `beam_search` in 05_mini_transformer.py (next to greedy_decode).
"""
import torch
import torch.nn.functional as F  # noqa: F401

from common import load_lesson

_lesson05 = load_lesson(5)
PAD, BOS, EOS = _lesson05.PAD, _lesson05.BOS, _lesson05.EOS  # special tokens
restrict_logits = _lesson05.restrict_logits  # (..., vocab_size) -> a copy with PAD and BOS at -inf


@torch.no_grad()
def beam_search(model, src, beam_size, max_len, length_penalty=0.0):
    """Batched beam search: keep the beam_size most likely partial answers at every step.

    src (B, T_src) tokens; beam_size K >= 1; max_len = most tokens to generate (answer + EOS).
    A hypothesis that produced EOS is finished: it stays in the beam with its score frozen (its
    only continuation is PAD at log-probability 0) and competes with the unfinished ones.
    Hypotheses still unfinished after max_len tokens are kept as they are (no EOS).
    Score = sum of log-probabilities of the generated tokens; the best is chosen by
    score / length**length_penalty (length_penalty 0: plain log-probability).
    Returns (tokens (B, L) with L <= max_len: answer, EOS, PAD ...; scores (B,) summed log-probs).
    With beam_size=1 it returns exactly what greedy_decode returns.
    """
    raise NotImplementedError("write beam_search, then run: python -m exercises check beam_search")
