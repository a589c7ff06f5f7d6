"""The bugs of the mystery models (python -m challenges.diagnose): each one a change a learner could make.

Every bug is a challenges.variants.Variant applied through the lessons' own code: a lesson's name
replaced while the model is built, trained and evaluated (lesson 01's causal mask as lesson 05
uses it, lesson 02's attention function, lesson 05's teacher_forcing_pair, ...), a setting
changed, or an edit of the freshly built model. The buggy replacements below are small and say
in a comment which line differs from the lesson's; everything else is the lessons' code.

Each Bug carries its explanation: what was changed (the bug), why it does what it does (the
mechanism) and the symptom that gives it away in the mystery figures and numbers.
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):     # run as a file: common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from challenges.variants import Variant  # noqa: E402
from common import load_lesson  # noqa: E402

L1, L2, L5 = load_lesson(1), load_lesson(2), load_lesson(5)
LESSON_TEACHER_FORCING_PAIR = L5.teacher_forcing_pair     # lesson 05's own, kept before any patch


# %% The buggy pieces (each differs from the lesson's code where it says BUG)
def causal_mask_flipped(T: int, device=None):
    """BUG: lesson 01's causal mask with the opposite polarity, as if True meant "blocked" (the
    convention of nn.MultiheadAttention): each position may attend to the later ones only."""
    return ~L1.causal_mask(T, device=device)                              # (T, T) True above the diagonal


def causal_mask_forgotten(T: int, device=None):
    """BUG: no causal mask at all (self_mask = None): every decoder position sees the whole answer."""
    return None


def teacher_forcing_unshifted(out):
    """BUG: the decoder reads the answer itself (y1 ... yn PAD), not the answer shifted right by one
    behind BOS; the targets are lesson 05's (y1 ... yn EOS)."""
    _, tgt_out = LESSON_TEACHER_FORCING_PAIR(out)
    tgt_in = torch.nn.functional.pad(out, (0, 1), value=L5.PAD)          # BUG: no BOS in front, no shift
    return tgt_in, tgt_out


def causal_and_target_padding_mask(tgt_in):
    """Lesson 05's decoder_mask plus a padding mask on the decoder's input, the mask a learner adds
    "because the answers have padding too". On its own it changes nothing (PAD comes after the
    answer, where the causal mask already hides it); with BOS = PAD it hides BOS from every query."""
    causal = L5.causal_mask(tgt_in.size(1), device=tgt_in.device)        # (T_tgt, T_tgt)
    keys = L5.padding_mask(tgt_in)                                       # (B, 1, T_tgt) or None
    return causal if keys is None else causal & keys                     # (B, T_tgt, T_tgt)


def attention_softmax_over_queries(query, key, value, mask=None):
    """Lesson 01's scaled_dot_product_attention with the softmax over the wrong axis: each KEY's
    column sums to 1 over the queries, instead of each query's row over the keys."""
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))   # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-2)                              # BUG: dim=-2 (queries), not -1 (keys)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)                        # a column with no query: 0, not NaN
    return weights @ value, weights


def attention_without_scaling(query, key, value, mask=None):
    """Lesson 01's scaled_dot_product_attention without the division by sqrt(d_k)."""
    scores = query @ key.transpose(-2, -1)                               # BUG: no / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ value, weights


def merge_heads_without_transpose(self, x):
    """MultiHeadAttention.merge_heads replaced by lesson 02's own bug: a reshape with no transpose."""
    return L2.merge_heads_without_transpose(x)     # (B, n_heads, T, d_head) -> (B, T, d_model), rows scrambled


def padding_mask_forgotten(tokens):
    """BUG: no padding mask (None): every query attends to the PAD keys as if they were digits."""
    return None


def remove_positions(model, config):
    """BUG: the positional encoding is never added: embed_tokens passes the embeddings through
    (with the same dropout), so the model gets no word about where a token is."""
    model.positions = nn.Dropout(config.dropout)
    return model


def keep_dropout_on(model, config):
    """BUG: evaluation without model.eval(): this model's eval() does nothing, as if the line were
    missing from every evaluation (validation, decoding, the attention maps). Dropout stays on."""
    model.eval = lambda: model
    return model


