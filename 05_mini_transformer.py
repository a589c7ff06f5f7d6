"""Lesson 05: a mini encoder-decoder transformer, trained end to end on a CPU in seconds.

What you will learn
  1. The task and the data: tokens, teacher forcing, fresh training data, fixed held-out sets.
  2. The decoder block: masked self-attention, cross-attention to the encoder, feed-forward.
  3. A training loop written out: AdamW, warmup then cosine decay, gradient clipping, validation,
     early stopping; the best model is saved the moment it is found.
  4. Decoding: greedy and beam search, and a cache that skips recomputing the prefix.
  5. The test set: exact-match with its uncertainty, teacher-forced against free-running decoding,
     where the answers go wrong.
  6. What the trained attention does, against chance: does answer position i look at input L-1-i?
  7. Loading the saved model back and predicting.

Run it: python 05_mini_transformer.py (reverse 16 digits, about 8 s); --task sort (copy, sum),
--d-model 64 --heads 4 --layers 2, --resume mini_transformer.pt --target 1.0 --steps 800, --quick;
--help lists every flag. Writes to --out-dir: mini_transformer.pt (the best model; an earlier one is
kept as mini_transformer.previous-N.pt), metrics.json, two PNGs and attention_explorer.html (every
attention map, for a browser; --no-explorer skips it). The plumbing is lesson05_plumbing/.

Shapes: B batch, T_src source length, T_tgt decoder length (answer + 1), d_model model width,
n_heads heads, d_head = d_model // n_heads, d_ff feed-forward width, V = vocab_size tokens.
Masks are boolean with True = may attend (as in lessons 01-04).
"""
import contextlib
import math
from dataclasses import dataclass

import common  # first: it checks $OMP_NUM_THREADS before torch reads it
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import claims, load_lesson
from lesson05_plumbing import explorer, figures, flags, reports, settings, text, training
from lesson05_plumbing.checkpoints import CHECKPOINT_NAME, keep_previous_outputs, load_checkpoint

# Reused from earlier lessons (one source for each component: edit them there and this lesson
# trains your version). Lesson 02's attention computes with lesson 01's scaled_dot_product_attention.
causal_mask = load_lesson(1).causal_mask
MultiHeadAttention = load_lesson(2).MultiHeadAttention
PositionalEncoding = load_lesson(3).PositionalEncoding
FeedForward = load_lesson(4).FeedForward
TransformerEncoder = load_lesson(4).TransformerEncoder

# %% Knobs (edit these, or use the flags of the same name; --help lists them; --quick overrides some)
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


def output_len(task: str, src_len: int, n_digits: int) -> int:
    """The longest answer (without EOS) for inputs of src_len digits; for a sum, the digits of the
    largest possible sum, (n_digits - 1) * src_len, in base n_digits."""
    largest, digits = (n_digits - 1) * src_len, 1
    while task == "sum" and largest >= n_digits:
        largest, digits = largest // n_digits, digits + 1
    return digits if task == "sum" else src_len


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
        D = output_len("sum", src.size(1), n_digits)                 # digits of the largest sum
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


def possible_inputs(config) -> int:
    """How many different inputs the config allows (an exact, possibly huge, integer)."""
    return sum(config.n_digits ** L for L in range(config.resolved_min_len(), config.seq_len + 1))


def draw_distinct(n, config, seed, exclude=None):
    """n different inputs (n, seq_len) from a generator seeded with `seed`, none a row of `exclude`."""
    generator = torch.Generator().manual_seed(seed)
    taken = set() if exclude is None else {tuple(row) for row in exclude.tolist()}
    rows = []
    while len(rows) < n:
        for row in sample_inputs(n, config.seq_len, config.resolved_min_len(), config.n_digits, generator).tolist():
            if tuple(row) not in taken and len(rows) < n:
                taken.add(tuple(row))
                rows.append(row)
    return torch.tensor(rows, dtype=torch.long).view(n, config.seq_len)


