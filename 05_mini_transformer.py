"""Lesson 05: a mini encoder-decoder transformer, trained end to end on a CPU in seconds.

What you will learn
  - how the decoder block works: masked self-attention, cross-attention to the encoder, feed-forward;
  - teacher forcing: why the decoder reads the answer shifted right by one (BOS first), and why that
    is not cheating;
  - a complete training loop written out plainly: AdamW, warmup then cosine decay, gradient clipping,
    validation, early stopping, the best model saved and resumed;
  - greedy decoding and beam search, and what each gets right on held-out sequences;
  - what the trained attention does: for reversal, output position i looks at input position T-1-i.

Run it
  python 05_mini_transformer.py                      # reverse 16 digits (about 10 s)
  python 05_mini_transformer.py --task sort          # also: copy, sum
  python 05_mini_transformer.py --min-len 4          # train and test on lengths 4..16
  python 05_mini_transformer.py --d-model 64 --heads 4 --layers 2   # a bigger model
  python 05_mini_transformer.py --compare            # measure pre-LN vs post-LN, embedding scaling
  python 05_mini_transformer.py --resume mini_transformer.pt --target 1.0 --steps 800
  python 05_mini_transformer.py --eval-lengths 8,12,16,20,24   # then test lengths it never saw
  python 05_mini_transformer.py --quick              # a tiny version in a few seconds

Shapes: B batch, T_src source length, T_tgt decoder length (output + 1), d_model model width,
n_heads heads, d_head = d_model // n_heads, d_ff feed-forward width, vocab_size tokens.
Masks are boolean with True = may attend (as in lessons 01-04).
"""
import copy
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import load_lesson

# Reused from earlier lessons (one source for each component; edit them there and this lesson
# uses your version): lesson 01's causal mask, lesson 02's multi-head attention, lesson 03's
# sinusoidal positional encoding, lesson 04's feed-forward and encoder stack.
causal_mask = load_lesson(1).causal_mask
MultiHeadAttention = load_lesson(2).MultiHeadAttention
PositionalEncoding = load_lesson(3).PositionalEncoding
FeedForward = load_lesson(4).FeedForward
TransformerEncoder = load_lesson(4).TransformerEncoder

# %% Knobs (learners: edit these, or use the flags of the same name)
TASKS = ("reverse", "copy", "sort", "sum")
PAD, BOS, EOS = 0, 1, 2       # special tokens; digit d is token d + FIRST_DIGIT
FIRST_DIGIT = 3
VAL_SEED = 1_000_003          # the validation set is drawn from its own seed ...
TEST_SEED = 2_000_003         # ... and so is the test set: the same sets for every training seed
LENGTH_SEED = 3_000_003       # --eval-lengths: the set of length L is drawn from seed LENGTH_SEED + L
LENGTH_TEST_SIZE = 500        # --eval-lengths: sequences per length
CHECKPOINT_NAME = "mini_transformer.pt"
# Per-task defaults where --steps / --eval-every are not given (training stops earlier at --target).
# Measured steps to 99% validation exact-match with the default model: reverse ~120 (length 16;
# ~450 with --min-len 4), copy ~120, sort ~750; sum reaches ~95% at ~1150 and ~97% at 1500.
TASK_DEFAULTS = {"reverse": {"steps": 600}, "copy": {"steps": 300},
                 "sort": {"steps": 1500, "eval_every": 50}, "sum": {"steps": 1500, "eval_every": 50}}
CHECKPOINT_FORMAT = "mini-transformer-v1"


# %% Building blocks: the data
@dataclass
class TrainConfig:
    """Every hyperparameter of a run. `train(TrainConfig(...))` reproduces the run exactly."""
    task: str = "reverse"        # reverse | copy | sort | sum (output: the digits of the sum)
    seq_len: int = 16            # longest input sequence (digits)
    min_len: int = 0             # shortest input sequence; 0 means seq_len (all the same length)
    n_digits: int = 10           # digits 0 .. n_digits-1 (the sum is written in base n_digits)
    d_model: int = 32            # width of every token vector
    n_heads: int = 2             # attention heads per attention layer
    n_layers: int = 1            # encoder blocks, and as many decoder blocks
    d_ff: int = 128              # hidden width of the feed-forward
    dropout: float = 0.0         # fresh data every step: nothing to overfit, so no dropout
    norm_first: bool = True      # pre-LN (True) or the paper's post-LN (False): see --compare
    embed_scale: bool = False    # multiply embeddings by sqrt(d_model) as the paper does: see --compare
    max_len: int = 64            # positions in the positional-encoding table
    steps: int = 600             # maximum optimizer steps (TASK_DEFAULTS: per task in the lesson)
    batch_size: int = 64         # sequences per step
    lr: float = 5e-3             # peak learning rate of AdamW
    weight_decay: float = 0.01   # AdamW's decoupled weight decay
    warmup: int = 40             # steps of linear warmup from 0 to lr
    schedule: str = "cosine"     # after warmup: cosine | linear | constant
    grad_clip: float = 1.0       # clip the gradient norm to this (0 = off)
    eval_every: int = 10         # validate every this many steps
    patience: int = 30           # stop after this many validations without a new best (0 = never)
    target: float = 0.99         # stop when validation exact-match reaches this
    val_size: int = 1000         # held-out validation sequences
    test_size: int = 1000        # held-out test sequences
    seed: int = 0                # model initialisation and training data

    def resolved_min_len(self) -> int:
        return self.min_len if self.min_len > 0 else self.seq_len

    def model_config(self) -> dict:
        """The plain dict that builds the model (saved in the checkpoint)."""
        keys = ("task", "n_digits", "d_model", "n_heads", "n_layers", "d_ff", "dropout", "norm_first",
                "embed_scale", "max_len")
        return {k: getattr(self, k) for k in keys}


SCHEDULES = ("cosine", "linear", "constant")
# Flags that fix what a checkpoint is: a --resume run may not contradict them.
ARCHITECTURE_FIELDS = ("task", "n_digits", "d_model", "n_heads", "n_layers", "d_ff", "norm_first",
                       "embed_scale", "max_len")


def vocab_size(n_digits: int) -> int:
    return n_digits + FIRST_DIGIT


def sum_digits_needed(seq_len: int, n_digits: int) -> int:
    """How many digits the largest possible sum ((n_digits-1) * seq_len) has in base n_digits."""
    largest, count = (n_digits - 1) * seq_len, 1
    while largest >= n_digits:
        largest //= n_digits
        count += 1
    return count


def output_len(task: str, src_len: int, n_digits: int) -> int:
    """The longest answer (without EOS) for inputs of length src_len."""
    return sum_digits_needed(src_len, n_digits) if task == "sum" else src_len


def positions_needed(task: str, src_len: int, n_digits: int) -> int:
    """Rows of the positional-encoding table that inputs of length src_len use: the encoder reads
    src_len positions, the decoder the longest answer plus EOS."""
    return max(src_len, output_len(task, src_len, n_digits) + 1)


def sample_inputs(n, seq_len, min_len, n_digits, generator):
    """n random digit sequences as tokens, (n, seq_len), lengths in [min_len, seq_len], PAD after."""
    digits = torch.randint(0, n_digits, (n, seq_len), generator=generator)
    lengths = torch.randint(min_len, seq_len + 1, (n,), generator=generator)
    valid = torch.arange(seq_len) < lengths[:, None]                  # (n, seq_len)
    return torch.where(valid, digits + FIRST_DIGIT, torch.full_like(digits, PAD))


def task_outputs(src, task, n_digits):
    """The answer for each input row, as tokens (B, T_out) with PAD after its end (no EOS yet)."""
    B, T = src.shape
    valid = src != PAD                                                # (B, T)
    lengths = valid.sum(1)                                            # (B,)
    if task == "copy":
        return src.clone()
    if task == "reverse":
        # out[b, i] = src[b, L_b - 1 - i] for i < L_b: reverse only the real digits, not the padding
        index = (lengths[:, None] - 1 - torch.arange(T)).clamp(min=0)  # (B, T)
        return torch.where(valid, src.gather(1, index), torch.full_like(src, PAD))
    if task == "sort":
        big = torch.full_like(src, vocab_size(n_digits))              # PAD sorts after every digit
        ordered = torch.where(valid, src, big).sort(dim=1).values
        return torch.where(valid, ordered, torch.full_like(src, PAD))
    if task == "sum":
        total = torch.where(valid, src - FIRST_DIGIT, torch.zeros_like(src)).sum(1)  # (B,)
        D = sum_digits_needed(T, n_digits)
        powers = n_digits ** torch.arange(D - 1, -1, -1)              # most significant digit first
        padded = (total[:, None] // powers) % n_digits                # (B, D) with leading zeros
        n_out = torch.ones_like(total)                                # digits of each sum (0 has 1)
        for k in range(1, D):
            n_out += (total >= n_digits ** k).long()
        # shift left by the number of leading zeros: out[b, i] = padded[b, D - n_out + i]
        index = (D - n_out[:, None] + torch.arange(D)).clamp(max=D - 1)
        keep = torch.arange(D) < n_out[:, None]
        return torch.where(keep, padded.gather(1, index) + FIRST_DIGIT, torch.full_like(padded, PAD))
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def teacher_forcing_pair(out):
    """From answers (B, T_out) build the decoder's input and its expected output, both (B, T_out + 1).

    tgt_in  = BOS y1 y2 ... yn PAD ...   what the decoder reads (the answer shifted right by one)
    tgt_out = y1  y2 ... yn EOS PAD ...  what it must predict at each position
    Position i reads y1..yi and predicts y(i+1): it never sees the token it must predict.
    """
    B = out.size(0)
    lengths = (out != PAD).sum(1)                                     # (B,)
    pad_col = torch.full((B, 1), PAD, dtype=out.dtype)
    tgt_out = torch.cat([out, pad_col], dim=1)                        # (B, T_out + 1)
    tgt_out[torch.arange(B), lengths] = EOS
    tgt_in = torch.cat([torch.full((B, 1), BOS, dtype=out.dtype), out], dim=1)  # (B, T_out + 1)
    return tgt_in, tgt_out


@dataclass
class Batch:
    src: torch.Tensor       # (B, T_src) input digits as tokens, PAD after the end
    tgt_in: torch.Tensor    # (B, T_tgt) BOS + answer        (decoder input)
    tgt_out: torch.Tensor   # (B, T_tgt) answer + EOS        (what to predict; PAD = no loss)

    def to(self, device):
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device))

    def __len__(self):
        return self.src.size(0)


def make_batch(src, task, n_digits) -> Batch:
    tgt_in, tgt_out = teacher_forcing_pair(task_outputs(src, task, n_digits))
    return Batch(src, tgt_in, tgt_out)


def sequence_keys(src, n_digits):
    """One int64 per row, equal for equal rows: exact (base vocab_size) when it fits, else a hash.

    Equal sequences always get equal keys, so filtering by key can never let a held-out sequence
    through; with the hash a few unrelated sequences may be filtered too (counted, harmless).
    """
    base, T = vocab_size(n_digits), src.size(1)
    if base ** T < 2 ** 62:                      # exact: the row read as a number in base vocab_size
        return (src * base ** torch.arange(T - 1, -1, -1)).sum(1)
    key = torch.zeros(src.size(0), dtype=torch.long)
    for t in range(T):                           # a rolling hash modulo a prime
        key = (key * base + src[:, t]) % 2_147_483_647
    return key


def n_possible_inputs(config: TrainConfig) -> int:
    return sum(config.n_digits ** L for L in range(config.resolved_min_len(), config.seq_len + 1))


