"""Lesson 05: a mini encoder-decoder transformer, trained end to end on a CPU in seconds.

What you will learn
  1. The task and the data: tokens, teacher forcing (the decoder reads the answer shifted right
     by one, BOS first), fresh training data and fixed held-out sets.
  2. The decoder block: masked self-attention, cross-attention to the encoder, feed-forward.
  3. A training loop written out: AdamW, warmup then cosine decay, gradient clipping, validation,
     early stopping. The best model is saved the moment it is found.
  4. Decoding: greedy and beam search, and a cache that skips recomputing the prefix.
  5. Evaluating on the test set: exact-match with its uncertainty, teacher-forced against
     free-running decoding, where the answers go wrong.
  6. What the trained attention does, measured against chance: for reversal, does answer position
     i look at input L-1-i?
  7. Loading the saved model back and predicting.

Run it
  python 05_mini_transformer.py                      # reverse 16 digits (about 10 s)
  python 05_mini_transformer.py --task sort          # also: copy, sum (--sum-order lsd)
  python 05_mini_transformer.py --min-len 4          # train and test on lengths 4..16
  python 05_mini_transformer.py --d-model 64 --heads 4 --layers 2   # a bigger model
  python 05_mini_transformer.py --resume mini_transformer.pt --target 1.0 --steps 800
  python 05_mini_transformer.py --eval-lengths 8,12,16,20,24   # then test lengths it never saw
  python 05_mini_transformer.py --quick              # a tiny version in a few seconds
  python 05_mini_transformer.py --help               # every flag
Writes to --out-dir: mini_transformer.pt (the best model, saved during training; an earlier one
is kept as mini_transformer.previous-N.pt), metrics.json, training_progress.png,
transformer_attention_patterns.png and attention_explorer.html (every attention map, for a
browser; --no-explorer skips it). Why pre-LN, why no embedding scale, why warmup: measured by
python -m challenges.ablations. The plumbing (flags, checks, checkpoints, bookkeeping, figures)
lives in lesson05_support.py: you do not need to read it to follow this lesson.

Shapes: B batch, T_src source length, T_tgt decoder length (answer + 1), d_model model width,
n_heads heads, d_head = d_model // n_heads, d_ff feed-forward width, V = vocab_size tokens.
Masks are boolean with True = may attend (as in lessons 01-04).
"""
import contextlib
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import lesson05_support as support
from common import load_lesson
from lesson05_plumbing import explorer
from lesson05_support import (  # noqa: F401  (re-exported: load_lesson(5).X keeps working)
    CHECKPOINT_NAME, CheckpointError, TrainingDiverged, TrainResult, estimated_parameters, load_checkpoint,
    output_len, read_checkpoint, save_checkpoint, sequence_keys, validate_config)

# Reused from earlier lessons (one source for each component; edit them there and this lesson
# trains your version): 01's causal mask, 02's multi-head attention (which computes with 01's
# scaled_dot_product_attention), 03's sinusoidal positions, 04's feed-forward and encoder stack.
causal_mask = load_lesson(1).causal_mask
MultiHeadAttention = load_lesson(2).MultiHeadAttention
PositionalEncoding = load_lesson(3).PositionalEncoding
FeedForward = load_lesson(4).FeedForward
TransformerEncoder = load_lesson(4).TransformerEncoder

# %% Knobs (edit these, or use the flags of the same name; --help lists them)
TASKS = ("reverse", "copy", "sort", "sum")
PAD, BOS, EOS = 0, 1, 2       # special tokens; digit d is token d + FIRST_DIGIT
FIRST_DIGIT = 3
VAL_SEED, TEST_SEED = 1_000_003, 2_000_003   # the held-out sets: the same for every training seed
# The other tasks' own step limits (training stops earlier at --target); reverse uses TrainConfig's.
TASK_DEFAULTS = {"copy": {"steps": 300}, "sort": {"steps": 1500, "eval_every": 50},
                 "sum": {"steps": 1500, "eval_every": 50}}


@dataclass
class TrainConfig:
    """Every hyperparameter of a run. `train(TrainConfig(...))` reproduces the run exactly."""
    task: str = "reverse"        # reverse | copy | sort | sum (the answer: the digits of the sum)
    seq_len: int = 16            # longest input sequence (digits)
    min_len: int = 0             # shortest input sequence; 0 means seq_len (all the same length)
    n_digits: int = 10           # digits 0 .. n_digits-1 (the sum is written in base n_digits)
    sum_order: str = "msd"       # sum: most significant digit first (msd) or least (lsd)
    d_model: int = 32            # width of every token vector
    n_heads: int = 2             # attention heads per attention layer
    n_layers: int = 1            # encoder blocks, and as many decoder blocks
    d_ff: int = 128              # hidden width of the feed-forward
    dropout: float = 0.0         # fresh data every step: nothing to overfit, so no dropout
    norm_first: bool = True      # pre-LN (True) or the paper's post-LN (False)
    embed_scale: bool = False    # multiply embeddings by sqrt(d_model), as the paper does
    max_len: int = 64            # positions in the positional-encoding table
    steps: int = 600             # maximum optimizer steps (copy, sort, sum: see TASK_DEFAULTS)
    batch_size: int = 64         # sequences per step
    lr: float = 5e-3             # peak learning rate of AdamW
    weight_decay: float = 0.01   # AdamW's decoupled weight decay
    warmup: int = 40             # steps of linear warmup from 0 to lr
    schedule: str = "cosine"     # after warmup: cosine | linear | constant
    grad_clip: float = 1.0       # clip the gradient norm to this (0 = off)
    label_smoothing: float = 0.0  # share of each target's probability spread over all tokens
    eval_every: int = 10         # validate every this many steps (sort, sum: see TASK_DEFAULTS)
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