# %% The catalogue
@dataclass(frozen=True)
class Bug:
    variant: Variant       # the name, what is changed (variant.change) and how it is applied
    mechanism: str         # why it does what it does
    symptom: str           # what gives it away in the mystery figures and numbers
    evidence: Callable     # evidence(symptoms, reference's symptoms, record) -> the numbers of this run, as text
    not_drawn: str = ""    # why it is never hidden in a model (no symptom at the game's settings); "" = drawn
    accept: tuple = ()     # other names accepted as the answer (bugs whose symptoms are the same)

    @property
    def name(self):
        return self.variant.name

    @property
    def change(self):
        return self.variant.change

    @property
    def drawn(self):
        return not self.not_drawn


def bug(name, change, mechanism, symptom, evidence, not_drawn="", accept=(), **how):
    return Bug(Variant(name, change=change, **how), mechanism, symptom, evidence, not_drawn, accept)


def gap(s):
    return f"test exact-match teacher-forced {s['tf_exact']:.0%}, free-running {s['free_exact']:.0%}"


def span(pair):
    """[low, high] as '0.25-3.10', or '1.00' when both are the same."""
    return f"{pair[0]:.2f}" if abs(pair[1] - pair[0]) < 5e-3 else f"{pair[0]:.2f}-{pair[1]:.2f}"


def reached(record):
    step = record.get("target_step")
    return f"reached the target at step {step}" if step is not None else f"ran all {record.get('steps_run')} steps"