def heldout_sets(config: TrainConfig):
    """The fixed validation and test sets (Batch each), drawn from their own seeds.

    When the task has few possible inputs, each set is capped at a tenth of them, so that most
    inputs remain for training.
    """
    cap = max(1, n_possible_inputs(config) // 10)
    sets = []
    for seed, size in ((VAL_SEED, config.val_size), (TEST_SEED, config.test_size)):
        g = torch.Generator().manual_seed(seed)
        src = sample_inputs(min(size, cap), config.seq_len, config.resolved_min_len(), config.n_digits, g)
        sets.append(make_batch(src, config.task, config.n_digits))
    return sets[0], sets[1]


def length_test_set(config: TrainConfig, length: int, size: int = LENGTH_TEST_SIZE) -> Batch:
    """`size` random inputs of exactly `length` digits (no padding), from seed LENGTH_SEED + length:
    the same set for every run and every training seed (for --eval-lengths)."""
    g = torch.Generator().manual_seed(LENGTH_SEED + length)
    src = sample_inputs(size, length, length, config.n_digits, g)
    return make_batch(src, config.task, config.n_digits)


class TrainingData:
    """Fresh random batches every step from a torch.Generator, never a held-out input.

    Every generated row whose key matches a validation or test input is dropped and replaced;
    `removed` counts them.
    """

    def __init__(self, config: TrainConfig, heldout_src, seed: int):
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.heldout_keys = torch.unique(torch.cat([sequence_keys(s, config.n_digits) for s in heldout_src]))
        self.removed = self.drawn = 0

    def next_batch(self) -> Batch:
        c = self.config
        kept = []
        need = c.batch_size
        while need > 0:
            src = sample_inputs(c.batch_size, c.seq_len, c.resolved_min_len(), c.n_digits, self.generator)
            fresh = ~torch.isin(sequence_keys(src, c.n_digits), self.heldout_keys)
            self.drawn += src.size(0)
            self.removed += int((~fresh).sum())
            kept.append(src[fresh][:need])
            need -= kept[-1].size(0)
        return make_batch(torch.cat(kept), c.task, c.n_digits)


# %% Building blocks: the model
class TransformerDecoderBlock(nn.Module):
    """Masked self-attention, cross-attention to the encoder, feed-forward; each with a residual.

    Compared with lesson 04's encoder block:
      NEW self-attention is causal: position i may attend to decoder positions 0..i only;
      NEW cross-attention: queries from the decoder, keys and values from the encoder output
          ("memory"), so every output position can look at every input position.
    pre-LN (norm_first=True):  x = x + sublayer(norm(x))
    post-LN (the paper):       x = norm(x + sublayer(x))
    forward(x (B, T_tgt, d_model), memory (B, T_src, d_model), self_mask, memory_mask)
      -> (B, T_tgt, d_model); with return_weights=True -> (x, self weights, cross weights).
    past (B, t, d_model): this block's inputs at the t earlier positions, for decoding one token
      at a time; x then holds only the newest position, which may attend to all of them.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)   # lesson 02
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)  # lesson 02, NEW use
        self.feed_forward = FeedForward(d_model, d_ff, dropout=dropout)          # lesson 04
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _self(self, x, context, mask, need):
        out, weights = self.self_attn(x, context, context, mask=mask, need_weights=need)  # (B, T_tgt, d_model)
        return self.dropout1(out), weights

    def _cross(self, x, memory, mask, need):
        # queries from the decoder (T_q = T_tgt), keys and values from the encoder (T_k = T_src)
        out, weights = self.cross_attn(x, memory, memory, mask=mask, need_weights=need)
        return self.dropout2(out), weights                                         # (B, T_tgt, d_model)

    def forward(self, x, memory, self_mask=None, memory_mask=None, return_weights: bool = False, past=None):
        context = x if past is None else torch.cat([past, x], dim=1)   # keys/values: every position so far
        if self.norm_first:
            h = self.norm1(x)
            attended, self_w = self._self(h, h if past is None else self.norm1(context), self_mask, return_weights)
            x = x + attended
            attended, cross_w = self._cross(self.norm2(x), memory, memory_mask, return_weights)
            x = x + attended
            x = x + self.dropout3(self.feed_forward(self.norm3(x)))
        else:
            attended, self_w = self._self(x, context, self_mask, return_weights)
            x = self.norm1(x + attended)
            attended, cross_w = self._cross(x, memory, memory_mask, return_weights)
            x = self.norm2(x + attended)
            x = self.norm3(x + self.dropout3(self.feed_forward(x)))
        return (x, self_w, cross_w) if return_weights else x


class TransformerDecoder(nn.Module):
    """n_layers decoder blocks (plus a final LayerNorm when pre-LN, as lesson 04's encoder)."""

    def __init__(self, n_layers, d_model, n_heads, d_ff, dropout=0.0, norm_first=True):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderBlock(d_model, n_heads, d_ff, dropout, norm_first) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x, memory, self_mask=None, memory_mask=None, return_weights=False, cache=None):
        """cache: a list with one entry per layer (None at first), for decoding one token at a time:
        each layer keeps its inputs at the earlier positions, so only the newest one is computed."""
        self_ws, cross_ws = [], []
        for i, layer in enumerate(self.layers):
            if cache is not None:
                past = cache[i]
                cache[i] = x if past is None else torch.cat([past, x], dim=1)
                x = layer(x, memory, self_mask, memory_mask, past=past)
            elif return_weights:
                x, self_w, cross_w = layer(x, memory, self_mask, memory_mask, return_weights=True)
                self_ws.append(self_w)
                cross_ws.append(cross_w)
            else:
                x = layer(x, memory, self_mask, memory_mask)
        x = self.norm(x)
        return (x, self_ws, cross_ws) if return_weights else x


class Seq2SeqTransformer(nn.Module):
    """Embedding + positions -> encoder (lesson 04) ; embedding + positions -> decoder -> logits.

    Seq2SeqTransformer(**config) with the keys of TrainConfig.model_config(); `.config` keeps that
    plain dict (it is saved in the checkpoint). One embedding table serves both sides (the same
    digits), a linear layer turns each decoder vector into vocab_size scores.
    forward(src (B, T_src), tgt_in (B, T_tgt)) -> logits (B, T_tgt, vocab_size).
    """

    def __init__(self, task="reverse", n_digits=10, d_model=32, n_heads=2, n_layers=1, d_ff=128,
                 dropout=0.0, norm_first=True, embed_scale=False, max_len=64):
        super().__init__()
        self.config = dict(task=task, n_digits=n_digits, d_model=d_model, n_heads=n_heads,
                           n_layers=n_layers, d_ff=d_ff, dropout=dropout, norm_first=norm_first,
                           embed_scale=embed_scale, max_len=max_len)
        self.vocab_size = vocab_size(n_digits)
        self.max_len = max_len
        self.embed = nn.Embedding(self.vocab_size, d_model)
        # The paper multiplies embeddings by sqrt(d_model); with PyTorch's N(0, 1) initialisation
        # that makes tokens several times louder than the positions (section 2 prints by how much,
        # --compare measures what it does to training).
        self.scale = math.sqrt(d_model) if embed_scale else 1.0
        self.positions = PositionalEncoding(d_model, max_len=max_len, dropout=dropout)  # lesson 03
        self.encoder = TransformerEncoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first)  # lesson 04
        self.decoder = TransformerDecoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first)
        self.out = nn.Linear(d_model, self.vocab_size)

    def _embed(self, tokens):
        return self.positions(self.embed(tokens) * self.scale)          # (B, T, d_model)

    def encode(self, src, return_weights=False):
        """src (B, T_src) -> memory (B, T_src, d_model), src_mask (B, 1, T_src) or None."""
        # Padding mask, True = may attend: no query may look at a PAD key. Built only when there
        # is padding, so equal-length batches take the fastest attention path.
        src_mask = (src != PAD).unsqueeze(1) if bool((src == PAD).any()) else None  # (B, 1, T_src)
        result = self.encoder(self._embed(src), src_mask, return_weights=return_weights)
        if return_weights:
            memory, weights = result
            return memory, src_mask, weights
        return result, src_mask

    def decode(self, tgt_in, memory, src_mask, return_weights=False):
        """tgt_in (B, T_tgt) -> logits (B, T_tgt, vocab_size), attending to memory."""
        T_tgt = tgt_in.size(1)
        # Causal mask only: PAD in tgt_in comes after EOS, so a real position never sees one;
        # the PAD positions themselves compute junk that the loss ignores.
        self_mask = causal_mask(T_tgt, device=tgt_in.device)           # (T_tgt, T_tgt), lesson 01
        result = self.decoder(self._embed(tgt_in), memory, self_mask, src_mask, return_weights)
        if return_weights:
            x, self_ws, cross_ws = result
            return self.out(x), self_ws, cross_ws
        return self.out(result)                                          # (B, T_tgt, vocab_size)

    def decode_next(self, ys, memory, src_mask, cache):
        """Scores for the next token only, (B, vocab_size), given all tokens so far ys (B, t).

        Decoding one token at a time: the causal mask means earlier positions never change, so
        `cache` (a list from earlier calls, [None] * n_layers at first) keeps each layer's inputs
        there and only the newest position runs through the decoder. Same result as
        decode(ys, ...)[:, -1], several times faster for long answers (proven in the tests).
        """
        x = self._embed(ys)[:, -1:]                                      # newest token + its position
        return self.out(self.decoder(x, memory, None, src_mask, cache=cache))[:, -1]

    def new_cache(self):
        """An empty cache for decode_next: one slot per decoder layer."""
        return [None] * len(self.decoder.layers)

    def forward(self, src, tgt_in):
        memory, src_mask = self.encode(src)                              # (B, T_src, d_model)
        return self.decode(tgt_in, memory, src_mask)                     # (B, T_tgt, vocab_size)

    def attention_weights(self, src, tgt_in):
        """All attention weights for one batch (use eval mode): dict of lists, one per layer."""
        memory, src_mask, enc_ws = self.encode(src, return_weights=True)
        logits, self_ws, cross_ws = self.decode(tgt_in, memory, src_mask, return_weights=True)
        return {"encoder_self": enc_ws, "decoder_self": self_ws, "cross": cross_ws, "logits": logits}


def restrict_logits(logits):
    """The model never needs to produce PAD or BOS: rule them out (used by every decoder below)."""
    logits = logits.clone()
    logits[..., PAD] = float("-inf")
    logits[..., BOS] = float("-inf")
    return logits


# %% Building blocks: decoding
@torch.no_grad()
def greedy_decode(model, src, max_len):
    """Batched greedy decoding: at each step append the single most likely next token.

    src (B, T_src) tokens; max_len = most tokens to generate (answer + EOS).
    Returns (B, L) tokens, L <= max_len: each row's answer, then EOS, then PAD.
    Stops early once every row has produced EOS. The model is used in eval mode.
    """
    was_training = model.training
    model.eval()
    memory, src_mask = model.encode(src)
    B = src.size(0)
    ys = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)    # every answer starts with BOS
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    cache = model.new_cache()
    for _ in range(max_len):
        logits = model.decode_next(ys, memory, src_mask, cache)          # (B, vocab_size) next token
        next_token = restrict_logits(logits).argmax(-1)                  # (B,)
        next_token = torch.where(done, torch.full_like(next_token, PAD), next_token)
        ys = torch.cat([ys, next_token[:, None]], dim=1)                 # (B, t + 2)
        done |= next_token == EOS
        if bool(done.all()):
            break
    model.train(was_training)
    return ys[:, 1:]


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
    was_training = model.training
    model.eval()
    B, K = src.size(0), beam_size
    memory, src_mask = model.encode(src)
    memory = memory.repeat_interleave(K, dim=0)                          # (B*K, T_src, d_model)
    if src_mask is not None:
        src_mask = src_mask.repeat_interleave(K, dim=0)                  # (B*K, 1, T_src)
    V = model.vocab_size
    seqs = torch.full((B * K, 1), BOS, dtype=torch.long, device=src.device)
    # All K beams start as the same "BOS"; only beam 0 is alive, or the first step picks K copies.
    scores = torch.full((B, K), float("-inf"), device=src.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(B, K, device=src.device)                       # tokens up to and incl. EOS
    after_eos = torch.full((V,), float("-inf"), device=src.device)
    after_eos[PAD] = 0.0                                                 # a finished beam only pads
    cache = model.new_cache()
    for _ in range(max_len):
        logits = model.decode_next(seqs, memory, src_mask, cache)         # (B*K, V)
        log_probs = F.log_softmax(logits, dim=-1)
        log_probs = restrict_logits(log_probs).view(B, K, V)              # (B, K, V)
        log_probs = torch.where(finished[..., None], after_eos, log_probs)
        candidates = (scores[..., None] + log_probs).view(B, K * V)     # (B, K*V)
        scores, flat = candidates.topk(K, dim=1)                          # (B, K) best K extensions
        beam, token = flat // V, flat % V                                 # which beam, which token
        rows = (torch.arange(B, device=src.device)[:, None] * K + beam).view(-1)  # (B*K,) rows kept
        seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)         # (B*K, t + 2)
        cache = [c[rows] for c in cache]                                  # the kept beams' history
        was_finished = finished.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~was_finished).float()
        finished = was_finished | (token == EOS)
        if bool(finished.all()):
            break
    ranking = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = ranking.argmax(dim=1)                                          # (B,)
    tokens = seqs.view(B, K, -1)[torch.arange(B), best, 1:]               # (B, L) without BOS
    model.train(was_training)
    return tokens, scores[torch.arange(B), best]