# %% 1. The task and the data
def vocab_size(n_digits: int) -> int:
    return n_digits + FIRST_DIGIT


def sample_inputs(n, seq_len, min_len, n_digits, generator):
    """n random digit sequences as tokens, (n, seq_len), lengths in [min_len, seq_len], PAD after."""
    digits = torch.randint(0, n_digits, (n, seq_len), generator=generator)
    lengths = torch.randint(min_len, seq_len + 1, (n,), generator=generator)
    keep = torch.arange(seq_len) < lengths[:, None]                  # (n, seq_len)
    return torch.where(keep, digits + FIRST_DIGIT, PAD)


def reverse_digits(tokens):
    """Each row's digits in reverse order, PAD kept at the end: 3 1 4 . . -> 4 1 3 . ."""
    keep = tokens != PAD                                             # (B, T)
    lengths = keep.sum(1, keepdim=True)                              # (B, 1)
    index = (lengths - 1 - torch.arange(tokens.size(1))).clamp(min=0)  # out[i] = in[L - 1 - i]
    return torch.where(keep, tokens.gather(1, index), PAD)


def task_outputs(src, task, n_digits, sum_order="msd"):
    """The answer for each input row, as tokens (B, T_out) with PAD after its end (no EOS yet)."""
    keep = src != PAD                                                # (B, T_src)
    if task == "copy":
        return src.clone()
    if task == "reverse":
        return reverse_digits(src)
    if task == "sort":
        ordered = torch.where(keep, src, vocab_size(n_digits)).sort(dim=1).values  # PAD sorts last
        return torch.where(keep, ordered, PAD)
    if task == "sum":
        total = torch.where(keep, src - FIRST_DIGIT, 0).sum(1)       # (B,)
        D = output_len("sum", src.size(1), n_digits)                  # digits of the largest sum
        lsd_first = (total[:, None] // n_digits ** torch.arange(D)) % n_digits   # (B, D) units first
        n_out = 1 + sum((total >= n_digits ** k).long() for k in range(1, D))    # digits of each sum
        answer = torch.where(torch.arange(D) < n_out[:, None], lsd_first + FIRST_DIGIT, PAD)
        return answer if sum_order == "lsd" else reverse_digits(answer)
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def teacher_forcing_pair(out):
    """From answers (B, T_out) build the decoder's input and its expected output, both (B, T_out + 1).

    tgt_in  = BOS y1 y2 ... yn PAD ...   what the decoder reads (the answer shifted right by one)
    tgt_out = y1  y2 ... yn EOS PAD ...  what it must predict at each position
    Position i reads y1..yi and predicts y(i+1): it never sees the token it must predict.
    """
    B = out.size(0)
    lengths = (out != PAD).sum(1)                                     # (B,)
    tgt_out = F.pad(out, (0, 1), value=PAD)                           # (B, T_out + 1)
    tgt_out[torch.arange(B), lengths] = EOS
    tgt_in = F.pad(out, (1, 0), value=BOS)                            # (B, T_out + 1)
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


def make_batch(src, config: TrainConfig) -> Batch:
    answer = task_outputs(src, config.task, config.n_digits, config.sum_order)
    return Batch(src, *teacher_forcing_pair(answer))


def heldout_sets(config: TrainConfig):
    """The fixed validation and test sets (a Batch each), drawn from their own seeds: no input twice,
    none in both. With few possible inputs each is capped at a tenth of them, so most remain for
    training."""
    cap = max(1, support.possible_inputs(config) // 10)
    val = support.draw_distinct(min(config.val_size, cap), config, VAL_SEED)
    test = support.draw_distinct(min(config.test_size, cap), config, TEST_SEED, exclude=val)
    return make_batch(val, config), make_batch(test, config)


class TrainingData:
    """A fresh random batch for every step, never equal to a held-out input (those are dropped
    and replaced; `removed` counts them)."""

    def __init__(self, config: TrainConfig, heldout_src, seed: int):
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.heldout = support.HeldOut(heldout_src, config.n_digits)

    def next_batch(self) -> Batch:
        c, kept, need = self.config, [], self.config.batch_size
        while need > 0:
            src = sample_inputs(c.batch_size, c.seq_len, c.resolved_min_len(), c.n_digits, self.generator)
            kept.append(src[self.heldout.fresh(src)][:need])          # drop held-out inputs
            need -= kept[-1].size(0)
        return make_batch(torch.cat(kept), c)

    @property
    def removed(self):
        return self.heldout.removed


def section_1_data(config: TrainConfig, val: Batch, test: Batch):
    common.section(1, f"The task and the data: {support.TASK_TEXT[config.task]}")
    V = vocab_size(config.n_digits)
    common.explain(f"""Every sequence is made of tokens: {V} in all, the {config.n_digits} digits plus
        three special tokens. PAD fills the end of shorter sequences, BOS ("begin") is the first
        thing the decoder reads, EOS ("end") is what it writes when the answer is complete.""")
    common.table([[PAD, "PAD", "padding (no loss, never attended to)"], [BOS, "BOS", "start of the answer"],
                  [EOS, "EOS", "end of the answer"],
                  [f"{FIRST_DIGIT}..{V - 1}", f"0..{config.n_digits - 1}", "the digits"]],
                 ["token id", "shown as", "meaning"])
    src, tgt_in, tgt_out = test.src[0], test.tgt_in[0], test.tgt_out[0]
    print(f"\n  one test example ({int((src != PAD).sum())} digits):")
    print(f"    encoder input  src     : {support.show_tokens(src)}")
    print(f"    decoder input  tgt_in  : {support.show_tokens(tgt_in)}")
    print(f"    decoder target tgt_out : {support.show_tokens(tgt_out)}\n")
    common.explain("""Teacher forcing. During training the decoder reads the correct answer shifted
        right by one (tgt_in starts with BOS) and predicts, at every position at once, the next
        token (tgt_out ends with EOS). Position i reads BOS and the first i answer tokens, and its
        causal mask hides everything after them, so it never sees the token it has to predict: the
        answer is not leaking into the input. At prediction time there is no answer to read: the
        decoder starts from BOS alone and feeds its own outputs back in, one token at a time, until
        it writes EOS (section 4).""")
    lengths = (val.src != PAD).sum(1)
    if int(lengths.min()) < config.seq_len:
        row = val.src[int(lengths.argmin())]
        support.say(f"lengths vary from {config.resolved_min_len()} to {config.seq_len}; shorter inputs end in "
                    "PAD, which the padding mask (True = may attend) hides from every query:")
        print(f"    src  : {support.show_tokens(row, keep_pad=True)}")
        print(f"    mask : {' '.join('1' if t != PAD else '0' for t in row.tolist())}\n")
    common.explain(f"""Data. A new batch of {config.batch_size} sequences is drawn at every step from a
        generator seeded with --seed {config.seed}; there is no fixed training set. The validation
        set ({len(val)} sequences) and the test set ({len(test)}) are fixed by seeds of their own,
        and a training sequence equal to one of them is dropped before the model sees it (of
        {support.count_text(support.possible_inputs(config))} possible inputs; section 3 counts the
        drops).""")


# %% 2. The model: lesson 04's encoder, a decoder, an output layer
def padding_mask(tokens):
    """(B, 1, T) boolean, True = may attend: every query may look at every key that is not PAD.
    None when nothing is padded (then no mask is needed at all)."""
    return (tokens != PAD).unsqueeze(1) if bool((tokens == PAD).any()) else None


def decoder_mask(tgt_in):
    """The decoder's self-attention mask, (T_tgt, T_tgt), True = may attend: causal only (lesson 01).
    No padding mask: PAD in tgt_in comes after the answer, so a real position never sees one; the
    PAD positions themselves compute junk that the loss ignores."""
    return causal_mask(tgt_in.size(1), device=tgt_in.device)


class TransformerDecoderBlock(nn.Module):
    """Masked self-attention, cross-attention to the encoder, feed-forward; each with a residual.

    Compared with lesson 04's encoder block:
      NEW self-attention is causal: answer position i may attend to answer positions 0..i only;
      NEW cross-attention: queries from the decoder, keys and values from the encoder output
          ("memory"), so every answer position can look at every input position.
    pre-LN (norm_first=True):  x = x + sublayer(norm(x))
    post-LN (the paper):       x = norm(x + sublayer(x))
    forward(x (B, T_tgt, d_model), memory (B, T_src, d_model), self_mask, memory_mask)
      -> (B, T_tgt, d_model); with return_weights=True -> (x, self weights, cross weights).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)   # lesson 02
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)  # lesson 02, NEW use
        self.feed_forward = FeedForward(d_model, d_ff, dropout=dropout)          # lesson 04
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, x, memory, self_mask=None, memory_mask=None, return_weights: bool = False):
        def self_attend(h):    # queries, keys and values from the decoder, causally masked
            out, w = self.self_attn(h, h, h, mask=self_mask, need_weights=return_weights)
            return self.dropout1(out), w

        def cross_attend(h):   # queries from the decoder (T_tgt), keys and values from memory (T_src)
            out, w = self.cross_attn(h, memory, memory, mask=memory_mask, need_weights=return_weights)
            return self.dropout2(out), w

        if self.norm_first:
            attended, self_w = self_attend(self.norm1(x))
            x = x + attended                                              # (B, T_tgt, d_model)
            attended, cross_w = cross_attend(self.norm2(x))
            x = x + attended
            x = x + self.dropout3(self.feed_forward(self.norm3(x)))
        else:
            attended, self_w = self_attend(x)
            x = self.norm1(x + attended)
            attended, cross_w = cross_attend(x)
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

    def forward(self, x, memory, self_mask=None, memory_mask=None, return_weights=False):
        self_ws, cross_ws = [], []
        for layer in self.layers:
            if return_weights:
                x, self_w, cross_w = layer(x, memory, self_mask, memory_mask, return_weights=True)
                self_ws.append(self_w)
                cross_ws.append(cross_w)
            else:
                x = layer(x, memory, self_mask, memory_mask)
        x = self.norm(x)
        return (x, self_ws, cross_ws) if return_weights else x


class Seq2SeqTransformer(nn.Module):
    """Embedding + positions -> encoder (lesson 04); embedding + positions -> decoder -> logits.

    Seq2SeqTransformer(**config) with the keys of TrainConfig.model_config(); `.config` keeps that
    plain dict (it is saved in the checkpoint). One embedding table serves both sides (the same
    digits); a linear layer turns each decoder vector into vocab_size scores.
    forward(src (B, T_src), tgt_in (B, T_tgt)) -> logits (B, T_tgt, vocab_size).
    """

    def __init__(self, task="reverse", n_digits=10, d_model=32, n_heads=2, n_layers=1, d_ff=128,
                 dropout=0.0, norm_first=True, embed_scale=False, max_len=64):
        super().__init__()
        self.config = dict(task=task, n_digits=n_digits, d_model=d_model, n_heads=n_heads,
                           n_layers=n_layers, d_ff=d_ff, dropout=dropout, norm_first=norm_first,
                           embed_scale=embed_scale, max_len=max_len)
        self.vocab_size, self.max_len = vocab_size(n_digits), max_len
        self.embed = nn.Embedding(self.vocab_size, d_model)              # initialised N(0, 1)
        # The paper multiplies embeddings by sqrt(d_model). That assumes embeddings initialised
        # N(0, 1/d_model): scaled, a token vector is then about as long as a positional encoding.
        # (With PyTorch's N(0, 1) the tokens would drown the positions; section 2 prints the lengths.)
        self.scale = math.sqrt(d_model) if embed_scale else 1.0
        if embed_scale:
            nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        self.positions = PositionalEncoding(d_model, max_len=max_len, dropout=dropout)       # lesson 03
        self.encoder = TransformerEncoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first)  # lesson 04
        self.decoder = TransformerDecoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first)
        self.out = nn.Linear(d_model, self.vocab_size)

    def embed_tokens(self, tokens):
        return self.positions(self.embed(tokens) * self.scale)            # (B, T, d_model)

    def encode(self, src, return_weights=False):
        """src (B, T_src) -> (memory (B, T_src, d_model), src_mask (B, 1, T_src) or None);
        with return_weights=True -> (memory, weights of each layer, src_mask)."""
        src_mask = padding_mask(src)
        result = self.encoder(self.embed_tokens(src), src_mask, return_weights=return_weights)
        return (*result, src_mask) if return_weights else (result, src_mask)

    def decode(self, tgt_in, memory, src_mask, return_weights=False):
        """tgt_in (B, T_tgt) -> logits (B, T_tgt, vocab_size), attending to memory."""
        result = self.decoder(self.embed_tokens(tgt_in), memory, decoder_mask(tgt_in), src_mask, return_weights)
        if return_weights:
            x, self_ws, cross_ws = result
            return self.out(x), self_ws, cross_ws
        return self.out(result)                                           # (B, T_tgt, vocab_size)

    def forward(self, src, tgt_in):
        memory, src_mask = self.encode(src)                               # (B, T_src, d_model)
        return self.decode(tgt_in, memory, src_mask)                      # (B, T_tgt, vocab_size)

    def attention_weights(self, src, tgt_in):
        """Every attention map for one batch (use eval mode): lists with one entry per layer."""
        memory, enc_ws, src_mask = self.encode(src, return_weights=True)
        logits, self_ws, cross_ws = self.decode(tgt_in, memory, src_mask, return_weights=True)
        return {"encoder_self": enc_ws, "decoder_self": self_ws, "cross": cross_ws, "logits": logits}


def section_2_model(config: TrainConfig, val: Batch, device):
    common.section(2, "The model: encoder (lesson 04) + decoder (new here) + output layer")
    print("  reused through common.load_lesson: causal_mask (01), MultiHeadAttention (02, computing with")
    print("  01's scaled_dot_product_attention), PositionalEncoding (03), FeedForward and TransformerEncoder (04)")
    common.explain("""The encoder is lesson 04's stack: every input position looks at every other
        one, then passes through the feed-forward. The decoder block adds two things: its
        self-attention is masked (answer position i sees positions 0..i only), and a second
        attention, cross-attention, takes its queries from the decoder and its keys and values from
        the encoder output. That is where the answer looks at the input. A linear layer turns each
        decoder vector into one score per token.""")
    torch.manual_seed(config.seed)
    model = Seq2SeqTransformer(**config.model_config()).to(device).eval()
    count = support.count_parameters
    common.table([["token embedding (shared)", count(model.embed)],
                  [f"encoder: {config.n_layers} block(s) + final norm", count(model.encoder)],
                  [f"decoder: {config.n_layers} block(s) + final norm", count(model.decoder)],
                  ["output layer", count(model.out)], ["total", count(model)]], ["part", "parameters"])
    batch = Batch(val.src[:4], val.tgt_in[:4], val.tgt_out[:4]).to(device)
    with torch.no_grad():
        memory, src_mask = model.encode(batch.src)
        logits = model.decode(batch.tgt_in, memory, src_mask)
        # Causality, measured: change the decoder inputs from position k on; earlier outputs must not move.
        k = batch.tgt_in.size(1) // 2
        changed = batch.tgt_in.clone()
        changed[:, k:] = FIRST_DIGIT + (changed[:, k:] - FIRST_DIGIT + 1) % config.n_digits
        moved = (model.decode(changed, memory, src_mask) - logits).abs()  # (4, T_tgt, V)
        token_norm = float((model.embed.weight * model.scale).norm(dim=1).mean())   # a token vector's length
        pe_norm = float(model.positions.pe[:config.seq_len].norm(dim=1).mean())

    print(f"\n  shapes for B=4: src {tuple(batch.src.shape)} -> memory {tuple(memory.shape)}; "
          f"tgt_in {tuple(batch.tgt_in.shape)} -> logits {tuple(logits.shape)}")
    before, after = float(moved[:, :k].max()), float(moved[:, k:].max())
    support.say(f"causality: decoder inputs changed from position {k} on; the outputs at positions 0..{k - 1} "
                f"moved by {before:.3g}, those from {k} on by {after:.3g}")
    # A vector of d_model N(0, 1) entries has length about sqrt(d_model); times sqrt(d_model): d_model.
    support.say(f"average vector length: token embedding {token_norm:.2f}, positional encoding {pe_norm:.2f} added "
                f"to it. PyTorch's N(0, 1) embeddings times sqrt(d_model) would be about d_model = {config.d_model}, "
                f"{config.d_model / pe_norm:.1f} times the positions: that is why --embed-scale also starts the "
                "embeddings at N(0, 1/d_model), as the paper's scaling assumes")
    return {"parameters": count(model), "causal_change_before": before, "causal_change_after": after}


# %% 3. Training: AdamW, warmup and cosine decay, clipping, validation, early stopping
def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then the schedule."""
    if config.warmup > 0 and step <= config.warmup:
        return config.lr * step / config.warmup                           # lr * step / warmup
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
        g = torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(n)
                       for p, n in zip(self.params, self.sizes)])
        norm = torch.linalg.vector_norm(g)
        if grad_clip > 0:
            g = g * (grad_clip / (norm + 1e-6)).clamp(max=1.0)
        beta1, beta2 = self.betas
        self.t += 1
        self.m.mul_(beta1).add_(g, alpha=1 - beta1)
        self.v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        update = (self.m / (1 - beta1 ** self.t)) / ((self.v / (1 - beta2 ** self.t)).sqrt() + self.eps)
        for p, u in zip(self.params, update.split(self.sizes)):
            p.mul_(1 - self.lr * self.weight_decay)
            p.add_(u.view_as(p), alpha=-self.lr)
        return norm

    def state_dict(self):
        return {"t": self.t, "m": self.m.detach().cpu().clone(), "v": self.v.detach().cpu().clone()}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])