def heldout_sets(config: TrainConfig):
    """The fixed validation and test sets, from their own seeds: no input twice or in both, each at most
    a tenth of the possible inputs (so most remain for training)."""
    cap = max(1, possible_inputs(config) // 10)
    val = draw_distinct(min(config.val_size, cap), config, VAL_SEED)
    test = draw_distinct(min(config.test_size, cap), config, TEST_SEED, exclude=val)
    return make_batch(val, config), make_batch(test, config)


class TrainingData:
    """A fresh random batch for every step. "Never trained on" needs a rule when the data is drawn
    afresh: an input equal to a held-out one is dropped and replaced (`removed` counts them)."""

    def __init__(self, config: TrainConfig, heldout_src, seed: int):
        self.config, self.generator = config, torch.Generator().manual_seed(seed)
        self.heldout = {tuple(row) for src in heldout_src for row in src.tolist()}
        self.removed = 0

    def next_batch(self) -> Batch:
        c, kept, need = self.config, [], self.config.batch_size
        while need > 0:
            src = sample_inputs(c.batch_size, c.seq_len, c.resolved_min_len(), c.n_digits, self.generator)
            fresh = torch.tensor([tuple(row) not in self.heldout for row in src.tolist()])   # (batch_size,)
            self.removed += int((~fresh).sum())
            kept.append(src[fresh][:need])
            need -= kept[-1].size(0)
        return make_batch(torch.cat(kept), c)


def section_1_data(config: TrainConfig, val: Batch, test: Batch):
    common.section(1, f"The task and the data: {text.TASK_TEXT[config.task]}")
    common.explain(f"""Every sequence is made of tokens: the {config.n_digits} digits and three special
        ones. PAD fills the end of shorter sequences, BOS ("begin") is the first thing the decoder
        reads, EOS ("end") is what it writes when the answer is complete.""")
    reports.show_tokens_and_example(config, test)             # the token table, one test example
    answer = (val.tgt_out[:, :-1] != PAD) & (val.tgt_out[:, :-1] != EOS)       # (B, T_tgt - 1) answer digits
    misread = int((val.tgt_in[:, 1:] != val.tgt_out[:, :-1])[answer].sum()) + int((val.tgt_in[:, 0] != BOS).sum())
    shifted = claims.equal("teacher-forcing-shift", f"in all {len(val)} validation examples tgt_in is BOS, then "
                           "tgt_out shifted right by one: position i+1 reads the digit position i had to predict",
                           misread, 0, measured=f"{misread} positions read something else",
                           hint="teacher_forcing_pair builds tgt_in and tgt_out")
    common.explain("""Teacher forcing. In training the decoder reads the correct answer shifted right
        by one (tgt_in starts with BOS) and predicts the next token at every position at once
        (tgt_out ends with EOS). Position i reads BOS and the first i answer tokens; its causal mask
        hides the rest, so it never sees the token it must predict (section 2 measures that). To
        predict, the decoder starts from BOS alone and feeds its own outputs back in (section 4).""")
    shifted.say()
    reports.show_padding(config, val)                         # when lengths vary: a padded input, its mask
    common.explain(f"""Data. A new batch of {config.batch_size} sequences is drawn at every step (seeded
        by --seed {config.seed}): there is no fixed training set. The validation set ({len(val)}) and
        the test set ({len(test)}) have seeds of their own; a training input equal to one of them is
        dropped (of {text.count_text(possible_inputs(config))} possible inputs; section 3 counts them).""")
    return shifted


# %% 2. The model: lesson 04's encoder, a decoder, an output layer
def padding_mask(tokens):
    """(B, 1, T) boolean, True = may attend: every query may see every key that is not PAD (None: no PAD)."""
    return (tokens != PAD).unsqueeze(1) if bool((tokens == PAD).any()) else None


def decoder_mask(tgt_in):
    """(T_tgt, T_tgt), True = may attend: causal only (lesson 01). No padding mask: PAD comes after the
    answer, so no real position sees one; the PAD positions compute junk that the loss ignores."""
    return causal_mask(tgt_in.size(1), device=tgt_in.device)


class TransformerDecoderBlock(nn.Module):
    """Masked self-attention, cross-attention to the encoder, feed-forward; each with a residual.

    NEW (beside lesson 04's encoder block): the self-attention is causal (answer position i sees
    positions 0..i); cross-attention takes keys and values from the encoder output ("memory").
    pre-LN (norm_first=True): x = x + sublayer(norm(x));  post-LN (the paper): x = norm(x + sublayer(x)).
    forward(x (B, T_tgt, d_model), memory (B, T_src, d_model), self_mask, memory_mask) -> (B, T_tgt,
    d_model); with return_weights=True -> (x, self-attention weights, cross-attention weights).
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
    """n_layers decoder blocks, and a final LayerNorm when pre-LN (as lesson 04's encoder)."""

    def __init__(self, n_layers, d_model, n_heads, d_ff, dropout=0.0, norm_first=True):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderBlock(d_model, n_heads, d_ff, dropout, norm_first) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x, memory, self_mask=None, memory_mask=None, return_weights=False):
        self_ws, cross_ws = [], []
        for layer in self.layers:
            x = layer(x, memory, self_mask, memory_mask, return_weights)
            if return_weights:                        # (x, self-attention weights, cross-attention weights)
                x, self_w, cross_w = x
                self_ws.append(self_w)
                cross_ws.append(cross_w)
        x = self.norm(x)
        return (x, self_ws, cross_ws) if return_weights else x


class Seq2SeqTransformer(nn.Module):
    """Embedding + positions -> encoder (lesson 04); embedding + positions -> decoder -> logits (B, T_tgt, V).
    Built from TrainConfig.model_config() (kept as .config, saved in the checkpoint); one embedding table."""

    def __init__(self, task="reverse", n_digits=10, d_model=32, n_heads=2, n_layers=1, d_ff=128,
                 dropout=0.0, norm_first=True, embed_scale=False, max_len=64):
        super().__init__()
        self.config = dict(task=task, n_digits=n_digits, d_model=d_model, n_heads=n_heads,
                           n_layers=n_layers, d_ff=d_ff, dropout=dropout, norm_first=norm_first,
                           embed_scale=embed_scale, max_len=max_len)
        self.vocab_size, self.max_len = vocab_size(n_digits), max_len
        self.embed = nn.Embedding(self.vocab_size, d_model)              # initialised N(0, 1)
        # The paper multiplies embeddings by sqrt(d_model), which assumes them initialised N(0, 1/d_model):
        # then a token vector is about as long as a positional encoding (section 2 prints the lengths).
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
        x = self.decoder(self.embed_tokens(tgt_in), memory, decoder_mask(tgt_in), src_mask, return_weights)
        return (self.out(x[0]), *x[1:]) if return_weights else self.out(x)   # (B, T_tgt, vocab_size)

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
    common.explain("""Reused through common.load_lesson: causal_mask (01), MultiHeadAttention (02, with
        01's scaled_dot_product_attention), PositionalEncoding (03), FeedForward, TransformerEncoder
        (04). The decoder block adds two things to lesson 04's block: its self-attention is masked
        (answer position i sees positions 0..i), and cross-attention takes its keys and values from
        the encoder output: there the answer looks at the input. A linear layer gives the scores.""")
    torch.manual_seed(config.seed)
    model = Seq2SeqTransformer(**config.model_config()).to(device).eval()
    reports.parameter_table(model, config.n_layers)
    batch = Batch(val.src[:4], val.tgt_in[:4], val.tgt_out[:4]).to(device)
    with torch.no_grad():
        memory, src_mask = model.encode(batch.src)
        logits = model.decode(batch.tgt_in, memory, src_mask)
        # Causality, measured: change the decoder inputs from position k on; earlier outputs must not move.
        k = batch.tgt_in.size(1) // 2
        changed = batch.tgt_in.clone()
        changed[:, k:] = FIRST_DIGIT + (changed[:, k:] - FIRST_DIGIT + 1) % config.n_digits
        moved = (model.decode(changed, memory, src_mask) - logits).abs()  # (4, T_tgt, V)
        positions = model.embed_tokens(batch.src) - model.embed(batch.src) * model.scale  # what is added
        token_norm = float((model.embed.weight * model.scale).norm(dim=1).mean())   # a token vector's length
    print(f"\n  shapes for B=4: src {tuple(batch.src.shape)} -> memory {tuple(memory.shape)}; "
          f"tgt_in {tuple(batch.tgt_in.shape)} -> logits {tuple(logits.shape)}")
    before, after = float(moved[:, :k].max()), float(moved[:, k:].max())
    causal = claims.below("decoder-causal", f"the decoder is causal: with its inputs changed from position {k} "
                          f"on, the outputs at positions 0..{k - 1} moved by {before:.3g} (those from {k} on "
                          f"by {after:.3g})", before, 1e-5, measured=f"earlier outputs moved by {before:.3g}",
                          hint="decoder_mask (lesson 01's causal_mask) lets a position see later ones").say()
    pe_norm = float(model.positions.pe[:config.seq_len].norm(dim=1).mean())
    added = float(positions.norm(dim=-1).mean())                      # measured: what embed_tokens adds
    placed = claims.near("positions-added", f"average vector length: token embedding {token_norm:.2f}, "
                         f"positional encoding {added:.2f} added to it", added, pe_norm, 1e-3 * pe_norm,
                         hint="embed_tokens must add self.positions (lesson 03) to the token vectors").say()
    return {"parameters": settings.count_parameters(model), "causal": causal, "positions": placed,
            "moved_before": before, "moved_after": after}


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


def restrict_logits(logits):
    """The model never needs to produce PAD or BOS: rule them out (in evaluation and decoding)."""
    logits = logits.clone()
    logits[..., [PAD, BOS]] = float("-inf")
    return logits


@torch.no_grad()
def evaluate_teacher_forced(model, data: Batch, chunk=1000):
    """Loss, token accuracy and exact-match from teacher-forced passes (no decoding loop). Exact-match
    this way equals greedy decoding's: greedy writes the whole answer right iff the argmax is right
    at every position given the correct prefix (by induction over the prefix; section 5 checks it)."""
    loss, right, n_tokens, exact = 0.0, 0, 0, 0
    model.eval()                                     # the training loop turns train mode back on
    for start in range(0, len(data), chunk):
        src, tgt_in, tgt_out = (t[start:start + chunk] for t in (data.src, data.tgt_in, data.tgt_out))
        logits = model(src, tgt_in)                                       # (B, T_tgt, V)
        loss += float(F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD, reduction="sum"))
        target = tgt_out != PAD
        correct = (restrict_logits(logits).argmax(-1) == tgt_out) & target  # (B, T_tgt)
        right, n_tokens = right + int(correct.sum()), n_tokens + int(target.sum())
        exact += int((correct | ~target).all(dim=1).sum())
    return {"loss": loss / n_tokens, "token_accuracy": right / n_tokens, "exact_match": exact / len(data)}