def sequence_log_prob(model, src, tokens):
    """Sum of log-probabilities the model gives to `tokens` (B, L) (answer + EOS + PAD; a row
    without EOS counts all L tokens). For checking decoders: greedy vs beam vs exhaustive."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        tgt_in = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
        log_probs = F.log_softmax(model(src, tgt_in), dim=-1)            # (B, L, V)
        picked = log_probs.gather(2, tokens[..., None]).squeeze(2)       # (B, L)
    model.train(was_training)
    return torch.where(tokens == PAD, torch.zeros_like(picked), picked).sum(1)


# %% Building blocks: evaluation
@torch.no_grad()
def evaluate_teacher_forced(model, data: Batch, chunk=1000):
    """Loss, token accuracy and exact-match from teacher-forced forward passes (no decoding loop).

    Exact-match this way equals greedy decoding's: greedy reproduces the whole answer iff the
    argmax is right at every position given the correct prefix (by induction over the prefix;
    proven against greedy_decode in the tests). Token accuracy here is teacher-forced.
    """
    was_training = model.training
    model.eval()
    total_loss, correct_tokens, n_tokens, exact = 0.0, 0, 0, 0
    for start in range(0, len(data), chunk):
        src, tgt_in, tgt_out = (t[start:start + chunk] for t in (data.src, data.tgt_in, data.tgt_out))
        logits = model(src, tgt_in)                                       # (B, T_tgt, V)
        total_loss += float(F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD,
                                            reduction="sum"))
        target = tgt_out != PAD
        right = (restrict_logits(logits).argmax(-1) == tgt_out) & target  # (B, T_tgt)
        correct_tokens += int(right.sum())
        n_tokens += int(target.sum())
        exact += int((right | ~target).all(dim=1).sum())
    model.train(was_training)
    return {"loss": total_loss / n_tokens, "token_accuracy": correct_tokens / n_tokens,
            "exact_match": exact / len(data)}


def decode(model, src, max_len, beam_size=1):
    """Greedy (beam_size 1) or beam search, in chunks. Returns (B, L) tokens."""
    pieces = []
    for start in range(0, src.size(0), 1000):
        part = src[start:start + 1000]
        if beam_size == 1:
            pieces.append(greedy_decode(model, part, max_len))
        else:
            pieces.append(beam_search(model, part, beam_size, max_len)[0])
    L = max(p.size(1) for p in pieces)
    return torch.cat([F.pad(p, (0, L - p.size(1)), value=PAD) for p in pieces])


def compare_decoded(predicted, expected):
    """Token accuracy, exact-match and accuracy by position of decoded answers against tgt_out."""
    L = max(predicted.size(1), expected.size(1))
    predicted = F.pad(predicted, (0, L - predicted.size(1)), value=PAD)
    expected = F.pad(expected, (0, L - expected.size(1)), value=PAD)
    target = expected != PAD                                              # answer + EOS positions
    right = (predicted == expected) & target
    exact = (predicted == expected).all(dim=1)        # also no extra tokens after the answer
    present = target.sum(0)                                               # answers long enough, per position
    by_position = [int(r) / int(n) for r, n in zip(right.sum(0), present) if n > 0]
    return {"token_accuracy": int(right.sum()) / int(target.sum()),
            "exact_match": int(exact.sum()) / len(exact), "by_position": by_position,
            "position_counts": [int(n) for n in present if n > 0]}


def tokens_to_digits(row):
    """One row of tokens -> the digit list up to EOS (PAD/BOS dropped)."""
    digits = []
    for t in row.tolist():
        if t == EOS:
            break
        if t >= FIRST_DIGIT:
            digits.append(t - FIRST_DIGIT)
    return digits


# %% Building blocks: training
class TrainingDiverged(common.UserError):
    """The loss became NaN or infinite: almost always a learning rate that is too high."""


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then the schedule."""
    if config.warmup > 0 and step <= config.warmup:
        return config.lr * step / config.warmup                 # lr * step / warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)   # 0 -> 1
    if config.schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine: lr -> 0 at the last step


class AdamW:
    """AdamW written out, with gradient clipping; the same updates as torch.optim.AdamW (tested).

    All parameters are handled as one flat vector g (every gradient, concatenated):
      clip:         g = g * min(1, grad_clip / ||g||)          (one norm over all parameters)
      moments:      m = beta1 m + (1 - beta1) g                (running mean of gradients)
                    v = beta2 v + (1 - beta2) g^2              (running mean of squared gradients)
      bias fix:     m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)   (m, v start at 0)
      update:       w = w - lr * weight_decay * w - lr * m_hat / (sqrt(v_hat) + eps)
    The weight decay acts on the weights directly, not through g: the "W" in AdamW.
    (Written here rather than imported: the lesson shows every step, and constructing
    torch.optim's first optimizer costs ~1.5 s of imports in torch 2.13 on this machine.)
    """

    def __init__(self, params, lr, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.sizes = [p.numel() for p in self.params]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = torch.zeros(sum(self.sizes), device=self.params[0].device)
        self.v = torch.zeros_like(self.m)
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, grad_clip=0.0):
        """One update with the current self.lr. Returns the gradient norm before clipping."""
        g = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(n, device=self.m.device)
                       for p, n in zip(self.params, self.sizes)])
        norm = torch.linalg.vector_norm(g)
        if grad_clip > 0:
            g = g * (grad_clip / (norm + 1e-6)).clamp(max=1.0)
        beta1, beta2 = self.betas
        self.t += 1
        self.m.mul_(beta1).add_(g, alpha=1 - beta1)
        self.v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        m_hat = self.m / (1 - beta1 ** self.t)
        v_hat = self.v / (1 - beta2 ** self.t)
        update = m_hat / (v_hat.sqrt() + self.eps)
        for p, u in zip(self.params, update.split(self.sizes)):
            p.mul_(1 - self.lr * self.weight_decay)
            p.add_(u.view_as(p), alpha=-self.lr)
        return norm

    def state_dict(self):
        return {"t": self.t, "m": self.m.detach().cpu().clone(), "v": self.v.detach().cpu().clone()}

    def load_state_dict(self, state):
        if state["m"].shape != self.m.shape:
            raise ValueError(f"optimizer state for {state['m'].numel()} weights, model has {self.m.numel()}")
        self.t = int(state["t"])
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])


@dataclass
class TrainResult:
    model: nn.Module                 # the best model (by validation exact-match, then loss), eval mode
    history: dict                    # lists: step, loss, lr (every step); val_step, val_* (every eval)
    steps_run: int                   # optimizer steps done (including those before --resume)
    train_seconds: float             # time in training steps (data, forward, backward, update)
    wall_seconds: float              # the same plus validation
    target_step: int | None          # first step where validation exact-match >= target
    target_seconds: float | None     # train_seconds at that step
    best_step: int                   # step of the best model
    best_val: dict                   # its validation loss, token_accuracy, exact_match
    stopped_because: str             # "target reached", "patience", "max steps", "interrupted (Ctrl-C)"
    heldout_removed: int             # generated training rows dropped for matching a held-out input
    sequences_drawn: int             # training rows generated in this run (before dropping)
    best_train_seconds: float = 0.0  # train_seconds at the best step (saved for --resume)
    best_wall_seconds: float = 0.0   # wall_seconds at the best step (saved for --resume)
    optimizer_state: dict = field(repr=False, default_factory=dict)  # at the best step (for --resume)


def _new_history():
    return {"step": [], "loss": [], "accuracy": [], "lr": [],
            "val_step": [], "val_loss": [], "val_token_accuracy": [], "val_exact_match": []}


def train(config: TrainConfig, device="cpu", quiet=False, callback=None, resume=None, data=None,
          print_every=50) -> TrainResult:
    """Train a Seq2SeqTransformer on config.task and return a TrainResult (no files written).

    quiet=True: no progress bar, nothing printed. callback(step, val_metrics) is called after each
    validation (raise KeyboardInterrupt in it to test Ctrl-C). resume: a checkpoint dict (from
    torch.load) to continue from. data: (val, test) Batches, else heldout_sets(config).
    Seeds torch with config.seed. Ctrl-C stops training cleanly and returns the best model so far.
    A NaN or infinite loss raises TrainingDiverged.
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)
    val, test = data if data is not None else heldout_sets(config)
    model = Seq2SeqTransformer(**config.model_config()).to(device)
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, start = _new_history(), 0
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        history = {k: list(v) for k, v in resume["history"].items()}
        start = int(resume["step"])
    # a resumed run draws new batches; % 2**64 keeps any --seed in the generator's range (same streams)
    trainer_seed = (config.seed * 1_000_003 + start) % 2**64
    stream = TrainingData(config, [val.src, test.src], trainer_seed)
    val_dev = val.to(device)

    from tqdm import tqdm
    # disable=None: the bar shows in a terminal, not in a log file or a captured test
    bar = tqdm(total=config.steps, initial=start, disable=True if quiet else None, desc="training", unit="step",
               dynamic_ncols=True, leave=False)
    say = (lambda text: None) if quiet else bar.write

    best = {"key": None, "state": None, "opt": None, "step": start, "val": None, "seconds": 0.0, "wall": 0.0}
    target_step = target_seconds = None
    if resume is not None and resume.get("target_step") is not None:
        target_step, target_seconds = resume["target_step"], resume.get("target_seconds")
    train_seconds = float(resume.get("train_seconds", 0.0)) if resume is not None else 0.0
    wall_before = float(resume.get("wall_seconds", 0.0)) if resume is not None else 0.0
    since_best, stopped_because = 0, "max steps"
    wall_start = time.perf_counter()

    def validate(step):
        """Evaluate, remember the best model; returns True when training should stop."""
        nonlocal target_step, target_seconds, since_best, stopped_because
        metrics = evaluate_teacher_forced(model, val_dev)
        if not history["val_step"] or history["val_step"][-1] != step:   # (a resumed run has it)
            history["val_step"].append(step)
            for k in ("loss", "token_accuracy", "exact_match"):
                history["val_" + k].append(metrics[k])
        key = (metrics["exact_match"], -metrics["loss"])           # best: exact-match, then loss
        if best["key"] is None or key > best["key"]:
            best.update(key=key, step=step, val=metrics, state=copy.deepcopy(model.state_dict()),
                        opt=optimizer.state_dict(), seconds=train_seconds,
                        wall=wall_before + time.perf_counter() - wall_start)
            since_best = 0
        else:
            since_best += 1
        if callback is not None:
            callback(step, metrics)
        if metrics["exact_match"] >= config.target:
            if target_step is None:
                target_step, target_seconds = step, train_seconds
            stopped_because = "target reached"
            return True
        if config.patience and since_best >= config.patience:
            stopped_because = "patience"
            return True
        return False

    step = start
    try:
        stop = validate(step)                               # the starting point (step 0) is plotted too
        while not stop and step < config.steps:
            step += 1
            t0 = time.perf_counter()
            lr = learning_rate(step, config)
            optimizer.lr = lr
            batch = stream.next_batch().to(device)
            model.train()
            logits = model(batch.src, batch.tgt_in)                           # (B, T_tgt, vocab_size)
            # cross-entropy over every answer position; PAD positions (after EOS) are ignored
            loss = F.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"the training loss became {loss_value} at step {step} (learning rate {lr:.3g}): the "
                    f"updates are too large; lower --lr (it is {config.lr:g}; the default is "
                    f"{TrainConfig.lr:g}) and keep --grad-clip on")
            optimizer.zero_grad()
            loss.backward()
            # clip: rescale all gradients together when their norm exceeds grad_clip; then update
            optimizer.step(grad_clip=config.grad_clip)
            train_seconds += time.perf_counter() - t0
            with torch.no_grad():
                target = batch.tgt_out != PAD
                accuracy = float(((logits.argmax(-1) == batch.tgt_out) & target).sum() / target.sum())
            history["step"].append(step)
            history["loss"].append(loss_value)
            history["accuracy"].append(accuracy)
            history["lr"].append(lr)
            bar.update(1)
            if step % 5 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{accuracy:.3f}", refresh=False)
            if step % config.eval_every == 0 or step == config.steps:
                stop = validate(step)
                if print_every and (step % print_every == 0 or stop):
                    v = history
                    say(f"  step {step:>5} | loss {loss_value:.4f} | val loss {v['val_loss'][-1]:.4f} | "
                        f"val token acc {v['val_token_accuracy'][-1]:.4f} | "
                        f"val exact {v['val_exact_match'][-1]:.4f} | lr {lr:.2e}")
    except KeyboardInterrupt:
        stopped_because = "interrupted (Ctrl-C)"
    finally:
        bar.close()
    wall_seconds = wall_before + time.perf_counter() - wall_start
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model=model, history=history, steps_run=step, train_seconds=train_seconds,
                       wall_seconds=wall_seconds, target_step=target_step, target_seconds=target_seconds,
                       best_step=best["step"], best_val=best["val"] or {}, stopped_because=stopped_because,
                       heldout_removed=stream.removed, sequences_drawn=stream.drawn,
                       optimizer_state=best["opt"] or {},
                       best_train_seconds=best["seconds"], best_wall_seconds=best["wall"])


# %% Building blocks: checkpoints and prediction
class CheckpointError(common.UserError):
    """A checkpoint that is missing, unreadable, or does not fit what was asked for."""


def save_checkpoint(path, result: TrainResult, config: TrainConfig):
    """Save the best model as {"state_dict", "config", ...}: plain types, so torch.load(...,
    weights_only=True) reads it. Written to a temporary file first, then renamed: an interrupted
    save never leaves a half-written checkpoint behind."""
    keep = [i for i, s in enumerate(result.history["step"]) if s <= result.best_step]
    keep_val = [i for i, s in enumerate(result.history["val_step"]) if s <= result.best_step]
    history = {k: [v[i] for i in (keep_val if k.startswith("val_") else keep)]
               for k, v in result.history.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "config": asdict(config),
        "step": result.best_step,
        "val": result.best_val,
        "optimizer": result.optimizer_state,
        "history": history,
        "target_step": result.target_step if (result.target_step or 0) <= result.best_step else None,
        "target_seconds": result.target_seconds if (result.target_step or 0) <= result.best_step else None,
        "train_seconds": result.best_train_seconds,
        "wall_seconds": result.best_wall_seconds,
    }
    path = os.fspath(path)
    tmp = path + ".partial.pt"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> dict:
    """torch.load with weights_only=True, checked; CheckpointError with a clear reason if not usable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a folder, not a file; pass the file, e.g. "
                              f"{os.path.join(path, CHECKPOINT_NAME)!r}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found; train one first (this lesson writes "
                              f"{CHECKPOINT_NAME} into --out-dir) or pass the right path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or not plain data
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        reason = f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not a torch checkpoint ({reason}); "
                              "retrain to write a new one") from None
    needed = ("format", "state_dict", "config", "step")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or \
            any(k not in checkpoint for k in needed):
        raise CheckpointError(f"{path!r} is not a checkpoint of this lesson (expected a dict with "
                              f"format {CHECKPOINT_FORMAT!r} and keys {', '.join(needed)})")
    try:
        TrainConfig(**checkpoint["config"])
    except TypeError as exc:
        raise CheckpointError(f"{path!r} has a config this lesson does not understand ({exc})") from None
    step = checkpoint["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path!r} has step {step!r}, not a whole number of optimizer steps; "
                              "retrain to write a new one")
    return checkpoint