def restrict_logits(logits):
    """The model never needs to produce PAD or BOS: rule them out (in evaluation and decoding)."""
    logits = logits.clone()
    logits[..., [PAD, BOS]] = float("-inf")
    return logits


@torch.no_grad()
def evaluate_teacher_forced(model, data: Batch, chunk=1000):
    """Loss, token accuracy and exact-match from teacher-forced passes (no decoding loop).

    Exact-match this way equals greedy decoding's: greedy reproduces the whole answer iff the
    argmax is right at every position given the correct prefix (by induction over the prefix;
    compared with greedy_decode in section 5 and in the tests).
    """
    was_training, (loss, right, n_tokens, exact) = model.training, (0.0, 0, 0, 0)
    model.eval()
    for start in range(0, len(data), chunk):
        src, tgt_in, tgt_out = (t[start:start + chunk] for t in (data.src, data.tgt_in, data.tgt_out))
        logits = model(src, tgt_in)                                       # (B, T_tgt, V)
        loss += float(F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD, reduction="sum"))
        target = tgt_out != PAD
        correct = (restrict_logits(logits).argmax(-1) == tgt_out) & target  # (B, T_tgt)
        right, n_tokens = right + int(correct.sum()), n_tokens + int(target.sum())
        exact += int((correct | ~target).all(dim=1).sum())
    model.train(was_training)
    return {"loss": loss / n_tokens, "token_accuracy": right / n_tokens, "exact_match": exact / len(data)}