def train(config: TrainConfig, device="cpu", quiet=False, resume=None, data=None, model=None,
          checkpoint_path=None, callback=None, print_every=50) -> training.TrainResult:
    """Train a Seq2SeqTransformer on config.task; a TrainResult with the best model. Optional: resume
    (a checkpoint dict), data ((val, test)), model (to train instead of a new one), checkpoint_path
    (where the best model is saved), callback(step, metrics) after each validation."""
    torch.manual_seed(config.seed)
    val, test = data if data is not None else heldout_sets(config)
    model = (model or Seq2SeqTransformer(**config.model_config())).to(device)
    # AdamW: Adam's step for each weight (from running means of its gradient and of the gradient's
    # square), with the weight decay applied to the weights directly, not through the gradient.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = training.TrainingRun(config, model, optimizer, resume, quiet, checkpoint_path, print_every)
    # Batches from a generator seeded by --seed and the starting step (a resumed run draws new ones),
    # never by a held-out set's seed: that stream would begin with the held-out inputs.
    seed = (config.seed * 1_000_003 + run.step) % 2 ** 64
    stream = TrainingData(config, [val.src, test.src], seed=seed + (seed in (VAL_SEED, TEST_SEED)))
    val = val.to(device)

    def validate():
        metrics = evaluate_teacher_forced(model, val)
        run.record_validation(metrics)                     # the history, and a printed line
        # The best model: the highest exact-match, ties broken by the lower loss; saved at once.
        if run.best is None or (metrics["exact_match"], -metrics["loss"]) > run.best["key"]:
            run.keep_best(metrics, key=(metrics["exact_match"], -metrics["loss"]))
        if metrics["exact_match"] >= config.target:
            run.stop("target reached")
        elif config.patience and run.validations_since_best() >= config.patience:
            run.stop("patience")                           # early stopping: no new best for a while
        if callback is not None:
            callback(run.step, metrics)

    try:
        validate()                                         # the starting point is plotted too
        while not run.stopped and run.step < config.steps:
            step = run.start_step()                        # step + 1; the clock runs
            for group in optimizer.param_groups:           # this step's learning rate
                group["lr"] = learning_rate(step, config)
            batch = stream.next_batch().to(device)
            model.train()
            logits = model(batch.src, batch.tgt_in)                       # (B, T_tgt, vocab_size)
            # cross-entropy over every answer position; PAD positions (after EOS) are ignored
            loss = F.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD,
                                   label_smoothing=config.label_smoothing)
            run.check_finite(loss)                         # NaN or inf -> TrainingDiverged
            optimizer.zero_grad()
            loss.backward()
            if config.grad_clip > 0:                       # one norm over all the gradients, at most grad_clip
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            run.end_step(loss, logits, batch.tgt_out)      # the clock stops; history, progress bar
            if step % config.eval_every == 0 or step == config.steps:
                validate()
    except KeyboardInterrupt as stop:                      # Ctrl-C: training ends, the best model stays
        run.interrupted(stop)
    finally:
        run.close()                                        # the progress bar
    return run.result(heldout_removed=stream.removed)


