"""Exercise: beam search (lesson 05), from memory.

The model is lesson 05's Seq2SeqTransformer, or anything with its decoding interface:
    memory, src_mask = model.encode(src)              # src (B, T_src) tokens
    logits = model.decode(tgt_in, memory, src_mask)   # tgt_in (B, T_tgt) -> (B, T_tgt, vocab_size)
    model.vocab_size
Every answer starts after BOS. Score the tokens as lesson 05 does: log_softmax over the whole
vocabulary, then rule out PAD and BOS with restrict_logits (they are never generated).
The checker runs your function on small stand-in models with this interface whose next-token
scores come from a fixed table, so it can compare with exhaustive search over every answer.

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