def train(config: TrainConfig, device="cpu", quiet=False, resume=None, data=None, model=None,
          checkpoint_path=None, callback=None, print_every=50) -> TrainResult:
    """Train a Seq2SeqTransformer on config.task; returns a TrainResult with the best model.

    resume: a checkpoint dict to continue from. data: (val, test) Batches, else heldout_sets(config).
    model: train this model instead of a new one (the challenges use it). checkpoint_path: keep the
    best model saved there (atomically) whenever it improves. callback(step, metrics) runs after
    each validation. The bookkeeping (history, timing, progress bar, resume, Ctrl-C, saving) is
    support.TrainingRun. Ctrl-C ends training and returns the best model so far; a NaN or
    infinite loss raises TrainingDiverged.
    """
    torch.manual_seed(config.seed)
    val, test = data if data is not None else heldout_sets(config)
    model = (model or Seq2SeqTransformer(**config.model_config())).to(device)
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = support.TrainingRun(config, model, optimizer, resume, quiet, checkpoint_path, callback, print_every)
    stream = TrainingData(config, [val.src, test.src], seed=run.data_seed)
    val = val.to(device)

    def validate():
        metrics = evaluate_teacher_forced(model, val)
        run.record_validation(metrics)                     # history; keeps (and saves) the best model
        if metrics["exact_match"] >= config.target:
            run.stop("target reached")
        elif config.patience and run.validations_since_best >= config.patience:
            run.stop("patience")

    with run:                                              # Ctrl-C in here ends training cleanly
        validate()                                         # the starting point is plotted too
        while not run.stopped and run.step < config.steps:
            step = run.start_step()                        # step + 1; the clock runs
            optimizer.lr = learning_rate(step, config)
            batch = stream.next_batch().to(device)
            model.train()
            logits = model(batch.src, batch.tgt_in)                       # (B, T_tgt, vocab_size)
            # cross-entropy over every answer position; PAD positions (after EOS) are ignored
            loss = F.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD,
                                   label_smoothing=config.label_smoothing)
            run.check_finite(loss)                         # NaN or inf -> TrainingDiverged
            optimizer.zero_grad()
            loss.backward()
            optimizer.step(grad_clip=config.grad_clip)     # clip the gradient norm, then update
            run.end_step(loss, logits, batch.tgt_out)      # the clock stops; history, progress bar
            if step % config.eval_every == 0 or step == config.steps:
                validate()
    return run.result(heldout_removed=stream.removed)