def section_3_train(config: TrainConfig, data, device, resume, args):
    common.section(3, "Training: AdamW, warmup and cosine decay, gradient clipping, validation, early stopping")
    common.explain(f"""Each step: a fresh batch, the model with teacher forcing, the cross-entropy at
        every answer position (PAD ignored), backward, the gradient's norm clipped to {config.grad_clip:g}
        (0 = off), an AdamW update. The learning rate rises over {config.warmup} warmup steps to {config.lr:g}
        (the first updates stay small while AdamW's running means rest on few batches), then follows
        the {config.schedule} schedule to step {config.steps}. Every {config.eval_every} steps the validation
        set is scored; training stops at {config.target:.0%} exact-match, after {config.patience} validations
        without a new best (0 = never), or at the last step. Does warmup matter? challenges.ablations.""")
    result = train(config, device, resume=resume, data=data, checkpoint_path=args.out_dir / CHECKPOINT_NAME)
    reports.report_training(config, result, resume)
    reached = claims.check("reached-target", result.target_step is not None, "validation exact-match reached "
                           f"{config.target:.0%}{reports.when_reached(result)}", expected=f"{config.target:.0%}+",
                           measured=f"best {result.best_val.get('exact_match', 0):.1%} in {result.steps_run} steps",
                           hint="more --steps, another --lr, or a component broken in an earlier section").say()
    return result, reached


# %% 4. Decoding: greedy and beam search
def next_token_logits(model, ys, memory, src_mask, cache=None):
    """(B, vocab_size) scores for the token after the prefix ys (B, t): the decoder runs over the
    whole prefix again, or, with a PrefixCache (section 4b), over the newest position only."""
    if cache is not None:
        return cache.next_logits(ys, memory, src_mask)
    return model.decode(ys, memory, src_mask)[:, -1]                      # last position: next token


@torch.no_grad()
def greedy_decode(model, src, max_len, cache=False):
    """Batched greedy decoding: append the most likely next token, at most max_len times (answer + EOS).
    cache=True: with a PrefixCache. Returns (B, L) tokens: each answer, EOS, then PAD."""
    model.eval()                                     # no dropout; the model stays in eval mode
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
    return ys[:, 1:]


