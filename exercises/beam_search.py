"""Exercise: beam search (lesson 05), from memory.

The model is lesson 05's Seq2SeqTransformer, or anything with its decoding interface:
    model.vocab_size                                         # V, the number of tokens
    memory, src_mask = model.encode(src)                     # src (B, T_src); src_mask may be None
    logits = model.decode(ys, memory, src_mask)              # ys (N, t) -> (N, t, V), every position
Each row of ys is one hypothesis: BOS, then the tokens chosen so far. memory and src_mask need one
row per row of ys: repeat each example's rows for its beam_size hypotheses with
repeat_interleave(beam_size, dim=0) (src_mask only when it is not None).

The next token's scores are the last position's: next_token_logits(model, ys, memory, src_mask),
given below, returns model.decode(ys, memory, src_mask)[:, -1]. (Lesson 05 can also decode with a
PrefixCache, cache=True, which skips recomputing the prefix; you may ignore the `cache` argument:
the checker calls your function with the default, cache=False.)
Score the tokens as lesson 05 does: log_softmax over the whole vocabulary, then rule out PAD and
BOS with restrict_logits, given below (they are never generated). Lesson 05 also switches the
model to eval mode while it decodes (model.eval(), then model.train(was_training) to put it back).

The checker runs your function on small stand-in models with this interface whose next-token
scores come from a fixed table, so it can compare with exhaustive search over every answer.

Replace the body of the function below, then check it from the repository root:

    python -m exercises check beam_search

The reference version is `beam_search` in 05_mini_transformer.py (next to greedy_decode); after the
checker has had its say, `python -m exercises compare beam_search` shows it beside yours.
"""
import torch
import torch.nn.functional as F  # noqa: F401

from common import load_lesson

_lesson05 = load_lesson(5)
PAD, BOS, EOS = _lesson05.PAD, _lesson05.BOS, _lesson05.EOS  # special tokens


def restrict_logits(logits):
    """(..., vocab_size) -> a copy with PAD and BOS at -inf: they are never generated (as lesson 05's)."""
    logits = logits.clone()
    logits[..., [PAD, BOS]] = float("-inf")
    return logits


def next_token_logits(model, ys, memory, src_mask):
    """(N, vocab_size) scores for the token after each prefix in ys (N, t): the decoder's last position."""
    return model.decode(ys, memory, src_mask)[:, -1]


@torch.no_grad()
def beam_search(model, src, beam_size, max_len, length_penalty=0.0, cache=False):
    """Batched beam search: keep the beam_size most likely partial answers at every step.

    src (B, T_src); beam_size K >= 1; max_len = most tokens to generate (answer + EOS). A
    hypothesis that produced EOS is finished: its score is frozen (its only continuation is PAD at
    log-probability 0) and it competes with the unfinished ones. Score = summed log-probabilities;
    the best is the highest score divided by the length (generated tokens, EOS included) raised to
    the power length_penalty (0: the plain score).
    Returns (tokens (B, L), L <= max_len: answer, EOS, PAD ...; scores (B,)). K = 1 equals greedy.
    """
    raise NotImplementedError("write beam_search, then run: python -m exercises check beam_search")