def section_3_train(config: TrainConfig, data, device, resume, args):
    common.section(3, "Training: AdamW, warmup and cosine decay, gradient clipping, validation, early stopping")
    patience = f"after {config.patience} validations without a new best, " if config.patience else ""
    clip = (f"scale the gradient down if its norm exceeds {config.grad_clip:g} (clipping)" if config.grad_clip
            else "leave the gradient as it is (clipping is off)")
    warmup = (f"rises linearly for {config.warmup} steps to {config.lr:g} (warmup keeps the first updates "
              "small while AdamW's running averages rest on few batches), then follows" if config.warmup
              else f"starts at {config.lr:g} (no warmup) and follows")
    common.explain(f"""Each step: draw a fresh batch, run the model with teacher forcing, take the
        cross-entropy of the {vocab_size(config.n_digits)}-way prediction at every answer position
        (PAD ignored), backpropagate, {clip}, and let AdamW update the weights. The learning rate
        {warmup} the {config.schedule} schedule over {config.steps} steps. Whether this task needs
        warmup or clipping is measured by python -m challenges.ablations. Every {config.eval_every} steps the
        validation set is scored; training stops when its exact-match reaches {config.target:.0%},
        {patience}or at the last step. The best model is saved to {CHECKPOINT_NAME} whenever it
        improves; Ctrl-C stops training and keeps it.""")
    result = train(config, device, resume=resume, data=data, checkpoint_path=args.out_dir / CHECKPOINT_NAME)
    support.report_training(config, result, resume)
    return result