def check_resumable(checkpoint: dict, path, model) -> None:
    """What --resume needs beyond the weights: the optimizer state for this model and the history."""
    optimizer, history = checkpoint.get("optimizer"), checkpoint.get("history")
    n_weights = count_parameters(model)
    if not isinstance(optimizer, dict) or any(
            not isinstance(optimizer.get(k), torch.Tensor) or optimizer[k].numel() != n_weights for k in "mv") \
            or not isinstance(optimizer.get("t"), int):
        raise CheckpointError(f"{os.fspath(path)!r} has no usable optimizer state for its {n_weights} weights, so "
                              "training cannot resume from it (load_checkpoint still reads the model); "
                              "train a new model without --resume")
    if not isinstance(history, dict) or any(not isinstance(history.get(k), list) for k in _new_history()):
        raise CheckpointError(f"{os.fspath(path)!r} has no usable training history, so training cannot resume "
                              "from it (load_checkpoint still reads the model); train a new model without "
                              "--resume")


def model_from_checkpoint(checkpoint: dict, path="checkpoint"):
    """Build the model the checkpoint describes and load its weights (on the CPU, eval mode)."""
    config = TrainConfig(**checkpoint["config"])
    try:
        model = Seq2SeqTransformer(**config.model_config())
    except ValueError as exc:
        raise CheckpointError(f"{os.fspath(path)!r} describes an impossible model ({exc})") from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise CheckpointError(f"{os.fspath(path)!r}: the weights do not fit the model its config "
                              f"describes (d_model {config.d_model}, {config.n_heads} heads, "
                              f"{config.n_layers} layers, d_ff {config.d_ff}): {detail[:160]}") from None
    return model.eval()


def load_checkpoint(path):
    """The trained model saved at `path`, on the CPU, in eval mode. Raises CheckpointError
    (a common.UserError) with a clear message if the file is missing, corrupt or mismatched."""
    return model_from_checkpoint(read_checkpoint(path), path)


def predict(model, sequences, beam_size=1):
    """Answer digit sequences with a trained model: e.g. [[1, 2, 3]] -> [[3, 2, 1]] for reversal.

    sequences: a list of digit lists (digits 0..n_digits-1, lengths 1..max_len-1), for the task the
    model was trained on (model.config["task"]). beam_size 1 = greedy decoding. Returns a list of
    digit lists: each answer up to its EOS (an answer without EOS stops at the longest possible
    answer plus one token).
    """
    n_digits, task = model.config["n_digits"], model.config["task"]
    if not sequences:
        return []
    rows = []
    for seq in sequences:
        seq = [int(d) for d in seq]
        if not seq:
            raise ValueError("every sequence needs at least one digit")
        if any(d < 0 or d >= n_digits for d in seq):
            raise ValueError(f"digits must be in 0..{n_digits - 1} for this model, got {seq}")
        rows.append(seq)
    T = max(len(r) for r in rows)
    max_out = output_len(task, T, n_digits) + 1                       # the answer and EOS
    if max(T, max_out) > model.max_len:
        raise ValueError(f"sequences of length {T} need {max(T, max_out)} positions; this model's "
                         f"positional encoding has {model.max_len}")
    src = torch.full((len(rows), T), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, :len(r)] = torch.tensor(r) + FIRST_DIGIT
    device = next(model.parameters()).device
    tokens = decode(model, src.to(device), max_out, beam_size).cpu()
    return [tokens_to_digits(row) for row in tokens]


# %% Console helpers of this lesson
TASK_TEXT = {
    "reverse": "reverse the digits: 3 1 4 -> 4 1 3",
    "copy": "copy the digits: 3 1 4 -> 3 1 4",
    "sort": "sort the digits: 3 1 4 -> 1 3 4",
    "sum": "write the sum of the digits: 3 1 4 -> 8 (9 9 9 -> 2 7)",
}
TOKEN_NAMES = {PAD: ".", BOS: "BOS", EOS: "EOS"}


def show_tokens(row, keep_pad=False):
    """Tokens as text: digits as digits, PAD as '.', BOS/EOS by name; trailing PAD dropped."""
    items = row.tolist()
    while items and items[-1] == PAD and not keep_pad:
        items.pop()
    return " ".join(TOKEN_NAMES.get(t, str(t - FIRST_DIGIT)) for t in items)


def digits_text(digits):
    return " ".join(str(d) for d in digits) if digits else "(nothing)"


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_key_position(task, src, tgt_out):
    """For the alignment check: (B, T_tgt) input position each answer token should look at, or -1.

    reverse: the mirror position L-1-i; copy: position i; sort: -1 here (any position holding the
    digit counts, see alignment_share); sum and EOS positions: -1 (no single position).
    """
    B, T_tgt = tgt_out.shape
    lengths = (src >= FIRST_DIGIT).sum(1, keepdim=True)               # (B, 1) digits in each input
    i = torch.arange(T_tgt).expand(B, T_tgt)
    answer = (tgt_out != PAD) & (tgt_out != EOS)
    if task == "reverse":
        return torch.where(answer, lengths - 1 - i, torch.full_like(i, -1))
    if task == "copy":
        return torch.where(answer, i, torch.full_like(i, -1))
    return torch.full_like(i, -1)


def alignment_share(task, weights, src, tgt_out, tolerance=0):
    """Share of answer positions whose strongest cross-attention points where the task says.

    weights (B, n_heads, T_tgt, T_src) -> a tensor (n_heads,) of shares; None for `sum`.
    reverse: the mirror input position; copy: the same position (both within `tolerance`
    positions); sort: an input position that holds the very digit being written.
    """
    if task == "sum":
        return None
    strongest = weights.argmax(-1)                                    # (B, n_heads, T_tgt)
    answer = (tgt_out != PAD) & (tgt_out != EOS)                      # (B, T_tgt)
    if task == "sort":
        looked_at = src.gather(1, strongest.flatten(1)).view_as(strongest)  # token at that input position
        hit = looked_at == tgt_out[:, None, :]
    else:
        hit = (strongest - expected_key_position(task, src, tgt_out)[:, None, :]).abs() <= tolerance
    hit = hit & answer[:, None, :]
    return hit.sum(dim=(0, 2)).float() / answer.sum().float()          # (n_heads,)


# %% 1. The task and the data
def section_1_data(config: TrainConfig, val: Batch, test: Batch):
    common.section(1, f"The task and the data: {TASK_TEXT[config.task]}")
    V = vocab_size(config.n_digits)
    common.explain(f"""
        Every sequence is made of tokens: {V} in all, the {config.n_digits} digits plus three special
        tokens. PAD fills the end of shorter sequences, BOS ("begin") is the first thing the decoder
        reads, EOS ("end") is what it writes when the answer is complete.""")
    common.table([[PAD, "PAD", "padding (no loss, never attended to)"], [BOS, "BOS", "start of the answer"],
                  [EOS, "EOS", "end of the answer"],
                  [f"{FIRST_DIGIT}..{V - 1}", f"0..{config.n_digits - 1}", "the digits"]],
                 ["token id", "shown as", "meaning"])
    print()
    src, tgt_in, tgt_out = test.src[0], test.tgt_in[0], test.tgt_out[0]
    print(f"  one test example ({(src != PAD).sum()} digits):")
    print(f"    encoder input  src     : {show_tokens(src)}")
    print(f"    decoder input  tgt_in  : {show_tokens(tgt_in)}")
    print(f"    decoder target tgt_out : {show_tokens(tgt_out)}")
    common.explain("""
        Teacher forcing. During training the decoder reads the correct answer shifted right by one
        (tgt_in starts with BOS) and must predict, at every position at once, the next token
        (tgt_out ends with EOS). Position i reads BOS and the first i answer tokens, and its causal
        mask hides everything after them, so it never sees the token it has to predict: the
        answer is not leaking into the input. At prediction time there is no answer to read: the
        decoder starts from BOS alone and feeds its own outputs back in, one token at a time,
        until it writes EOS (section 5).""")
    lengths = (val.src != PAD).sum(1)
    if int(lengths.min()) < config.seq_len:
        short = int(lengths.argmin())
        print(f"  lengths vary from {config.resolved_min_len()} to {config.seq_len}: shorter inputs end in PAD,")
        print(f"  and the padding mask (True = may attend) blocks those keys, e.g. for")
        print(f"    src  : {show_tokens(val.src[short], keep_pad=True)}")
        print(f"    mask : {' '.join('1' if t != PAD else '0' for t in val.src[short].tolist())}")
        print()
    n_possible = n_possible_inputs(config)
    common.explain(f"""
        Data. A new training batch of {config.batch_size} sequences is drawn at every step from a
        random generator seeded with --seed {config.seed}; there is no fixed training set.
        The validation set ({len(val)} sequences) and the test set ({len(test)}) are fixed by seeds
        of their own, and every training sequence equal to one of them is dropped before the model
        sees it (there are {common.fmt(float(n_possible))} possible inputs; how many were dropped is
        counted in section 4).""")