@torch.no_grad()
def beam_search(model, src, beam_size, max_len, length_penalty=0.0, cache=False):
    """Batched beam search: keep the beam_size (K) most likely partial answers (hypotheses) per input.

    A hypothesis's score is the sum of its tokens' log-probabilities. Once it wrote EOS it is
    finished: its only continuation is PAD at log-probability 0, so its score is frozen while it
    competes with the others. The answer: the best score / length**length_penalty (0: the score).
    Returns (tokens (B, L), L <= max_len: answer, EOS, PAD ...; scores (B,)). K = 1 is greedy.
    """
    B, K = src.size(0), beam_size
    model.eval()
    V, device = model.vocab_size, src.device
    memory, src_mask = model.encode(src)
    # K hypotheses per input, stored as B*K rows: row b*K + k is hypothesis k of input b.
    memory = memory.repeat_interleave(K, dim=0)                           # (B*K, T_src, d_model)
    src_mask = src_mask.repeat_interleave(K, dim=0) if src_mask is not None else None
    seqs = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)   # every hypothesis starts with BOS
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0            # one live hypothesis at first (K live copies would pick the same tokens)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, device=device)                            # tokens up to and incl. EOS
    pad_only = torch.full((V,), float("-inf"), device=device)
    pad_only[PAD] = 0.0                                                   # all a finished one may add
    with PrefixCache(model) if cache else contextlib.nullcontext() as prefix:
        for _ in range(max_len):
            # 1. Score every one-token extension of every hypothesis.
            log_probs = F.log_softmax(next_token_logits(model, seqs, memory, src_mask, prefix), dim=-1)
            log_probs = restrict_logits(log_probs).view(B, K, V)
            log_probs = torch.where(finished[..., None], pad_only, log_probs)
            candidates = scores[..., None] + log_probs                    # (B, K, V)
            # 2. Keep the K best of each input's K * V candidates: which parent, which token.
            scores, best = candidates.view(B, K * V).topk(K, dim=1)        # (B, K)
            parent, token = best // V, best % V                           # (B, K) each
            # 3. Each kept candidate is its parent's tokens followed by its own token.
            rows = (torch.arange(B, device=device)[:, None] * K + parent).view(-1)   # (B*K,) parents' rows
            seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)      # (B*K, t + 1)
            if prefix is not None:
                prefix.keep(rows)                                         # the cache follows the parents
            # 4. A length grows until its EOS; a hypothesis is finished once it wrote EOS.
            parent_finished = finished.gather(1, parent)
            lengths = lengths.gather(1, parent) + (~parent_finished).float()
            finished = parent_finished | (token == EOS)
            if bool(finished.all()):
                break
    # 5. The answer: the best score, divided by length**length_penalty when a penalty is set.
    ranking = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = ranking.argmax(dim=1)                                          # (B,)
    return seqs.view(B, K, -1)[torch.arange(B), best, 1:], scores[torch.arange(B), best]


# %% 4b. Incremental decoding: a cache of the prefix
class CachedSelfAttention(nn.Module):
    """A decoder block's self-attention, decoding one position at a time. With a causal mask earlier
    positions never change, so it remembers what self-attention received at them (`past`) and lets
    the newest position attend to all of it. (A "KV cache" stores the projected keys and values.)"""

    def __init__(self, attention):
        super().__init__()
        self.attention, self.past = attention, None

    def forward(self, query, key, value, mask=None, need_weights=False):
        self.past = key if self.past is None else torch.cat([self.past, key], dim=1)  # (B, t + 1, d_model)
        # no mask: every remembered position is in the past of the newest one
        return self.attention(query, self.past, self.past, need_weights=need_weights)


class PrefixCache:
    """`with PrefixCache(model) as cache:` wraps each decoder block's self-attention in a CachedSelfAttention;
    cache.next_logits(ys, ...) runs only the newest token: the scores of model.decode(ys, ...)[:, -1]."""

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
    common.explain(f"""Greedy decoding starts from BOS, appends the most likely next token and feeds the
        answer back in until EOS (or {max_out} tokens). Each step reruns the decoder over the whole prefix;
        but with a causal mask a position never changes once written, so a cache can keep what self-
        attention saw and run only the newest one (section 4b). Beam search keeps the K best answers.""")
    src = test.src[:200].to(device)
    recomputed, cached = (greedy_decode(model, src, max_out, cache=cache) for cache in (False, True))
    same = score_answers(cached, recomputed)["exact_count"]      # answers equal token for token
    seconds = [common.best_time(lambda c=cache: greedy_decode(model, src, max_out, cache=c), device, repeats=5)
               for cache in (False, True)]                # the fastest of 5 runs each
    found = {"recompute_seconds": seconds[0], "cached_seconds": seconds[1], "identical": same,
             "decoded": len(src), "max_tokens": max_out}
    reports.report_cache(found)
    found["same_answers"] = claims.equal(
        "cache-identical", f"the cache gives the same answers as recomputing the prefix, {same} of {len(src)}",
        same, len(src), measured=f"{same} of {len(src)}",
        hint="the cache keeps each earlier position as first computed (CachedSelfAttention, PrefixCache); "
             "with 2+ layers, a decoder mask that is not causal also changes earlier positions").say()
    return found


# %% 5. Evaluating on the test set
def decode(model, src, max_len, beam_size=1, length_penalty=0.0):
    """Greedy (beam_size 1) or beam search with the cache, in chunks of 1000. Returns (B, L) tokens."""
    pieces = [greedy_decode(model, part, max_len, cache=True) if beam_size == 1 else
              beam_search(model, part, beam_size, max_len, length_penalty, cache=True)[0]
              for part in src.split(1000)]
    L = max(p.size(1) for p in pieces)
    return torch.cat([F.pad(p, (0, L - p.size(1)), value=PAD) for p in pieces])