# %% 4. Decoding: greedy and beam search
def next_token_logits(model, ys, memory, src_mask, cache=None):
    """(B, vocab_size) scores for the token after the prefix ys (B, t). Simplest: run the decoder
    on the whole prefix again. With a PrefixCache (section 4b) only the newest position runs."""
    if cache is not None:
        return cache.next_logits(ys, memory, src_mask)
    return model.decode(ys, memory, src_mask)[:, -1]                      # last position: next token


@torch.no_grad()
def greedy_decode(model, src, max_len, cache=False):
    """Batched greedy decoding: at each step append the single most likely next token.

    src (B, T_src) tokens; max_len = most tokens to generate (answer + EOS). cache=True uses a
    PrefixCache (same tokens, faster). Returns (B, L) tokens, L <= max_len: each row's answer,
    then EOS, then PAD. Stops once every row has produced EOS. The model is used in eval mode.
    """
    was_training = model.training
    model.eval()
    memory, src_mask = model.encode(src)
    ys = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)   # every answer starts with BOS
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    with PrefixCache(model) if cache else contextlib.nullcontext() as prefix:
        for _ in range(max_len):
            next_token = restrict_logits(next_token_logits(model, ys, memory, src_mask, prefix)).argmax(-1)
            next_token = torch.where(done, PAD, next_token)               # (B,) finished rows only pad
            ys = torch.cat([ys, next_token[:, None]], dim=1)              # (B, t + 1)
            done |= next_token == EOS
            if bool(done.all()):
                break
    model.train(was_training)
    return ys[:, 1:]


@torch.no_grad()
def beam_search(model, src, beam_size, max_len, length_penalty=0.0, cache=False):
    """Batched beam search: keep the beam_size most likely partial answers at every step.

    src (B, T_src); beam_size K >= 1; max_len = most tokens to generate (answer + EOS). A
    hypothesis that produced EOS is finished: its score is frozen (its only continuation is PAD at
    log-probability 0) and it competes with the unfinished ones. Score = summed log-probabilities;
    the best is chosen by score / length**length_penalty (0: plain log-probability).
    Returns (tokens (B, L), L <= max_len: answer, EOS, PAD ...; scores (B,)). K = 1 equals greedy.
    """
    was_training, (B, K) = model.training, (src.size(0), beam_size)
    model.eval()
    memory, src_mask = model.encode(src)
    memory = memory.repeat_interleave(K, dim=0)                           # (B*K, T_src, d_model)
    src_mask = src_mask.repeat_interleave(K, dim=0) if src_mask is not None else None
    V, device = model.vocab_size, src.device
    seqs = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)             # only beam 0 starts alive, or
    scores[:, 0] = 0.0                                                    # the first step picks K copies
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, device=device)                            # tokens up to and incl. EOS
    after_eos = torch.full((V,), float("-inf"), device=device)
    after_eos[PAD] = 0.0                                                  # a finished beam only pads
    with PrefixCache(model) if cache else contextlib.nullcontext() as prefix:
        for _ in range(max_len):
            log_probs = F.log_softmax(next_token_logits(model, seqs, memory, src_mask, prefix), dim=-1)
            log_probs = restrict_logits(log_probs).view(B, K, V)         # (B, K, V)
            log_probs = torch.where(finished[..., None], after_eos, log_probs)
            scores, flat = (scores[..., None] + log_probs).view(B, K * V).topk(K, dim=1)  # (B, K) best
            beam, token = flat // V, flat % V                             # which beam, which token
            rows = (torch.arange(B, device=device)[:, None] * K + beam).view(-1)  # (B*K,) rows kept
            seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)      # (B*K, t + 1)
            if prefix is not None:
                prefix.keep(rows)                                         # the kept beams' history
            was_finished = finished.gather(1, beam)
            lengths = lengths.gather(1, beam) + (~was_finished).float()
            finished = was_finished | (token == EOS)
            if bool(finished.all()):
                break
    ranking = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = ranking.argmax(dim=1)                                          # (B,)
    model.train(was_training)
    return seqs.view(B, K, -1)[torch.arange(B), best, 1:], scores[torch.arange(B), best]