# %% 2. The model
def section_2_model(config: TrainConfig, val: Batch, device):
    common.section(2, "The model: encoder (lesson 04) + decoder (new here) + output layer")
    print("  reused through common.load_lesson: causal_mask (01), MultiHeadAttention (02),")
    print("  PositionalEncoding (03), FeedForward and TransformerEncoder (04)")
    common.explain("""
        The encoder is lesson 04's stack: each input position looks at every other input
        position (self-attention), then passes through the feed-forward. The decoder block adds
        two things: its self-attention is masked (position i sees answer positions 0..i only), and
        a second attention, cross-attention, takes its queries from the decoder and its keys and
        values from the encoder output. That is where the answer looks at the input. A linear
        layer finally turns each decoder vector into one score per token.""")
    torch.manual_seed(config.seed)
    model = Seq2SeqTransformer(**config.model_config()).to(device).eval()
    rows = [["token embedding (shared)", count_parameters(model.embed)],
            [f"encoder: {config.n_layers} block(s) + final norm", count_parameters(model.encoder)],
            [f"decoder: {config.n_layers} block(s) + final norm", count_parameters(model.decoder)],
            ["output layer", count_parameters(model.out)], ["total", count_parameters(model)]]
    common.table(rows, ["part", "parameters"])
    print(f"  d_model {config.d_model}, {config.n_heads} head(s) of d_head {config.d_model // config.n_heads}, "
          f"d_ff {config.d_ff}, {'pre-LN' if config.norm_first else 'post-LN'}, "
          f"embeddings {'scaled by sqrt(d_model)' if config.embed_scale else 'not scaled'}")
    print()
    batch = Batch(val.src[:4], val.tgt_in[:4], val.tgt_out[:4]).to(device)
    with torch.no_grad():
        memory, src_mask = model.encode(batch.src)
        logits = model.decode(batch.tgt_in, memory, src_mask)
        weights = model.attention_weights(batch.src, batch.tgt_in)
    print(f"  shapes for a batch of B=4: src {tuple(batch.src.shape)} -> memory {tuple(memory.shape)};")
    print(f"  tgt_in {tuple(batch.tgt_in.shape)} -> logits {tuple(logits.shape)}; cross-attention weights "
          f"{tuple(weights['cross'][0].shape)} = (B, n_heads, T_tgt, T_src)")
    # Causality, measured: change the decoder input after position k; earlier outputs must not move.
    k = batch.tgt_in.size(1) // 2
    changed = batch.tgt_in.clone()
    changed[:, k:] = torch.randint(FIRST_DIGIT, vocab_size(config.n_digits), changed[:, k:].shape,
                                   generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        logits2 = model.decode(changed, memory, src_mask)
    before = (logits2[:, :k] - logits[:, :k]).abs().max().item()
    after = (logits2[:, k:] - logits[:, k:]).abs().max().item()
    print(f"  causality check: decoder inputs changed from position {k} on; largest change of the")
    print(f"  outputs at positions 0..{k - 1}: {before:.3g}, at positions {k}..: {after:.3g}")
    # How loud are tokens compared with positions? (the reason for not scaling by sqrt(d_model))
    embed_norm = model.embed.weight.norm(dim=1).mean().item()
    pe_norm = model.positions.pe[: config.seq_len].norm(dim=1).mean().item()
    print(f"  average vector length: token embedding {embed_norm:.2f}, positional encoding {pe_norm:.2f}; "
          f"times sqrt(d_model) the tokens would be {embed_norm * math.sqrt(config.d_model):.1f}")
    return {"parameters": count_parameters(model), "causal_change_before": before, "causal_change_after": after,
            "embed_norm": embed_norm, "pe_norm": pe_norm}


# %% 3. Choosing the details by measurement
COMPARE_VARIANTS = (("pre-LN, embeddings as they are", True, False),
                    ("post-LN", False, False),
                    ("pre-LN, embeddings x sqrt(d_model)", True, True),
                    ("post-LN, embeddings x sqrt(d_model) (the paper)", False, True))


def section_3_compare(config: TrainConfig, data, device, run: bool, seeds: int):
    common.section(3, "Choosing the details by measurement: LayerNorm placement, embedding scale")
    if not run:
        common.explain(f"""
            The paper puts LayerNorm after each sublayer (post-LN) and multiplies embeddings by
            sqrt(d_model). This lesson uses pre-LN and unscaled embeddings, chosen by measurement.
            Run with --compare to repeat that measurement: it trains each of the
            {len(COMPARE_VARIANTS)} combinations on this task ({seeds} seed{'s' if seeds > 1 else ''}
            each) and prints the steps each needs to reach {config.target:.0%} validation exact-match.
            Section 2 already shows one reason: PyTorch initialises embeddings with N(0, 1) (the
            paper's scaling assumes much smaller ones), so multiplied by sqrt(d_model) they are
            several times louder than the positional encoding added to them.""")
        return None
    common.explain(f"""
        Same task, same data, same validation set; only the two choices change. The first variant
        sets the pace; every other one may take up to 3 times its median steps (at most
        {config.steps}) before it counts as not reaching {config.target:.0%}.""")
    rows, summary, limit = [], {}, config.steps
    for name, norm_first, embed_scale in COMPARE_VARIANTS:
        steps, seconds, best = [], [], []
        for s in range(seeds):
            variant = TrainConfig(**{**asdict(config), "norm_first": norm_first, "embed_scale": embed_scale,
                                     "seed": config.seed + s, "patience": 0, "steps": limit})
            result = train(variant, device, quiet=True, data=data)
            steps.append(result.target_step)
            seconds.append(result.target_seconds)
            best.append(result.best_val["exact_match"])
        reached = [x for x in steps if x is not None]
        median = statistics.median(reached) if len(reached) == len(steps) else None
        if not summary and median is not None:
            limit = min(config.steps, 3 * int(median))       # the pace for the other variants
        chosen = norm_first == config.norm_first and embed_scale == config.embed_scale
        summary[name] = {"steps": steps, "median_steps": median, "best_exact_match": best, "chosen": chosen}
        rows.append([name + (" *" if chosen else ""), " ".join(str(x) if x is not None else "-" for x in steps),
                     f"{median:g}" if median is not None else "-",
                     " ".join(f"{x:.1f}" if x is not None else "-" for x in seconds),
                     " ".join(f"{x:.3f}" for x in best)])
    common.table(rows, ["variant (* = this run's choice)", "steps to target", "median", "training s",
                        "best val exact"])
    print(f"  ('-': not reached within {limit} steps)")
    base = summary[COMPARE_VARIANTS[0][0]]["median_steps"]
    for name, _, _ in COMPARE_VARIANTS[1:]:
        other = summary[name]
        if base and other["median_steps"]:
            print(f"  {name}: {other['median_steps'] / base:.1f}x the steps of the first variant")
        elif base:
            missed = sum(x is None for x in other["steps"])
            print(f"  {name}: {missed} of {seeds} seed(s) did not reach {config.target:.0%} within {limit} steps "
                  f"(best validation exact-match {max(other['best_exact_match']):.3f})")
    return summary


# %% 4. Training
def section_4_train(config: TrainConfig, data, device, resume, args):
    common.section(4, "Training: AdamW, warmup + cosine, gradient clipping, validation, early stopping")
    patience = f"after {config.patience} validations without improvement, " if config.patience else ""
    common.explain(f"""
        Each step: draw a fresh batch, run the model with teacher forcing, take the cross-entropy of
        the {vocab_size(config.n_digits)}-way prediction at every answer position (PAD ignored),
        backpropagate, clip the gradient norm to {config.grad_clip:g}, and let AdamW update the weights.
        The learning rate rises linearly for {config.warmup} steps to {config.lr:g} (so the first
        updates, made while AdamW's running averages rest on a few batches, stay small), then
        follows the {config.schedule} schedule over {config.steps} steps. Every {config.eval_every}
        steps the validation set is scored; training
        stops when its exact-match reaches {config.target:.0%}, {patience}or at the last step.
        The best model is kept. Ctrl-C stops cleanly and keeps it.""")
    if resume is not None:
        print(f"  resuming from step {resume['step']} of the checkpoint (validation exact-match "
              f"{resume.get('val', {}).get('exact_match', float('nan')):.4f})")
    result = train(config, device, resume=resume, data=data)
    if resume is not None and result.steps_run == int(resume["step"]) and \
            result.stopped_because == "target reached":
        print(f"  the checkpoint already meets the target ({config.target:.0%}): nothing to train; raise "
              "--target (e.g. --target 1.0) to train further")
    print(f"  stopped: {result.stopped_because}, after {result.steps_run} steps; "
          f"{result.train_seconds:.2f} s in training steps, {result.wall_seconds:.2f} s with validation")
    if result.target_step is not None:
        print(f"  validation exact-match reached {config.target:.0%} at step {result.target_step}, "
              f"after {result.target_seconds:.2f} s of training")
    else:
        print(f"  validation exact-match did not reach {config.target:.0%} "
              f"(best {result.best_val.get('exact_match', 0):.4f}); try more --steps or a larger model")
    bv = result.best_val
    print(f"  best model: step {result.best_step}, validation loss {bv['loss']:.4f}, token accuracy "
          f"{bv['token_accuracy']:.4f}, exact-match {bv['exact_match']:.4f}")
    print(f"  training sequences dropped because they equal a held-out input: {result.heldout_removed} "
          f"(of {result.sequences_drawn} drawn)")
    plot_training(config, result, args.out_dir, args.show)
    return result


def plot_training(config, result, out_dir, show):
    h = result.history
    fig, axes = common.new_figure(1, 3, figsize=(15, 4.3), show=show)
    ax = axes[0]
    ax.plot(h["step"], h["loss"], color="tab:blue", alpha=0.5, lw=1, label="training batch")
    ax.plot(h["val_step"], h["val_loss"], "o-", color="tab:orange", ms=3, label="validation set")
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss (log scale)",
           title="Loss: training batch and validation set")
    ax.legend()
    ax = axes[1]
    ax.plot(h["val_step"], h["val_token_accuracy"], "o-", ms=3, label="token accuracy")
    ax.plot(h["val_step"], h["val_exact_match"], "s-", ms=3, label="exact-match (whole answer right)")
    ax.axhline(config.target, color="gray", ls="--", lw=1, label=f"target {config.target:.0%}")
    if result.target_step is not None:
        ax.axvline(result.target_step, color="tab:green", ls=":", lw=1.5,
                   label=f"target reached, step {result.target_step}")
    ax.set(xlabel="optimizer step", ylabel="validation accuracy", ylim=(-0.02, 1.02),
           title="Exact-match lags token accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    planned = range(1, config.steps + 1)
    ax.plot(planned, [learning_rate(t, config) for t in planned], color="gray", ls="--", lw=1,
            label=f"planned ({config.steps} steps)")
    ax.plot(h["step"], h["lr"], color="tab:purple", lw=2, label=f"used (stopped at step {result.steps_run})")
    if config.warmup:
        ax.axvline(config.warmup, color="gray", ls=":", lw=1, label=f"end of warmup (step {config.warmup})")
    ax.legend(fontsize=8)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title=f"Warmup, then {config.schedule} decay")
    fig.suptitle(f"Training the mini transformer on '{config.task}' (length {config.seq_len})")
    common.save_figure(fig, out_dir, "training_progress.png", show=show)


# %% 5. Decoding: greedy and beam search on the test set
def section_5_decode(config: TrainConfig, model, test: Batch, beam_size: int, device):
    common.section(5, "Decoding the test set: greedy and beam search")
    max_out = output_len(config.task, config.seq_len, config.n_digits) + 1
    common.explain(f"""
        Greedy decoding starts from BOS, appends the single most likely next token, feeds the
        longer answer back in, and stops at EOS (or after {max_out} tokens). Beam search keeps
        the {beam_size} most likely partial answers at every step instead of one, so a token that
        looks second-best now can still win if what follows is more likely. The test set
        ({len(test)} sequences) was never trained on and never used to pick the model.""")
    src = test.src.to(device)
    t0 = time.perf_counter()
    greedy = decode(model, src, max_out, beam_size=1).cpu()
    greedy_s = time.perf_counter() - t0
    greedy_m = compare_decoded(greedy, test.tgt_out)
    cheap = evaluate_teacher_forced(model, test.to(device))
    rows = [["greedy", greedy_m["token_accuracy"], greedy_m["exact_match"], greedy_s]]
    beam_m = None
    if beam_size > 1:
        t0 = time.perf_counter()
        beam = decode(model, src, max_out, beam_size=beam_size).cpu()
        beam_s = time.perf_counter() - t0
        beam_m = compare_decoded(beam, test.tgt_out)
        rows.append([f"beam search, beam size {beam_size}", beam_m["token_accuracy"], beam_m["exact_match"],
                     beam_s])
    common.table(rows, ["decoding", "token accuracy", "exact-match", "seconds"])
    same = cheap["exact_match"] == greedy_m["exact_match"]
    print(f"  exact-match from one teacher-forced pass: {cheap['exact_match']:.4f} "
          f"({'equal to' if same else 'DIFFERENT from'} greedy decoding's {greedy_m['exact_match']:.4f})")
    if same:
        print("  (greedy gets an answer right exactly when the teacher-forced argmax is right at every")
        print("  position, so validation in section 4 could use the cheap pass)")
    if beam_m is not None:
        width = max(greedy.size(1), beam.size(1))
        g, b = F.pad(greedy, (0, width - greedy.size(1))), F.pad(beam, (0, width - beam.size(1)))
        differ = (g != b).any(dim=1)
        expected = F.pad(test.tgt_out, (0, max(0, width - test.tgt_out.size(1))))[:, :width]
        g_right, b_right = (g == expected).all(1), (b == expected).all(1)
        fixed, broke = int((differ & b_right & ~g_right).sum()), int((differ & g_right & ~b_right).sum())
        lp_g = sequence_log_prob(model, src, greedy.to(device)).cpu()
        lp_b = sequence_log_prob(model, src, beam.to(device)).cpu()
        print(f"  beam search changed {int(differ.sum())} of {len(test)} answers: {fixed} wrong -> right, "
              f"{broke} right -> wrong; mean log-probability of the answers {lp_g.mean():.4f} (greedy) "
              f"vs {lp_b.mean():.4f} (beam)")
        if int(differ.sum()) == 0:
            print("  here beam search changed nothing: it found no answer the model rates more likely than the")
            print("  greedy one (beam search pays off when the greedy path is not the most likely answer).")
        elif fixed > broke:
            print(f"  here beam search helped: {fixed - broke} more answers right.")
        elif broke > fixed:
            print("  here beam search hurt: a more likely answer (by the model) is not always the right one.")
        else:
            print("  here beam search found more likely answers but no more right ones.")
    by_pos, counts = greedy_m["by_position"], greedy_m["position_counts"]
    print("\n  greedy accuracy by answer position (each answer ends with its EOS; 'answers' counts")
    print("  the test answers that long):")
    for start in range(0, len(by_pos), 12):
        chunk = range(start, min(start + 12, len(by_pos)))
        print("   position " + " ".join(f"{i + 1:>5}" for i in chunk))
        print("   accuracy " + " ".join(f"{by_pos[i]:>5.3f}" for i in chunk))
        print("   answers  " + " ".join(f"{counts[i]:>5}" for i in chunk))
    print("\n  examples (input -> greedy answer (expected)):")
    answers = [tokens_to_digits(row) for row in greedy]
    expected = [tokens_to_digits(row) for row in test.tgt_out]
    wrong = [i for i in range(len(test)) if answers[i] != expected[i]]
    shown = list(range(4)) + [i for i in wrong if i >= 4][:2]
    for i in shown:
        predicted, expected_digits = answers[i], expected[i]
        mark = "ok" if predicted == expected_digits else "WRONG"
        print(f"   {digits_text(tokens_to_digits(test.src[i]))} -> {digits_text(predicted)} "
              f"({digits_text(expected_digits)}) {mark}")
    if not wrong:
        print(f"   (no wrong answer among the {len(test)} test sequences)")
    return {"greedy": greedy_m, "beam": beam_m, "cheap_exact_match": cheap["exact_match"],
            "greedy_tokens": greedy, "n_wrong": len(wrong)}