def score_answers(tokens, tgt_out):
    """Decoded answers (B, L) against tgt_out: exact (every token, EOS too, nothing after it), and the
    wrong tokens, those after an answer's first mistake written by a decoder that had read it."""
    L = max(tokens.size(1), tgt_out.size(1))
    tokens, tgt_out = (F.pad(t, (0, L - t.size(1)), value=PAD) for t in (tokens, tgt_out))
    target = tgt_out != PAD                                           # (B, L) answer digits and EOS
    wrong = (tokens != tgt_out) & target                              # (B, L)
    after = wrong & (wrong.cumsum(1) > 1)                             # (B, L) wrong after an earlier mistake
    exact, right = (tokens == tgt_out).all(dim=1), int((target & ~wrong).sum())
    return {"tokens": tokens, "exact": exact, "n": len(exact), "exact_count": int(exact.sum()),
            "exact_match": float(exact.float().mean()), "token_right": right, "token_count": int(target.sum()),
            "token_accuracy": right / int(target.sum()), "wrong_tokens": int(wrong.sum()),
            "wrong_after_first_mistake": int(after.sum()),
            "position_wrong": [int(w) for w, c in zip(wrong.sum(0), target.sum(0)) if c > 0],
            "position_count": [int(c) for c in target.sum(0) if c > 0]}


@torch.no_grad()
def sequence_log_prob(model, src, tokens):
    """Sum of the log-probabilities the model gives to `tokens` (B, L) (answer, EOS, PAD counting 0)."""
    model.eval()                                     # no dropout; the model stays in eval mode
    tgt_in = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    log_probs = F.log_softmax(model(src, tgt_in), dim=-1)                 # (B, L, V)
    picked = log_probs.gather(2, tokens[..., None]).squeeze(2)            # (B, L)
    return torch.where(tokens == PAD, 0.0, picked).sum(1)


def section_5_evaluate(config: TrainConfig, model, test: Batch, args, device):
    common.section(5, "Evaluating on the test set: greedy and beam search, teacher-forced and free-running")
    max_out = output_len(config.task, config.seq_len, config.n_digits) + 1
    common.explain(f"""The test set ({len(test)} sequences) was never trained on or used to pick the
        model. Exact-match counts whole answers, with the 95% interval of the true accuracy such a
        count leaves open (Wilson). "Teacher-forced" scores each position given the correct prefix
        (as validation does); "free-running" is greedy decoding, reading its own earlier tokens.""")
    src = test.src.to(device)
    greedy = score_answers(decode(model, src, max_out).cpu(), test.tgt_out)
    forced = evaluate_teacher_forced(model, test.to(device))
    beam = (score_answers(decode(model, src, max_out, args.beam_size, args.length_penalty).cpu(), test.tgt_out)
            if args.beam_size > 1 else None)
    forced_exact = round(forced["exact_match"] * greedy["n"])
    reports.report_test_table(greedy, forced_exact, forced["token_accuracy"], beam, args.beam_size)
    # Greedy writes an answer right iff every teacher-forced argmax is right (induction over the prefix).
    same = claims.check("cheap-equals-greedy", forced_exact == greedy["exact_count"], f"one teacher-forced pass "
                        f"gets {forced_exact} answers right, greedy decoding {greedy['exact_count']}: the same, so "
                        "validation can use the cheap pass", measured=f"{forced_exact} and {greedy['exact_count']}",
                        expected="the two counts equal", hint="greedy decoding here uses the cache (section 4); a "
                        "decoder that sees later tokens in training (section 2) also makes them differ").say()
    forced_wrong = round((1 - forced["token_accuracy"]) * greedy["token_count"])
    reports.report_wrong_tokens(greedy, forced_wrong)     # before and after each answer's first mistake
    found = {"teacher_forced_exact_count": forced_exact, "teacher_forced_wrong_tokens": forced_wrong,
             "free_running_wrong_tokens": greedy["wrong_tokens"], "cheap_equals_greedy": same,
             "free_running_wrong_after_first_mistake": greedy["wrong_after_first_mistake"]}
    if beam is not None:                                  # which answers beam search fixed, which it broke
        fixed, broke = int((beam["exact"] & ~greedy["exact"]).sum()), int((greedy["exact"] & ~beam["exact"]).sum())
        p, changed = common.stats.sign_test(fixed, broke), int((beam["tokens"] != greedy["tokens"]).any(dim=1).sum())
        reports.report_beam_changes(changed, fixed, broke, p, len(test))
        # What beam search ranks by: the summed log-probability / length**length_penalty (the mean here).
        rank = [float((sequence_log_prob(model, src, r["tokens"].to(device)).cpu() / (r["tokens"] != PAD).sum(1)
                       .clamp(min=1) ** args.length_penalty).mean()) for r in (greedy, beam)]
        found["beam_scores_higher"] = claims.at_least(
            "beam-scores-higher", f"beam search's answers score at least as high as greedy decoding's, on average "
            f"(log-probability / length**{args.length_penalty:g}): {rank[1]:.4f} against {rank[0]:.4f}",
            rank[1] - rank[0], -1e-6,
            hint="beam_search keeps the K best hypotheses; or a decoder that sees later tokens (section 2) scores "
                 "whole answers unlike the prefixes it decoded").say()
        if broke and found["beam_scores_higher"]:
            text.say(f"scoring higher is not being right: beam search lost {broke} answers greedy decoding had right")
        found.update(beam_fixed=fixed, beam_broke=broke, beam_p=p, beam_rank=rank)
    reports.report_where_wrong(config, test, greedy)
    return {"greedy": greedy, "teacher_forced": forced, "beam": beam, **found}