# %% 4b. Incremental decoding: a cache of the prefix
class CachedSelfAttention(nn.Module):
    """A decoder block's self-attention while decoding one position at a time.

    The causal mask means earlier positions never change when a token is appended, so nothing
    about them needs recomputing. This wrapper remembers what the self-attention received at the
    earlier positions (its keys and values input, `past`), and lets the newest position attend to
    all of them; every other part of the block runs on the newest position only.
    (A "KV cache" stores the projected keys and values instead, saving W_k and W_v as well.)
    """

    def __init__(self, attention):
        super().__init__()
        self.attention, self.past = attention, None

    def forward(self, query, key, value, mask=None, need_weights=False):
        self.past = key if self.past is None else torch.cat([self.past, key], dim=1)  # (B, t + 1, d_model)
        # no mask: every remembered position is in the past of the newest one
        return self.attention(query, self.past, self.past, need_weights=need_weights)


class PrefixCache:
    """`with PrefixCache(model) as cache:` wraps each decoder block's self-attention in a
    CachedSelfAttention (and unwraps it afterwards). Then cache.next_logits(ys, ...) runs only the
    newest token through the decoder: the same scores as model.decode(ys, ...)[:, -1]."""

    def __init__(self, model):
        self.model, self.blocks = model, list(model.decoder.layers)

    def __enter__(self):
        for block in self.blocks:
            block.self_attn = CachedSelfAttention(block.self_attn)
        return self

    def __exit__(self, *exc):
        for block in self.blocks:
            block.self_attn = block.self_attn.attention

    def next_logits(self, ys, memory, src_mask):
        x = self.model.embed_tokens(ys)[:, -1:]              # newest token with its position (B, 1, d_model)
        return self.model.out(self.model.decoder(x, memory, None, src_mask))[:, -1]   # (B, V)

    def keep(self, rows):
        """Beam search reorders its hypotheses: keep the remembered rows `rows`, in that order."""
        for block in self.blocks:
            block.self_attn.past = block.self_attn.past[rows]


def section_4_decoding(config: TrainConfig, model, test: Batch, device):
    common.section(4, "Decoding: greedy, a cache of the prefix, beam search")
    max_out = output_len(config.task, config.seq_len, config.n_digits) + 1
    common.explain(f"""Greedy decoding starts from BOS, appends the single most likely next token,
        feeds the longer answer back in, and stops at EOS (or after {max_out} tokens). Done
        plainly, every step runs the decoder over the whole prefix again. But the causal mask
        means a position never changes once written, so a cache can keep what the decoder's
        self-attention saw at the earlier positions and run only the newest one (section 4b of
        the code). Beam search keeps the K most likely partial answers instead of one.""")
    src = test.src[:200].to(device)
    seconds, tokens = {False: [], True: []}, {}
    for _ in range(3):                                   # alternating, 3 times each: the median
        for cache in (False, True):
            start = time.perf_counter()
            tokens[cache] = greedy_decode(model, src, max_out, cache=cache)
            seconds[cache].append(time.perf_counter() - start)
    same = int((tokens[False] == tokens[True]).all(dim=1).sum())
    found = {"recompute_seconds": statistics.median(seconds[False]), "cached_seconds": statistics.median(seconds[True]),
             "identical": same, "decoded": len(src), "max_tokens": max_out}
    support.report_cache(found)
    return found


# %% 5. Evaluating on the test set
def decode(model, src, max_len, beam_size=1, length_penalty=0.0):
    """Greedy (beam_size 1) or beam search with the cache, in chunks of 1000. Returns (B, L) tokens."""
    pieces = [greedy_decode(model, part, max_len, cache=True) if beam_size == 1 else
              beam_search(model, part, beam_size, max_len, length_penalty, cache=True)[0]
              for part in src.split(1000)]
    L = max(p.size(1) for p in pieces)
    return torch.cat([F.pad(p, (0, L - p.size(1)), value=PAD) for p in pieces])


def section_5_evaluate(config: TrainConfig, model, test: Batch, args, device):
    common.section(5, "Evaluating on the test set: greedy and beam search, teacher-forced and free-running")
    max_out = output_len(config.task, config.seq_len, config.n_digits) + 1
    common.explain(f"""The test set ({len(test)} sequences) was never trained on and never used to
        pick the model. Exact-match counts whole answers; beside it, the 95% interval of the true
        accuracy that such a count does not rule out (Wilson). "Teacher-forced" scores
        each position given the correct prefix (what validation measured); "free-running" is
        greedy decoding, where every position reads the model's own earlier tokens.""")
    greedy = support.compare_decoded(decode(model, test.src.to(device), max_out).cpu(), test.tgt_out)
    forced = evaluate_teacher_forced(model, test.to(device))
    beam = None
    if args.beam_size > 1:
        beam_tokens = decode(model, test.src.to(device), max_out, args.beam_size, args.length_penalty).cpu()
        beam = support.compare_decoded(beam_tokens, test.tgt_out)
    found = support.report_test_set(config, test, greedy, forced, beam, args)
    lp = (sequence_log_prob(model, test.src.to(device), greedy["tokens"].to(device)).mean(),
          sequence_log_prob(model, test.src.to(device), beam["tokens"].to(device)).mean()) if beam else None
    if lp is not None:
        support.say(f"mean log-probability the model gives its answers: greedy {lp[0]:.4f}, beam {lp[1]:.4f}: beam "
                    "search looks for answers the model rates more likely, which are not always the right ones")
    support.report_where_wrong(config, test, greedy)
    return {"greedy": greedy, "teacher_forced": forced, "beam": beam, **found}