# %% 6. What the attention learned
def section_6_attention(config: TrainConfig, model, test: Batch, device, out_dir, show):
    common.section(6, "What the attention learned (trained model, eval mode)")
    model.eval()
    with torch.no_grad():
        weights = model.attention_weights(test.src.to(device), test.tgt_in.to(device))
    enc = [w.cpu() for w in weights["encoder_self"]]                  # each (B, n_heads, T_src, T_src)
    cross = [w.cpu() for w in weights["cross"]]                       # each (B, n_heads, T_tgt, T_src)
    # Focus: the largest weight in each query row, averaged over real (non-PAD) rows. 1 = one key
    # only; 1 / L = spread evenly over the L digits of the input.
    src_real = (test.src != PAD)[:, None, :]                          # (B, 1, T_src)
    tgt_real = (test.tgt_out != PAD)[:, None, :]                      # (B, 1, T_tgt)
    enc_focus = [float(w.max(-1).values[src_real.expand(-1, w.size(1), -1)].mean()) for w in enc]
    cross_focus = [float(w.max(-1).values[tgt_real.expand(-1, w.size(1), -1)].mean()) for w in cross]
    lengths = (test.src != PAD).sum(1).float()                        # (B,) digits in each input
    even = float((1 / lengths).mean())                                # focus if spread evenly, averaged
    evenly = f"1/{config.seq_len} = {even:.3f}" if int(lengths.min()) == config.seq_len else \
        f"1/L for L digits,\n  {even:.3f} on average for these lengths"
    print(f"  focus (largest weight per query row, averaged; spread evenly would be {evenly}):")
    common.table([[f"layer {l + 1}", enc_focus[l], cross_focus[l]] for l in range(len(enc))],
                 ["", "encoder self-attention", "decoder cross-attention"])
    if max(cross_focus) > 2 * max(enc_focus):
        print("  the cross-attention is far more focused than the encoder's: the decoder picks out")
        print("  particular inputs")
    shares = None
    if config.task != "sum":
        what = {"reverse": "the mirror input position (answer position i -> input position L-1-i)",
                "copy": "the same input position", "sort": "an input position holding the digit being written"}
        print(f"  share of answer positions (all {len(test)} test sequences) whose strongest cross-attention")
        print(f"  points to {what[config.task]}:")
        shares = [alignment_share(config.task, w, test.src, test.tgt_out) for w in cross]   # (n_heads,) each
        rows = []
        for l, w in enumerate(cross):
            heads = [(f"layer {l + 1}, head {h + 1}", w[:, h:h + 1]) for h in range(w.size(1))]
            for name, part in heads + [(f"layer {l + 1}, heads averaged", w.mean(1, keepdim=True))]:
                row = [name, float(alignment_share(config.task, part, test.src, test.tgt_out)[0])]
                if config.task != "sort":
                    row.append(float(alignment_share(config.task, part, test.src, test.tgt_out, tolerance=1)[0]))
                rows.append(row)
        common.table(rows, ["cross-attention", "exactly there"]
                     + (["within 1 position"] if config.task != "sort" else []))
        best = max(float(x.max()) for x in shares)
        if best >= 0.9:
            print(f"  best head: {best:.3f}: the picture should show the pattern (see the PNG)")
        else:
            print(f"  best head: {best:.3f}: not a clean one-to-one alignment (see the PNG)")
        if config.task != "sort":
            # Where does the strongest weight fall instead? Offset from the expected input position.
            layer = max(range(len(cross)), key=lambda l: float(alignment_share(
                config.task, cross[l].mean(1, keepdim=True), test.src, test.tgt_out)[0]))
            expected = expected_key_position(config.task, test.src, test.tgt_out)      # (B, T_tgt)
            offset = (cross[layer].mean(1).argmax(-1) - expected)[expected >= 0]     # heads averaged
            counts = {k: float((offset == k).float().mean()) for k in range(-3, 4)}
            print(f"  strongest input position minus the expected one (layer {layer + 1}, heads averaged):")
            print("   " + "  ".join(f"{k:+d}: {v:.1%}" for k, v in counts.items())
                  + f"  other: {max(0.0, 1 - sum(counts.values())):.1%}")
            right = sum(v for k, v in counts.items() if k > 0)
            left = sum(v for k, v in counts.items() if k < 0)
            if config.task == "reverse" and counts[0] < 0.9 and right > 2 * left:
                print("   Mostly at or to the right of the mirror. Those inputs (offset +1, +2, ...) are the")
                print("   digits already written as the previous answer tokens, which the decoder also sees")
                print("   through its own masked self-attention. With inputs of different lengths the mirror")
                print("   position L-1-i depends on L, which the positions alone do not tell the decoder.")
    else:
        print("  (each answer digit of a sum depends on every input, so there is no alignment to check:")
        print(f"  compare the cross-attention focus above with {even:.3f})")
    best_share = max(float(x.max()) for x in shares) if shares is not None else None
    plot_attention(config, enc, cross, test, out_dir, show, alignment=best_share)
    return {"encoder_focus": enc_focus, "cross_focus": cross_focus,
            "alignment_share": [[float(x) for x in s] for s in shares] if shares is not None else None}


def plot_attention(config, enc, cross, test, out_dir, show, example=0, alignment=None):
    """One row of heads per attention layer: encoder self-attention, then decoder cross-attention."""
    n_layers, n_heads = len(enc), enc[0].size(1)
    src = test.src[example]
    T_src = int((src != PAD).sum())
    T_tgt = int((test.tgt_out[example] != PAD).sum())
    src_labels = [f"{i}\n{show_tokens(t[None])}" for i, t in enumerate(src[:T_src])]
    in_rows = [f"{i} ({show_tokens(t[None])})" for i, t in enumerate(src[:T_src])]
    out_rows = [f"{i} (writes {show_tokens(t[None])})" for i, t in enumerate(test.tgt_out[example][:T_tgt])]
    fig, axes = common.new_figure(2 * n_layers, n_heads, figsize=(6.2 * n_heads, 4.8 * 2 * n_layers),
                                  show=show, squeeze=False)
    for l in range(n_layers):
        for h in range(n_heads):
            panels = ((axes[2 * l][h], enc[l][example, h, :T_src, :T_src], in_rows,
                       f"encoder self-attention, layer {l + 1}, head {h + 1}", "query: input position (token)"),
                      (axes[2 * l + 1][h], cross[l][example, h, :T_tgt, :T_src], out_rows,
                       f"decoder cross-attention, layer {l + 1}, head {h + 1}", "query: answer position"))
            for ax, w, row_labels, title, ylabel in panels:
                image = ax.imshow(w.numpy(), cmap="viridis", vmin=0, vmax=1)
                ax.set_xticks(range(T_src))
                ax.set_xticklabels(src_labels, fontsize=7)
                ax.set_yticks(range(len(row_labels)))
                ax.set_yticklabels(row_labels, fontsize=7)
                ax.set_xlabel("key: input position (token below)")
                ax.set_ylabel(ylabel)
                ax.set_title(title, fontsize=9)
                fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="attention weight")
    pattern = {"reverse": f"the anti-diagonal (answer position i -> input position {T_src - 1}-i)",
               "copy": "the diagonal (answer position i -> input position i)",
               "sort": "each answer position -> an input holding the digit it writes"}.get(config.task)
    if pattern is None:
        what = "sum: every answer digit depends on all inputs, so no one-to-one pattern is expected"
    elif alignment is None:
        what = f"expected cross-attention pattern: {pattern}"
    elif alignment >= 0.9:
        what = f"cross-attention shows {pattern}: best head {alignment:.0%} of test answer positions"
    else:
        what = (f"expected {pattern}, but the best head points there for only {alignment:.0%} "
                "of test answer positions")
    fig.suptitle(f"Attention on one test example ({config.task}: {digits_text(tokens_to_digits(src))})\n{what}",
                 fontsize=10)
    common.save_figure(fig, out_dir, "transformer_attention_patterns.png", show=show)


# %% 7. Save, reload, predict
def section_7_save(config: TrainConfig, result: TrainResult, test: Batch, decoded, out_dir):
    common.section(7, "Saving the best model, loading it back, predicting")
    path = save_checkpoint(os.path.join(out_dir, CHECKPOINT_NAME), result, config)
    print(f"  saved {path} (state_dict + plain config; torch.load(..., weights_only=True) reads it)")
    loaded = load_checkpoint(path)
    inputs = [tokens_to_digits(test.src[i]) for i in range(8)]
    answers = predict(loaded, inputs)
    before = [tokens_to_digits(decoded["greedy_tokens"][i]) for i in range(8)]
    same = sum(a == b for a, b in zip(answers, before))
    print(f"  load_checkpoint + predict on 8 test inputs: {same} of 8 answers equal to the in-memory model's")
    print(f"    predict(model, [[{', '.join(map(str, inputs[0]))}]]) -> {answers[0]}")
    return same


# %% 8. Length generalization (only with --eval-lengths)
def trained_lengths(config: TrainConfig, checkpoint=None) -> list:
    """The input lengths the model was trained on: this run's and, after --resume, the checkpoint's."""
    lengths = set(range(config.resolved_min_len(), config.seq_len + 1))
    if checkpoint is not None:
        saved = TrainConfig(**checkpoint["config"])
        lengths |= set(range(saved.resolved_min_len(), saved.seq_len + 1))
    return sorted(lengths)


def length_verdict(config: TrainConfig, results: dict, trained: list, reference: float) -> list:
    """What the sinusoidal encoding does and does not buy, in sentences built from the measured
    exact-match of each length (results) and of the trained lengths (reference, the test set)."""
    lo, hi = min(trained), max(trained)
    longer = [L for L in results if L > hi]
    shorter = [L for L in results if L < lo]
    sentences = []
    if longer:
        far = max(longer)
        acc = results[far]["exact_match_greedy"]
        text = (f"The sinusoidal formula gives every position up to --max-len {config.max_len} an encoding, so "
                f"the model runs on length {far} (a learned position table would hold only its random initial "
                f"values for the {far - hi} input positions past {hi}); ")
        if reference - acc > 0.1:
            text += (f"but nothing in training taught the weights what to do with those positions: exact-match "
                     f"fell from {reference:.1%} on the trained lengths to {acc:.1%} at length {far}.")
        else:
            text += (f"and here what it learned carried over: exact-match {acc:.1%} at length {far} against "
                     f"{reference:.1%} on the trained lengths.")
        sentences.append(text)
    if shorter:
        near = min(shorter)
        acc = results[near]["exact_match_greedy"]
        text = f"Shorter inputs use only positions seen in training; at length {near} exact-match was {acc:.1%}"
        if reference - acc <= 0.1:
            text += f", close to the trained lengths' {reference:.1%}."
        elif lo == hi:
            text += (f" (trained lengths: {reference:.1%}): trained on length {hi} only, the model never saw an "
                     "input end earlier, so known positions were not enough (try --min-len).")
        else:
            text += f" (trained lengths: {reference:.1%}): it never saw inputs that short."
        sentences.append(text)
    if not sentences:
        accs = [r["exact_match_greedy"] for r in results.values()]
        sentences.append(f"Every length asked for lies in the trained range {lo}..{hi} (exact-match "
                         f"{min(accs):.1%} to {max(accs):.1%}); ask for longer ones (up to "
                         f"{max_eval_length(config)}) to see what the positional encoding does not buy.")
    return sentences