# %% 6. What the attention learned
def focus(weights, real_rows, keys):
    """The largest weight of each real query row (weights (B, n_heads, T_q, T_k), real_rows (B, T_q)),
    averaged; and that average if each row spread evenly over its keys (B, T_q) keys."""
    rows = real_rows[:, None, :].expand(-1, weights.size(1), -1)
    return float(weights.max(-1).values[rows].mean()), float((1 / keys.float())[real_rows].mean())


def alignment(task, cross, src, tgt_in, tgt_out):
    """{what: (shares (n_heads,), chance)}: per head, the share of answer positions whose strongest
    cross-attention (B, n_heads, T_tgt, T_src) falls where the task points (reverse: input L-1-i;
    copy: i; sort: an input holding the digit being written, or just written), and chance."""
    real = src != PAD                                                 # (B, T_src)
    lengths = real.sum(1, keepdim=True)                               # (B, 1)
    answer = (tgt_out != PAD) & (tgt_out != EOS)                      # (B, T_tgt) answer digits
    strongest = cross.argmax(-1)                                      # (B, n_heads, T_tgt)
    i = torch.arange(tgt_out.size(1)).expand_as(tgt_out)
    if task in ("reverse", "copy"):
        where = lengths - 1 - i if task == "reverse" else i            # (B, T_tgt)
        hit = strongest == where[:, None, :]
        chance = (1 / lengths.float()).expand_as(tgt_out)[answer]
        name = "the mirror input position" if task == "reverse" else "the same input position"
        return {name: ((hit & answer[:, None, :]).sum((0, 2)).float() / answer.sum(), float(chance.mean()))}
    looked_at = src.gather(1, strongest.flatten(1)).view_as(strongest)  # (B, n_heads, T_tgt) token there
    found = {}
    for name, digit, rows in (("an input holding the digit being written", tgt_out, answer),
                              ("an input holding the digit just written", tgt_in, answer & (i > 0))):
        hit = (looked_at == digit[:, None, :]) & rows[:, None, :]
        holding = ((src[:, None, :] == digit[:, :, None]) & real[:, None, :]).sum(-1).float() / lengths  # (B, T_tgt)
        found[name] = (hit.sum((0, 2)).float() / rows.sum(), float(holding[rows].mean()))
    return found


def section_6_attention(config: TrainConfig, model, test: Batch, device, args):
    common.section(6, "What the attention learned (trained model, eval mode)")
    model.eval()
    with torch.no_grad():
        weights = model.attention_weights(test.src.to(device), test.tgt_in.to(device))
    weights = {k: [w.cpu() for w in v] for k, v in weights.items() if k != "logits"}
    common.explain("""Focus: the largest weight in a query row, averaged over real rows (1: one key
        gets everything; 1/L: spread evenly over L keys). Alignment: the share of answer positions
        whose strongest cross-attention weight falls where the task points, beside chance.""")
    src_real, tgt_real = test.src != PAD, test.tgt_out != PAD
    n_src = src_real.sum(1, keepdim=True)                             # keys each query row may see
    keys = {"encoder_self": (src_real, n_src.expand_as(src_real)), "cross": (tgt_real, n_src.expand_as(tgt_real)),
            "decoder_self": (tgt_real, torch.arange(1, tgt_real.size(1) + 1).expand_as(tgt_real))}  # causal
    focused = {name: [focus(w, *keys[name]) for w in weights[name]] for name in keys}
    aligned = {}                                     # {what: [(shares per head, chance) per layer]}
    for cross in weights["cross"] if config.task != "sum" else []:   # a sum depends on every input
        for what, measured in alignment(config.task, cross, test.src, test.tgt_in, test.tgt_out).items():
            aligned.setdefault(what, []).append(measured)
    found = reports.report_attention(focused, aligned)
    best = found["alignment"] and found["alignment"]["best"]          # (head, what, share, chance)
    found["aligned"] = best and claims.at_least(
        "cross-attention-aligned", f"most answer positions look at {best[1]}: {best[0]} for {best[2]:.1%} of the "
        f"{len(test)} test answers' positions (chance {best[3]:.1%})", best[2], 0.5, measured=f"{best[2]:.1%}",
        hint="a model that did not learn the task, or positions missing, leave no head aligned").say()
    figures.plot_attention(config, weights, test, found, args.out_dir, args.show)
    return found


# %% 7. Loading the saved model back, predicting
def tokens_to_digits(row):
    """One row of tokens -> the digit list up to EOS (PAD and BOS dropped)."""
    tokens = row.tolist()
    tokens = tokens[:tokens.index(EOS)] if EOS in tokens else tokens
    return [t - FIRST_DIGIT for t in tokens if t >= FIRST_DIGIT]