CATALOGUE = {b.name: b for b in (
    bug("flipped_mask",
        "the decoder's causal mask with the opposite polarity, as if True meant 'blocked': ~causal_mask(T)",
        "Each answer position may attend to the later positions only, and the next one holds the very "
        "token it must predict: with teacher forcing the model learns to copy it. When it writes its own "
        "answer there is no later position: the newest one attends to nothing and has nothing to copy.",
        "teacher-forced exact-match near 100% within a few validations while free-running stays near 0; "
        "the decoder self-attention has all its weight above the diagonal (later positions), none on "
        "the diagonal, and rows that sum to 0 where nothing comes later.",
        lambda s, ref, r: f"{gap(s)}; {reached(r)}; decoder self-attention: {s['dec_later']:.0%} of the "
                          f"weight on later positions, {s['dec_own']:.0%} on a position's own, row sums down "
                          f"to {s['dec_rows'][0]:.2f}",
        patches=((5, "causal_mask", causal_mask_flipped),)),
    bug("no_causal_mask",
        "no causal mask in the decoder (self_mask = None)",
        "Every answer position sees the whole decoder input, including the next token, which is the one "
        "it must predict: teacher forcing makes that a copy. Free-running there is no next token yet.",
        "teacher-forced exact-match near 100%, free-running near 0; the decoder self-attention puts most "
        "of its weight right of the diagonal (mostly on the next position) and its rows still sum to 1.",
        lambda s, ref, r: f"{gap(s)}; {reached(r)}; decoder self-attention: {s['dec_later']:.0%} of the "
                          f"weight on later positions (reference {ref['dec_later']:.0%}), row sums "
                          f"{span(s['dec_rows'])}",
        patches=((5, "causal_mask", causal_mask_forgotten),)),
    bug("unshifted_targets",
        "teacher_forcing_pair without the shift: the decoder reads y1 ... yn, not BOS y1 ... yn",
        "Position i reads the very token it must predict at position i, and the causal mask lets a "
        "position see itself: the model learns to copy its own input, the easiest task of all. "
        "Decoding starts from BOS, a token it never read in training, and copies its own guesses.",
        "teacher-forced exact-match 100% after one or two validations (the fastest of all), free-running "
        "near 0, its answers one digit repeated to the length limit; the decoder self-attention sits on "
        "the diagonal; the decoder input (the 'reads' axis) starts with the first answer digit, not BOS.",
        lambda s, ref, r: f"{gap(s)}; {reached(r)}; {s['one_digit']:.0%} of the free-running answers are one "
                          f"digit repeated (reference {ref['one_digit']:.0%}); decoder self-attention: "
                          f"{s['dec_own']:.0%} of the weight on a position's own token (reference "
                          f"{ref['dec_own']:.0%})",
        patches=((5, "teacher_forcing_pair", teacher_forcing_unshifted),)),
    bug("bos_is_pad",
        "the start token equals the padding token (BOS = PAD = 0), with the padding mask a learner adds "
        "to the decoder's input (lesson 05's decoder has none: PAD only comes after EOS)",
        "The padding mask hides every PAD key, and BOS is now PAD: no answer position may read BOS. The "
        "first position has no key at all, so its self-attention row is all zeros (lesson 01 turns the "
        "0/0 of an empty row into 0, not NaN); the others lose the start of the answer. Reversal needs "
        "little from BOS, so the model still learns.",
        "the decoder self-attention's first column (BOS) is empty and its first row sums to 0; the "
        "decoder input shows '.' (PAD) where BOS should be; accuracy close to the reference's.",
        lambda s, ref, r: f"decoder self-attention: {s['dec_first']:.0%} of the weight on position 0 "
                          f"(reference {ref['dec_first']:.0%}), row sums down to {s['dec_rows'][0]:.2f}; "
                          f"free-running exact-match {s['free_exact']:.0%} (reference {ref['free_exact']:.0%})",
        patches=((5, "BOS", L5.PAD), (5, "decoder_mask", causal_and_target_padding_mask))),
    bug("no_positions",
        "no positional encoding: the embeddings go into the encoder and the decoder without positions",
        "Attention without positions sees the input as a bag of digits: a digit's encoder output is the "
        "same wherever it stands, so no answer position can find 'the input at position L-1-i'. The "
        "model can only learn which digits occur, not in which order.",
        "the loss stops at a floor far above the reference's (about half the digits right, almost no "
        "whole answer); the cross-attention gives equal digits equal weight: vertical stripes by digit, "
        "no anti-diagonal.",
        lambda s, ref, r: f"validation loss {s['val_loss']:.2f} after {r.get('steps_run')} steps (reference "
                          f"{ref['val_loss']:.3f}); teacher-forced token accuracy {s['tf_token_accuracy']:.0%}, "
                          f"exact-match {s['tf_exact']:.0%}; two keys holding the same digit get cross-attention "
                          f"weights {s['cross_same_digit']:.4f} apart on average (reference "
                          f"{ref['cross_same_digit']:.2f})",
        edit=remove_positions),
    bug("softmax_wrong_axis",
        "the attention softmax over the queries (dim=-2) instead of over the keys (dim=-1)",
        "Each key's column is normalised over the queries, so a query's weights no longer sum to 1. In "
        "the decoder a column's normalisation includes the later queries: what later positions hold "
        "leaks into earlier ones, so teacher forcing can peek at the answer too.",
        "attention row sums far from 1 (some near 0, some several) in all three kinds of map; "
        "teacher-forced exact-match high, free-running near 0.",
        lambda s, ref, r: f"row sums {span(s['enc_rows'])} (encoder), {span(s['dec_rows'])} (decoder), "
                          f"{span(s['cross_rows'])} (cross), where a softmax over the keys gives 1; {gap(s)}",
        patches=((2, "scaled_dot_product_attention", attention_softmax_over_queries),)),
    bug("merge_without_transpose",
        "heads merged with a reshape and no transpose (lesson 02's merge_heads_without_transpose)",
        "The attention weights are right; the merge after them is not. Output row t takes n_heads * "
        "d_head numbers that follow each other in memory: in the first half of the rows, head 0 at "
        "positions 2t and 2t+1. In the decoder, position t thus receives what later positions "
        "attended to, including the token it must predict: the future leaks in after the weights.",
        "teacher-forced exact-match high, free-running near 0, yet every attention map looks sound: "
        "causal, rows summing to 1. The leak is invisible in the weights.",
        lambda s, ref, r: f"{gap(s)}; {reached(r)}; the decoder self-attention puts {s['dec_later']:.0%} "
                          f"of its weight on later positions and its rows sum to {span(s['dec_rows'])}",
        patches=((2, "MultiHeadAttention.merge_heads", merge_heads_without_transpose),)),
    bug("no_scaling_wide",
        "no division by sqrt(d_k) in the attention scores, with wide heads (the game's: d_head = 64 / 2 = 32)",
        "The spread of the scores grows with sqrt(d_head): without the division it is sqrt(32), about "
        "5.7 times too wide, so each softmax row puts nearly all its weight on one key, and a saturated "
        "softmax passes almost no gradient to the keys it ignores. Learning crawls.",
        "every attention map nearly one-hot (one key per row takes almost all the weight, 'focus' near "
        "1); the loss falls slowly and exact-match stays low while the reference reaches the target.",
        lambda s, ref, r: f"focus (largest weight of a row, averaged) {s['enc_focus']:.2f} / "
                          f"{s['dec_focus']:.2f} / {s['cross_focus']:.2f} (encoder / decoder / cross; reference "
                          f"{ref['enc_focus']:.2f} / {ref['dec_focus']:.2f} / {ref['cross_focus']:.2f}); "
                          f"validation loss {s['val_loss']:.2f} after {r.get('steps_run')} steps (reference "
                          f"{ref['val_loss']:.3f})",
        patches=((2, "scaled_dot_product_attention", attention_without_scaling),)),
    bug("no_scaling_narrow",
        "no division by sqrt(d_k), with narrow heads: d_model 32, so d_head = 16",
        "The scores spread only sqrt(16) = 4 times too wide, and the trained weights make up for it.",
        "none that can be told apart from the reference's.",
        lambda s, ref, r: f"focus {s['enc_focus']:.2f} / {s['dec_focus']:.2f} / {s['cross_focus']:.2f}",
        not_drawn="no symptom at these settings: measured over 3 seeds (d_model 32 for both), it reached "
                  "99% at steps 410, 480 and not within 600 (0.986), the reference at 410, 440 and not "
                  "within 600 (0.986); its decoder focus was 0.61-0.65 against 0.55. Too faint to "
                  "diagnose, and it is why the game's heads are 32 wide.",
        config={"d_model": 32},
        patches=((2, "scaled_dot_product_attention", attention_without_scaling),)),
    bug("lr_too_high",
        "a learning rate of 0.1 with no warmup (the game's: 0.01 after 40 warmup steps)",
        "AdamW moves every weight by about the learning rate at each step, whatever the gradient's size: "
        "steps ten times too large overshoot, and the model falls back to what needs no input at all, "
        "guessing a digit.",
        "after a few spikes in the first steps, the training loss sits at ln 10 = 2.30 (the dashed line), "
        "the loss of a digit guessed at random, to the last step: nothing is learned; in the encoder and "
        "the decoder's self-attention every row puts all its weight on one key.",
        lambda s, ref, r: f"training loss {s['train_loss']:.2f} at the end (ln 10 = 2.30; reference "
                          f"{ref['train_loss']:.2f}); teacher-forced token accuracy {s['tf_token_accuracy']:.0%}; "
                          f"focus {s['enc_focus']:.2f} in the encoder, {s['dec_focus']:.2f} in the decoder "
                          f"(reference {ref['enc_focus']:.2f}, {ref['dec_focus']:.2f})",
        config={"lr": 0.1, "warmup": 0}),
    bug("eval_with_dropout",
        "evaluation without model.eval(): dropout stays on while validating, decoding and plotting",
        "Dropout zeroes a random 10% of the values (the game's dropout is 0.1) and scales the others by "
        "1/0.9: a model evaluated that way is a different random model at every call.",
        "the validation loss about as high as the training loss (the reference's is far lower: "
        "validation runs without dropout); the same inputs decoded twice give different answers; "
        "attention rows that sum to anything from 0 to 1.11 (1/0.9).",
        lambda s, ref, r: f"validation loss {s['val_loss']:.3f} against a training loss of {s['train_loss']:.3f} "
                          f"(reference {ref['val_loss']:.3f} against {ref['train_loss']:.3f}); {s['changed']:.0%} "
                          f"of the test answers changed when decoded again; decoder row sums {span(s['dec_rows'])}",
        edit=keep_dropout_on),
    bug("padding_not_masked",
        "no padding mask (padding_mask returns None) while the inputs have different lengths",
        "PAD keys are attended like digits: after a short input, every query spends weight on the "
        "padding. The model can learn to give PAD little weight, so it may still learn the task.",
        "weight on the PAD columns of the encoder and cross-attention maps, where the reference has "
        "exactly 0.",
        lambda s, ref, r: f"{s['enc_pad']:.0%} of the encoder's and {s['cross_pad']:.0%} of the "
                          f"cross-attention's weight on PAD keys (reference {ref['enc_pad']:.0%} and "
                          f"{ref['cross_pad']:.0%})",
        patches=((5, "padding_mask", padding_mask_forgotten),)),
)}

REFERENCE = Variant("reference", change="no bug: lesson 05 as it is")