def section_8_length_generalization(config: TrainConfig, model, lengths, trained, reference, device, out_dir,
                                    show):
    common.section(8, "Length generalization: inputs longer and shorter than in training")
    lo, hi = min(trained), max(trained)
    span, asked = (f"length {hi}" if lo == hi else f"lengths {lo} to {hi}"), ", ".join(map(str, lengths))
    common.explain(f"""
        The model was trained on inputs of {span}. Now the best model (eval mode) answers
        {LENGTH_TEST_SIZE} random inputs of each length in {asked}, one fixed set per length drawn
        from a seed of its own, by greedy decoding. The positional encoding is a formula: its
        table has a row for each of the {config.max_len} positions (--max-len), also for positions
        that no training input reached. Whether the model knows what to do with them is what this
        section measures.""")
    out_hi = output_len(config.task, hi, config.n_digits) + 1      # decoder positions seen (answer + EOS)
    rows, results = [], {}
    for L in lengths:
        data = length_test_set(config, L)
        out_L = output_len(config.task, L, config.n_digits) + 1
        tokens = decode(model, data.src.to(device), out_L).cpu()   # greedy
        greedy = compare_decoded(tokens, data.tgt_out)
        cheap = evaluate_teacher_forced(model, data.to(device))
        # How long were the answers? Digits written before EOS, against the digits expected.
        written = [len(tokens_to_digits(row)) for row in tokens]
        expected = [len(tokens_to_digits(row)) for row in data.tgt_out]
        right_length = sum(w == e for w, e in zip(written, expected)) / len(data)
        r = results[L] = {
            "sequences": len(data), "trained_on": L in trained,
            "unseen_input_positions": max(0, L - hi), "unseen_answer_positions": max(0, out_L - out_hi),
            "exact_match_greedy": greedy["exact_match"], "token_accuracy_greedy": greedy["token_accuracy"],
            "exact_match_teacher_forced": cheap["exact_match"], "answers_of_right_length": right_length,
            "most_common_answer_length": statistics.mode(written),
            "accuracy_by_position_greedy": greedy["by_position"]}
        where = "yes" if L in trained else "longer" if L > hi else "shorter" if L < lo else "no (gap)"
        rows.append([L, where, f"{r['unseen_input_positions']} + {r['unseen_answer_positions']}",
                     r["exact_match_greedy"], r["token_accuracy_greedy"], right_length,
                     r["most_common_answer_length"]])
    common.table(rows, ["length", "trained", "new positions", "exact-match", "token acc.", "right length",
                        "usual length"])
    agree = all(results[L]["exact_match_greedy"] == results[L]["exact_match_teacher_forced"] for L in lengths)
    print("  new positions: input + answer positions (rows of the encoding table) that training never")
    print("  reached. right length: share of answers with as many digits as expected; usual length:")
    print("  the most common number of digits written. Exact-match from one teacher-forced pass:")
    print(f"  {'the same for every length' if agree else 'DIFFERENT (unexpected: investigate)'}. "
          f"Section 5's test set (trained lengths): exact-match {reference:.4f}.")
    print()
    sentences = length_verdict(config, results, trained, reference)
    common.explain("\n\n".join(sentences))
    plot_length_generalization(config, results, trained, reference, out_dir, show)
    return {"results": results, "trained": trained, "sentences": sentences}


def plot_length_generalization(config, results, trained, reference, out_dir, show):
    """Left: accuracy by input length, trained lengths shaded. Right: accuracy by answer position."""
    plt = common.pyplot(show)
    from matplotlib.ticker import MaxNLocator

    lo, hi = min(trained), max(trained)
    lengths = sorted(results)
    fig, axes = common.new_figure(1, 2, figsize=(13, 5.4), show=show)
    ax = axes[0]
    # one shaded band per run of consecutive trained lengths (two runs after --resume with other lengths)
    runs = list(zip([L for L in trained if L - 1 not in trained], [L for L in trained if L + 1 not in trained]))
    label = f"trained length{'s' if len(trained) > 1 else ''} (" + \
        ", ".join(f"{a}..{b}" if a < b else str(a) for a, b in runs) + ")"
    for i, (a, b) in enumerate(runs):
        ax.axvspan(a - 0.5, b + 0.5, color="tab:green", alpha=0.15, label=None if i else label)
    ax.plot(lengths, [results[L]["exact_match_greedy"] for L in lengths], "o-", label="exact-match (whole answer)")
    ax.plot(lengths, [results[L]["token_accuracy_greedy"] for L in lengths], "s--", label="token accuracy")
    ax.axhline(reference, color="gray", ls=":", lw=1, label=f"test set, trained lengths ({reference:.1%})")
    ax.set_xticks(lengths)
    outside = [results[L]["exact_match_greedy"] for L in lengths if L not in trained]
    if not outside:
        title = "Accuracy by input length (all inside the trained range)"
    elif reference - min(outside) > 0.1:
        title = "Exact-match falls outside the trained lengths (shaded)"
    else:
        title = "Exact-match holds outside the trained lengths (shaded)"
    ax.set(xlabel="input length (digits)", ylabel=f"accuracy on {LENGTH_TEST_SIZE} inputs (greedy)",
           ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)   # below: never on a line
    ax = axes[1]
    out_hi = output_len(config.task, hi, config.n_digits) + 1
    ax.axvspan(0.5, out_hi + 0.5, color="tab:green", alpha=0.15,
               label=f"answer positions seen in training (1..{out_hi})")
    colors = plt.cm.viridis([0.9 * i / max(1, len(lengths) - 1) for i in range(len(lengths))])
    for L, color in zip(lengths, colors):
        by_pos = results[L]["accuracy_by_position_greedy"]
        ax.plot(range(1, len(by_pos) + 1), by_pos, "-" if L in trained else "--", marker=".", color=color,
                label=f"length {L}" + ("" if L in trained else " (not trained on)"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="answer position (1 = first token; the last one is EOS)", ylabel="token accuracy (greedy)",
           ylim=(-0.02, 1.02), title="Where the answers go wrong: accuracy by answer position")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    span = f"length {hi}" if lo == hi else f"lengths {lo} to {hi}"
    tested = f"length {lengths[0]}" if len(lengths) == 1 else f"lengths {lengths[0]} to {lengths[-1]}"
    fig.suptitle(f"Length generalization on '{config.task}': trained on {span}, tested on {tested}")
    common.save_figure(fig, out_dir, "length_generalization.png", show=show)


def write_metrics(path, config, result, decoded, attention, compare, beam_size, lengths=None):
    greedy, beam = decoded["greedy"], decoded["beam"]
    metrics = {
        "task": config.task,
        "config": asdict(config),
        "steps_run": result.steps_run,
        "train_seconds": result.train_seconds,
        "wall_seconds_with_validation": result.wall_seconds,
        "stopped_because": result.stopped_because,
        "target": config.target,
        "target_step": result.target_step,
        "target_seconds": result.target_seconds,
        "best_step": result.best_step,
        "val_loss": result.best_val["loss"],
        "val_token_accuracy": result.best_val["token_accuracy"],
        "val_exact_match": result.best_val["exact_match"],
        "test_token_accuracy_greedy": greedy["token_accuracy"],
        "test_exact_match_greedy": greedy["exact_match"],
        "test_accuracy_by_position_greedy": greedy["by_position"],
        "beam_size": beam_size,
        "test_token_accuracy_beam": beam["token_accuracy"] if beam else None,
        "test_exact_match_beam": beam["exact_match"] if beam else None,
        "heldout_sequences_removed_from_training": result.heldout_removed,
        "cross_attention_alignment_share": attention["alignment_share"],
        "attention_focus": {"encoder": attention["encoder_focus"], "cross": attention["cross_focus"]},
        "compare": compare,
        # --eval-lengths: {length: exact-match, token accuracy, ...}; null without the flag
        "length_generalization": {str(L): r for L, r in lengths["results"].items()} if lengths else None,
    }
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"  saved metrics: {path}")
    return metrics


# %% Flags
# --quick: a tiny version for smoke tests (explicit flags still win).
QUICK = dict(seq_len=6, steps=100, warmup=10, val_size=200, test_size=200)
# flag -> (TrainConfig field, type, help). Defaults come from TrainConfig (and TASK_DEFAULTS).
FLAGS = {
    "--task": ("task", str, "what to learn"),
    "--seq-len": ("seq_len", int, "longest input sequence"),
    "--min-len": ("min_len", int, "shortest input sequence; 0 = --seq-len (all equal)"),
    "--digits": ("n_digits", int, "number of different digits"),
    "--d-model": ("d_model", int, "width of every token vector"),
    "--heads": ("n_heads", int, "attention heads (must divide --d-model)"),
    "--layers": ("n_layers", int, "encoder blocks, and as many decoder blocks"),
    "--d-ff": ("d_ff", int, "hidden width of the feed-forward"),
    "--dropout": ("dropout", float, "dropout probability"),
    "--max-len": ("max_len", int, "positions in the positional-encoding table"),
    "--steps": ("steps", int, "maximum optimizer steps"),
    "--batch-size": ("batch_size", int, "sequences per step"),
    "--lr": ("lr", float, "peak learning rate (AdamW)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--warmup": ("warmup", int, "linear warmup steps"),
    "--schedule": ("schedule", str, "learning rate after warmup"),
    "--grad-clip": ("grad_clip", float, "clip the gradient norm to this; 0 = off"),
    "--eval-every": ("eval_every", int, "validate every this many steps"),
    "--patience": ("patience", int, "stop after this many validations without improvement; 0 = never"),
    "--target": ("target", float, "stop when validation exact-match reaches this"),
}


def build_parser():
    import argparse

    parser = common.lesson_parser(__doc__, quick_help="tiny sizes (length 6, at most 100 steps, 200 held-out): "
                                                      "a few seconds, for smoke tests")
    group = parser.add_argument_group("lesson 05 (task, model, training)")
    defaults = TrainConfig()
    for flag, (name, kind, text) in FLAGS.items():
        default = getattr(defaults, name)
        by_task = {t: d[name] for t, d in TASK_DEFAULTS.items() if name in d}
        if by_task:
            default = f"{default}; " if len(by_task) < len(TASKS) else ""
            default += ", ".join(f"{n} for {t}" for t, n in by_task.items())
        extra = {"choices": TASKS, "metavar": None} if name == "task" else \
            {"choices": SCHEDULES, "metavar": None} if name == "schedule" else {"metavar": flag[2:].upper()}
        # default=SUPPRESS: a flag missing from args was not given (needed to check --resume)
        group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                           help=f"{text} (default: {default})", **extra)
    group.add_argument("--norm", dest="norm", choices=("pre", "post"), default=argparse.SUPPRESS,
                       help="LayerNorm before each sublayer (pre) or after it (post, the paper) (default: pre)")
    group.add_argument("--embed-scale", dest="embed_scale", action="store_true", default=argparse.SUPPRESS,
                       help="multiply embeddings by sqrt(d_model), as the paper does (default: off)")
    group.add_argument("--beam-size", type=int, default=4,
                       help="beam width for beam search on the test set (1 = off)")
    group.add_argument("--resume", metavar="PATH", default=None,
                       help="continue training from a checkpoint (its task and model shape are kept)")
    group.add_argument("--compare", action="store_true",
                       help="also measure pre-LN vs post-LN and embedding scaling (about a minute)")
    group.add_argument("--compare-seeds", type=int, default=argparse.SUPPRESS, metavar="N",
                       help="seeds per variant for --compare (default: 2; 1 with --quick)")
    group.add_argument("--eval-lengths", metavar="L1,L2,...", default=None,
                       help=f"after training, test the model on {LENGTH_TEST_SIZE} inputs of each of these "
                            "lengths (longer or shorter than trained on), e.g. 8,16,24; writes "
                            "length_generalization.png (default: off)")
    return parser


def given_values(args) -> dict:
    """The TrainConfig values the user typed (flags not given are absent from args)."""
    given = {name: getattr(args, name) for name, _, _ in FLAGS.values() if hasattr(args, name)}
    if hasattr(args, "norm"):
        given["norm_first"] = args.norm == "pre"
    if hasattr(args, "embed_scale"):
        given["embed_scale"] = True
    given["seed"] = args.seed  # the common --seed flag: model initialisation and training batches
    return given


MAX_PARAMETERS = 50_000_000   # a CPU lesson: larger models would take hours and gigabytes
MAX_POSITIONS = 10_000         # rows of the positional-encoding table


def estimated_parameters(c: TrainConfig) -> int:
    """The model's parameter count from its config, without building it (to refuse absurd sizes)."""
    d, ff, V = c.d_model, c.d_ff, vocab_size(c.n_digits)
    attention = 4 * d * d + 4 * d                        # W_q, W_k, W_v, W_o with biases
    feed_forward = 2 * d * ff + ff + d
    encoder_block = attention + feed_forward + 2 * 2 * d  # + two LayerNorms
    decoder_block = 2 * attention + feed_forward + 3 * 2 * d
    final_norms = 2 * 2 * d if c.norm_first else 0       # pre-LN ends encoder and decoder with a LayerNorm
    return V * d + c.n_layers * (encoder_block + decoder_block) + final_norms + d * V + V