def predict(model, sequences, beam_size=1):
    """Answer digit lists with a trained model (its task: model.config["task"]), e.g. [[1, 2, 3]] ->
    [[3, 2, 1]] for reversal; beam_size 1 is greedy. ValueError for sequences it cannot take."""
    settings.check_sequences(sequences, model)
    if not sequences:
        return []
    T = max(len(s) for s in sequences)
    src = torch.full((len(sequences), T), PAD, dtype=torch.long)
    for i, digits in enumerate(sequences):
        src[i, :len(digits)] = torch.tensor([int(d) for d in digits]) + FIRST_DIGIT
    device = next(model.parameters()).device
    tokens = decode(model, src.to(device), output_len(model.config["task"], T, model.config["n_digits"]) + 1,
                    beam_size).cpu()
    return [tokens_to_digits(row) for row in tokens]


def section_7_reload(test: Batch, greedy_tokens, path):
    common.section(7, "Loading the saved model back, predicting")
    loaded = load_checkpoint(path)
    inputs = [tokens_to_digits(test.src[i]) for i in range(min(8, len(test)))]
    answers = predict(loaded, inputs)
    same = sum(a == tokens_to_digits(b) for a, b in zip(answers, greedy_tokens))
    reloaded = claims.equal("reload-same-answers", f"load_checkpoint({path.name!r}) (torch.load with weights_only="
                            f"True: tensors and numbers only) gives a model whose predict() matches the in-memory "
                            f"model's answers on {same} of {len(inputs)} test inputs", same, len(inputs),
                            measured=f"{same} of {len(inputs)}", hint="the checkpoint holds the best model").say()
    print(f"    predict(model, [{text.digits_text(inputs[0]).replace(' ', ', ')}]) -> {answers[0]}")
    return reloaded


def key_insights(config, result, found):
    model, test, aligned = found["model"], found["test"], found["attention"]["aligned"]
    common.key_insights([
        model["causal"].restate("Teacher forcing trains every answer position in one pass, and the causal mask "
                                f"keeps it honest: later inputs moved earlier outputs by {model['moved_before']:.3g}."),
        found["reached"].restate(f"{model['parameters']:,} parameters: {found['reached'].text} on '{config.task}'."),
        test["cheap_equals_greedy"].restate(
            f"Greedy decoding got {common.stats.share_text(test['greedy']['exact_count'], test['greedy']['n'])} test "
            "answers right (95% interval); one teacher-forced pass counts the same: validation needs no decoding."),
        f"Wrong tokens: {test['teacher_forced_wrong_tokens']} teacher-forced, {test['free_running_wrong_tokens']} "
        f"free-running, {test['free_running_wrong_after_first_mistake']} of them after an answer's first mistake.",
        *([f"Beam search fixed {test['beam_fixed']} answers and broke {test['beam_broke']} (sign test p = "
           f"{test['beam_p']:.2g}: {'a difference' if test['beam_p'] < 0.05 else 'no difference'} beyond chance)."]
          if test["beam"] is not None else []),
        *([aligned.restate(f"Cross-attention learned where to look: {aligned.text}.")] if aligned else []),
        found["cache"]["same_answers"].restate(f"The prefix cache gave the same answers as recomputing the prefix "
                                               f"({found['cache']['same_answers'].measured}), running one position."),
        found["reloaded"].restate(f"The checkpoint reloads (weights_only=True) and predicts the same answers "
                                  f"({found['reloaded'].measured})."),
        *(found.get("length_generalization") or {}).get("sentences", []),
    ])


@common.entry_point
def main(argv=None):
    args = common.parse_args(flags.build_parser(__doc__, TrainConfig, TASKS, TASK_DEFAULTS), argv)
    config, checkpoint = flags.config_from_args(args, TrainConfig, TASK_DEFAULTS, Seq2SeqTransformer)
    device = common.setup(args, "Lesson 05: a mini encoder-decoder transformer, trained end to end")
    val, test = heldout_sets(config)
    found = {"data": section_1_data(config, val, test), "model": section_2_model(config, val, device)}
    keep_previous_outputs(args.out_dir, resumed_from=args.resume)
    result, found["reached"] = section_3_train(config, (val, test), device, checkpoint, args)  # saves the best model
    metrics = reports.Metrics(args.out_dir / "metrics.json", config, result)      # written now, then updated
    figures.plot_training(config, result, learning_rate, args.out_dir, args.show)
    found["cache"] = metrics.update(cache=section_4_decoding(config, result.model, test, device))
    found["test"] = metrics.update(test=section_5_evaluate(config, result.model, test, args, device))
    found["attention"] = metrics.update(attention=section_6_attention(config, result.model, test, device, args))
    explorer.lesson_page(args, config, result.model, test, found["test"]["greedy"]["tokens"])  # every head, a page
    found["reloaded"] = section_7_reload(test, found["test"]["greedy"]["tokens"], args.out_dir / CHECKPOINT_NAME)
    if args.eval_lengths:                        # python -m challenges.length_generalization on this model
        from challenges import length_generalization
        found["length_generalization"] = metrics.update(length_generalization=length_generalization.after_lesson_05(
            config, result.model, args, device, checkpoint))
    metrics.update(complete=True)
    key_insights(config, result, found)


if __name__ == "__main__":
    main()