@torch.no_grad()
def sequence_log_prob(model, src, tokens):
    """Sum of log-probabilities the model gives to `tokens` (B, L) (answer + EOS + PAD; PAD counts 0).
    For comparing decoders: greedy, beam, exhaustive search."""
    was_training = model.training
    model.eval()
    tgt_in = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    log_probs = F.log_softmax(model(src, tgt_in), dim=-1)                 # (B, L, V)
    picked = log_probs.gather(2, tokens[..., None]).squeeze(2)            # (B, L)
    model.train(was_training)
    return torch.where(tokens == PAD, 0.0, picked).sum(1)


# %% 6. What the attention learned
def section_6_attention(config: TrainConfig, model, test: Batch, device, args):
    common.section(6, "What the attention learned (trained model, eval mode)")
    model.eval()
    with torch.no_grad():
        weights = model.attention_weights(test.src.to(device), test.tgt_in.to(device))
    weights = {k: [w.cpu() for w in v] for k, v in weights.items() if k != "logits"}
    common.explain("""Focus is the largest weight in a query row, averaged over real rows: 1 means
        one key gets everything, 1/L means the weight is spread evenly over L keys. Alignment is
        the share of answer positions whose strongest cross-attention weight falls on the input the
        task points to; chance is that share for a key picked at random.""")
    found = support.report_attention(config, weights, test)
    support.plot_attention(config, weights, test, found, args.out_dir, args.show)
    return found


# %% 7. Loading the saved model back, predicting
def predict(model, sequences, beam_size=1):
    """Answer digit sequences with a trained model: e.g. [[1, 2, 3]] -> [[3, 2, 1]] for reversal.

    sequences: a list of digit lists (digits 0..n_digits-1), for the task the model was trained on
    (model.config["task"]). beam_size 1 = greedy decoding. Returns a list of digit lists: each
    answer up to its EOS. ValueError (a clear message) for sequences the model cannot take.
    """
    task, n_digits = model.config["task"], model.config["n_digits"]
    support.check_sequences(sequences, model)
    if not sequences:
        return []
    T = max(len(s) for s in sequences)
    src = torch.full((len(sequences), T), PAD, dtype=torch.long)
    for i, digits in enumerate(sequences):
        src[i, :len(digits)] = torch.tensor([int(d) for d in digits]) + FIRST_DIGIT
    device = next(model.parameters()).device
    tokens = decode(model, src.to(device), output_len(task, T, n_digits) + 1, beam_size).cpu()
    return [support.tokens_to_digits(row) for row in tokens]


def section_7_reload(test: Batch, greedy_tokens, path):
    common.section(7, "Loading the saved model back, predicting")
    loaded = load_checkpoint(path)
    inputs = [support.tokens_to_digits(test.src[i]) for i in range(8)]
    answers = predict(loaded, inputs)
    same = sum(a == support.tokens_to_digits(b) for a, b in zip(answers, greedy_tokens[:8]))
    support.say(f"load_checkpoint({path.name!r}) reads it with torch.load(..., weights_only=True): plain "
                f"tensors and numbers only. predict() with it on 8 test inputs: {same} of 8 answers equal the "
                "in-memory model's")
    print(f"    predict(model, [{support.digits_text(inputs[0]).replace(' ', ', ')}]) -> {answers[0]}")
    return same


@common.entry_point
def main(argv=None):
    args = common.parse_args(support.build_parser(__doc__, TrainConfig, TASKS, TASK_DEFAULTS), argv)
    config, checkpoint = support.config_from_args(args, TrainConfig, TASK_DEFAULTS, Seq2SeqTransformer)
    device = common.setup(args, "Lesson 05: a mini encoder-decoder transformer, trained end to end")
    val, test = heldout_sets(config)
    section_1_data(config, val, test)
    model_info = section_2_model(config, val, device)
    support.keep_previous_outputs(args.out_dir, resumed_from=args.resume)
    result = section_3_train(config, (val, test), device, checkpoint, args)       # saves the best model as it goes
    metrics = support.Metrics(args.out_dir / "metrics.json", config, result)      # written now, then updated
    support.plot_training(config, result, learning_rate, args.out_dir, args.show)
    metrics.update(cache=section_4_decoding(config, result.model, test, device))
    evaluation = section_5_evaluate(config, result.model, test, args, device)
    metrics.update(test=evaluation)
    metrics.update(attention=section_6_attention(config, result.model, test, device, args))
    explorer.lesson_page(args, config, result.model, test, evaluation["greedy"]["tokens"])   # attention_explorer.html
    reloaded = section_7_reload(test, evaluation["greedy"]["tokens"], args.out_dir / CHECKPOINT_NAME)
    if args.eval_lengths:                        # thin call: challenges/length_generalization.py
        metrics.update(length_generalization=support.evaluate_lengths(args, config, result.model, device, checkpoint))
    metrics.update(complete=True)
    common.key_insights(support.insights(config, model_info, result, metrics.data, reloaded))


if __name__ == "__main__":
    main()