def validate_config(c: TrainConfig):
    """Raise UserError, naming the value and what would work, for settings that cannot run."""
    for flag, value in (("--lr", c.lr), ("--weight-decay", c.weight_decay), ("--grad-clip", c.grad_clip),
                        ("--dropout", c.dropout), ("--target", c.target)):
        if not math.isfinite(value):             # nan slips through every < and == comparison below
            raise common.UserError(f"{flag} must be a finite number, got {value}")
    for flag, value in (("--seq-len", c.seq_len), ("--digits", c.n_digits), ("--d-model", c.d_model),
                        ("--heads", c.n_heads), ("--layers", c.n_layers), ("--d-ff", c.d_ff),
                        ("--max-len", c.max_len), ("--steps", c.steps), ("--batch-size", c.batch_size),
                        ("--eval-every", c.eval_every), ("--lr", c.lr)):
        common.check_positive(flag, value)
    for flag, value in (("--min-len", c.min_len), ("--warmup", c.warmup), ("--patience", c.patience),
                        ("--grad-clip", c.grad_clip), ("--weight-decay", c.weight_decay)):
        common.check_positive(flag, value, allow_zero=True)
    if c.d_model % c.n_heads:
        options = [h for h in range(1, min(c.d_model, 16) + 1) if c.d_model % h == 0]
        raise common.UserError(f"--d-model {c.d_model} is not divisible by --heads {c.n_heads} (each head gets "
                               f"d_model / heads dimensions); use --heads in {options} or e.g. "
                               f"--d-model {c.n_heads * max(1, round(c.d_model / c.n_heads))}")
    if c.n_digits < 2:
        raise common.UserError(f"--digits must be at least 2, got {c.n_digits}")
    if c.min_len > c.seq_len:
        raise common.UserError(f"--min-len {c.min_len} is longer than --seq-len {c.seq_len}; "
                               f"use --min-len <= {c.seq_len}")
    needed = positions_needed(c.task, c.seq_len, c.n_digits)
    if needed > c.max_len:
        fits = [L for L in range(1, c.max_len + 1) if positions_needed(c.task, L, c.n_digits) <= c.max_len]
        instead = f"use --seq-len <= {max(fits)} or " if fits else ""
        raise common.UserError(f"--seq-len {c.seq_len} needs {needed} positions (the input, and the answer plus "
                               f"EOS) but the positional encoding has --max-len {c.max_len}; {instead}raise "
                               f"--max-len to at least {needed}")
    parameters = estimated_parameters(c)
    if parameters > MAX_PARAMETERS or c.max_len > MAX_POSITIONS:
        raise common.UserError(f"--d-model {c.d_model} --d-ff {c.d_ff} --layers {c.n_layers} --max-len {c.max_len} "
                               f"is far too big for this lesson (about {parameters / 1e6:.0f} million parameters, "
                               f"limit {MAX_PARAMETERS / 1e6:.0f} million; --max-len limit {MAX_POSITIONS}); "
                               "e.g. --d-model 128 --d-ff 512 --layers 2")
    if not 0.0 <= c.dropout < 1.0:
        raise common.UserError(f"--dropout must be in [0, 1), got {c.dropout}")
    if not 0.0 < c.target <= 1.0:
        raise common.UserError(f"--target is an exact-match share in (0, 1], got {c.target}")
    if n_possible_inputs(c) < 100:
        raise common.UserError(f"--seq-len {c.seq_len} with --digits {c.n_digits} allows only "
                               f"{n_possible_inputs(c)} different inputs, too few to hold some out for testing; "
                               "use a longer --seq-len or more --digits")


def max_eval_length(config: TrainConfig) -> int:
    """The longest input whose answer (plus EOS) still fits the positional-encoding table."""
    return max(L for L in range(1, config.max_len + 1)
               if positions_needed(config.task, L, config.n_digits) <= config.max_len)


def parse_eval_lengths(text: str, config: TrainConfig) -> list:
    """'8,16,24' -> [8, 16, 24], sorted, each once. UserError, naming the value and the longest
    length that fits, for anything that is not a whole number from 1 to max_eval_length(config)."""
    largest, lengths = max_eval_length(config), set()
    for item in text.split(","):
        try:
            L = int(item.strip())
        except ValueError:
            raise common.UserError(f"--eval-lengths {text!r}: {item.strip()!r} is not a whole number; give "
                                   f"lengths from 1 to {largest} separated by commas, e.g. 8,16,24") from None
        if L < 1:
            raise common.UserError(f"--eval-lengths: {L} is not a length (an input has at least 1 digit); use "
                                   f"lengths from 1 to {largest}")
        if L > largest:
            needed = positions_needed(config.task, L, config.n_digits)
            raise common.UserError(f"--eval-lengths: length {L} needs {needed} positions (the input, and the "
                                   f"answer plus EOS) but the positional encoding has --max-len "
                                   f"{config.max_len}; use lengths up to {largest}, or train a model with "
                                   f"--max-len {needed} or more")
        lengths.add(L)
    return sorted(lengths)


def config_from_args(args):
    """TrainConfig from defaults < --quick < checkpoint (--resume) < flags typed; and the checkpoint."""
    given = given_values(args)
    values = asdict(TrainConfig())
    if args.quick:
        values.update(QUICK)
    checkpoint = None
    if args.resume:
        checkpoint = read_checkpoint(args.resume)
        saved = checkpoint["config"]
        try:
            validate_config(TrainConfig(**{**asdict(TrainConfig()), **saved}))
        except common.UserError as exc:           # the checkpoint's values, not flags the user typed
            raise CheckpointError(f"{args.resume!r} holds settings this lesson cannot run "
                                  f"(as flags: {exc}); retrain to write a new one") from None
        for name in ARCHITECTURE_FIELDS:
            if name in given and given[name] != saved[name]:
                flag = next((f"{f} {given[name]}" for f, (n, _, _) in FLAGS.items() if n == name),
                            f"--norm {'pre' if given.get('norm_first') else 'post'}" if name == "norm_first"
                            else "--embed-scale")
                what = "another task" if name == "task" else "another shape"
                raise CheckpointError(f"{flag} contradicts the checkpoint {args.resume!r} ({name} = "
                                      f"{saved[name]}: {what}); drop {flag.split()[0]} to resume it, or train "
                                      "a new model without --resume")
        values.update(saved)
    elif not args.quick:
        values.update(TASK_DEFAULTS[given.get("task", values["task"])])
    values.update(given)
    config = TrainConfig(**values)
    if checkpoint is not None and positions_needed(config.task, config.seq_len, config.n_digits) > config.max_len:
        fits = max(L for L in range(1, config.max_len + 1)       # the saved config fits, so L >= 1 exists
                   if positions_needed(config.task, L, config.n_digits) <= config.max_len)
        raise CheckpointError(f"--seq-len {config.seq_len} needs more positions than the checkpoint's model has "
                              f"(max_len {config.max_len}, fixed by {args.resume!r}); use --seq-len <= {fits} "
                              "to resume it, or train a new model with a larger --max-len")
    validate_config(config)
    if checkpoint is not None:
        model = model_from_checkpoint(checkpoint, args.resume)    # its weights must fit its config
        check_resumable(checkpoint, args.resume, model)           # and training can go on from it
        if config.steps <= int(checkpoint["step"]):
            raise CheckpointError(f"the checkpoint {args.resume!r} is already at step {checkpoint['step']} "
                                  f"and --steps is {config.steps}; pass a larger --steps to train further")
    common.check_positive("--beam-size", args.beam_size)
    if hasattr(args, "compare_seeds"):
        common.check_positive("--compare-seeds", args.compare_seeds)
    return config, checkpoint


def insights(config, model_info, result, decoded, attention, compare, beam_size, reloaded_same, lengths=None):
    greedy, beam = decoded["greedy"], decoded["beam"]
    items = []
    items.append(f"Teacher forcing trains every answer position in one pass, and the causal mask keeps it "
                 f"honest: changing later decoder inputs moved earlier outputs by "
                 f"{model_info['causal_change_before']:.3g} (later ones by "
                 f"{model_info['causal_change_after']:.3g}).")
    if result.target_step is not None:
        items.append(f"{model_info['parameters']:,} parameters reached {config.target:.0%} validation exact-match "
                     f"on '{config.task}' (length {config.seq_len}) after {result.target_step} steps, "
                     f"{result.target_seconds:.1f} s of training on this machine.")
    else:
        items.append(f"Training stopped ({result.stopped_because}) at {result.best_val['exact_match']:.1%} "
                     f"validation exact-match, short of the {config.target:.0%} target: more --steps, a larger "
                     f"model or another --lr may get there.")
    weakest = min([a for a, n in zip(greedy["by_position"], greedy["position_counts"]) if n >= 50] or [1.0])
    stricter = greedy["exact_match"] < greedy["token_accuracy"]
    items.append(f"Exact-match is stricter than token accuracy (one wrong token makes the whole answer wrong): on "
                 f"the test set greedy decoding got {greedy['token_accuracy']:.2%} of tokens "
                 f"{'but only' if stricter else 'and'} {greedy['exact_match']:.2%} of whole answers right; "
                 f"the weakest answer position (of those with 50+ answers) scored {weakest:.2%}.")
    items.append(f"One teacher-forced pass gave exact-match {decoded['cheap_exact_match']:.4f}, greedy decoding "
                 f"{greedy['exact_match']:.4f}: " + ("the same, so validation can skip the slow decoding loop."
                                                    if decoded['cheap_exact_match'] == greedy['exact_match']
                                                    else "not the same (unexpected: investigate)."))
    if beam is not None:
        delta = beam["exact_match"] - greedy["exact_match"]
        items.append(f"Beam search (size {beam_size}) scored {beam['exact_match']:.2%} exact-match against "
                     f"greedy's "
                     f"{greedy['exact_match']:.2%}" + (": no gain on this task." if abs(delta) < 1e-9 else
                                                        f" ({100 * delta:+.2f} percentage points)."))
    shares = attention["alignment_share"]
    if shares is not None:
        best = max(max(layer) for layer in shares)
        what = {"reverse": "the mirror input position", "copy": "the same input position",
                "sort": "an input holding the digit being written"}[config.task]
        verdict = ("the model learned where to look, as the attention plot shows" if best >= 0.9 else
                   "not a clean alignment yet (more training, or the model found another way)")
        items.append(f"The best cross-attention head points to {what} for {best:.1%} of answer positions: "
                     f"{verdict}.")
    if compare:
        parts = []
        for name, _, _ in COMPARE_VARIANTS:
            m = compare[name]["median_steps"]
            best = max(compare[name]["best_exact_match"])
            parts.append(f"{name}: {m:g} steps" if m else f"{name}: not reached (best {best:.3f})")
        items.append("Measured here, median steps to the target: " + "; ".join(parts) + ".")
    items.append(f"The checkpoint reloads with weights_only=True and predicts the same answers "
                 f"({reloaded_same} of 8 checked).")
    if lengths:
        items.extend(lengths["sentences"])
    return items


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    try:
        config, checkpoint = config_from_args(args)
        lengths = parse_eval_lengths(args.eval_lengths, config) if args.eval_lengths is not None else None
    except common.UserError as exc:
        common.fail(str(exc))
    device = common.setup(args, "Lesson 05: a mini encoder-decoder transformer, trained end to end")
    val, test = heldout_sets(config)
    data = (val, test)
    section_1_data(config, val, test)
    model_info = section_2_model(config, val, device)
    seeds = getattr(args, "compare_seeds", 1 if args.quick else 2)
    try:
        compare = section_3_compare(config, data, device, run=args.compare, seeds=seeds)
        result = section_4_train(config, data, device, checkpoint, args)
    except TrainingDiverged as exc:
        common.fail(str(exc))
    decoded = section_5_decode(config, result.model, test, args.beam_size, device)
    attention = section_6_attention(config, result.model, test, device, args.out_dir, args.show)
    reloaded_same = section_7_save(config, result, test, decoded, args.out_dir)
    by_length = None
    if lengths:                                                  # only with --eval-lengths
        by_length = section_8_length_generalization(
            config, result.model, lengths, trained_lengths(config, checkpoint), decoded["greedy"]["exact_match"],
            device, args.out_dir, args.show)
    write_metrics(os.path.join(args.out_dir, "metrics.json"), config, result, decoded, attention, compare,
                  args.beam_size, by_length)
    common.key_insights(insights(config, model_info, result, decoded, attention, compare, args.beam_size,
                                 reloaded_same, by_length))


if __name__ == "__main__":
    main()
