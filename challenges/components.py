"""Building blocks the ablations swap into lesson 05's model, each small and tested against a reference.

What is here (each next to the question it helps answer in challenges/ablations.py):
  attention_without_scale   lesson 01's attention without the 1/sqrt(d_k)       (why divide?)
  NoPositions               no positional encoding at all                        (why positions?)
  LearnedPositions          a trained table of position vectors (BERT, GPT-2)
  apply_rope, RotarySelfAttention   rotary position embeddings (RoPE: LLaMA, Mistral)
  apply_rope_halves, halves_to_interleaved   RoPE as LLaMA's code lays it out, and the permutation
                                between the two layouts
  GroupedQueryAttention     fewer key/value heads than query heads (LLaMA 2 70B, Mistral)
  sliding_window_mask, decoder_only_mask   keys at most `window` positions back (Mistral)
  RMSNorm                   LayerNorm without the mean and the bias (LLaMA, Mistral)
  SwiGLU                    a gated feed-forward (LLaMA, Mistral)
  label_smoothed_cross_entropy   label smoothing written out
  DecoderOnlyTransformer    one causal stack reading input, separator, answer (GPT, LLaMA)

Everything else is the lessons' own code, reused through common.load_lesson: lesson 01's attention
function and causal mask, lesson 02's MultiHeadAttention, lesson 03's pair frequencies and
positional encoding, lesson 04's encoder stack. Nothing here prints, plots or seeds.

Shapes: B batch, T sequence length (T_q, T_k when they differ), d_model model width,
n_heads heads, d_head = d_model // n_heads, d_ff feed-forward width, V vocab_size.
Masks are boolean with True = may attend (as in every lesson).
"""
import math
import sys
from pathlib import Path

if __package__ in (None, ""):     # run as a file: common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import load_lesson  # noqa: E402

# The lessons' names are looked up when a block runs (load_lesson(2).scaled_dot_product_attention),
# not copied here, so a patch or an edit to a lesson reaches these blocks too.


# %% Why divide by sqrt(d_k)?
def attention_without_scale(query, key, value, mask=None):
    """Lesson 01's scaled_dot_product_attention without its 1/sqrt(d_k): weights = softmax(Q K^T).

    The queries are multiplied by sqrt(d_k) before lesson 01's function divides by it again, so
    the masking and the softmax are still lesson 01's code. Same arguments and returns.
    """
    d_k = query.size(-1)
    return load_lesson(1).scaled_dot_product_attention(query * math.sqrt(d_k), key, value, mask)


# %% Why positional encodings? Three alternatives to lesson 03's sinusoidal table
class NoPositions(nn.Module):
    """No position information: x -> dropout(x). Self-attention without positions treats its
    input as a set: permute the tokens and the outputs are permuted the same way."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(x)                                                # (B, T, d_model)


class LearnedPositions(nn.Module):
    """A trained vector per position added to each token (BERT, GPT-2): x + P[:T].

    The table starts as nn.Embedding's N(0, 1), the initialisation lesson 05's token embedding has,
    and is trained with everything else. Unlike lesson 03's formula it knows no position it never
    trained on.
    """

    def __init__(self, d_model: int, max_len: int = 512, dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.table = nn.Embedding(max_len, d_model)                           # (max_len, d_model) weights
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        T = x.size(1)
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds the learned table's max_len {self.max_len}")
        positions = torch.arange(T, device=x.device)                          # (T,)
        return self.dropout(x + self.table(positions))                        # (B, T, d_model) + (T, d_model)


def rope_cos_sin(x, positions):
    """cos(p w_i) and sin(p w_i), each (T, d_head/2), in x's device and dtype, for RoPE on x (..., T, d_head).

    The frequencies w_i are lesson 03's pair_frequencies (its BASE: 10000, LLaMA's rope_theta too).
    The angles are computed in float64 on the CPU (exact for long sequences; MPS has no float64).
    """
    d_head = x.size(-1)
    if d_head % 2:
        raise ValueError(f"RoPE rotates pairs: d_head must be even, got {d_head}")
    w = load_lesson(3).pair_frequencies(d_head)                               # (d_head/2,) float64, on the CPU
    angle = (positions.cpu().double()[:, None] * w).to(device=x.device, dtype=x.dtype)  # (T, d_head/2)
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x, positions):
    """Rotary position embedding: rotate each pair (2i, 2i+1) of x by the angle p * w_i.

    x (..., T, d_head) with d_head even; positions (T,) the position p of each row. The frequencies
    w_i are lesson 03's pair_frequencies, the same as the sinusoidal table's:
      x'[2i]   = x[2i] cos(p w_i) - x[2i+1] sin(p w_i)
      x'[2i+1] = x[2i] sin(p w_i) + x[2i+1] cos(p w_i)
    A rotation by p_q w for the query and p_k w for the key leaves q'.k' depending on the offset
    p_k - p_q only (lesson 03's relative_position_matrix is the same block of 2x2 rotations).
    """
    cos, sin = rope_cos_sin(x, positions)                                     # (T, d_head/2) each
    even, odd = x[..., 0::2], x[..., 1::2]                                    # (..., T, d_head/2) each
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)  # (..., T, d_head/2, 2)
    return rotated.flatten(-2)                                                # (..., T, d_head), pairs interleaved


def apply_rope_halves(x, positions):
    """RoPE as LLaMA's code (and Hugging Face's LlamaAttention) lays it out: pair i is (i, i + d_head/2).

      x'[i]            = x[i] cos(p w_i) - x[i + d_head/2] sin(p w_i)
      x'[i + d_head/2] = x[i] sin(p w_i) + x[i + d_head/2] cos(p w_i)
    The same rotations as apply_rope, on coordinates in another order: with order = halves_order(d_head),
    apply_rope_halves(x[..., order]) = apply_rope(x)[..., order]. A model is the same model in either
    layout once the rows of W_q and W_k are reordered (halves_to_interleaved).
    """
    cos, sin = rope_cos_sin(x, positions)                                     # (T, d_head/2) each
    half = x.size(-1) // 2
    first, second = x[..., :half], x[..., half:]                              # (..., T, d_head/2) each
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)  # (..., T, d_head)


def halves_order(d_head: int) -> torch.Tensor:
    """(0, 2, 4, ..., d_head-2, 1, 3, ..., d_head-1): coordinate j of the halves layout is coordinate
    order[j] of the interleaved one. Lesson 03's concatenated_column_order (sines first, then cosines)."""
    return load_lesson(3).concatenated_column_order(d_head)


def halves_to_interleaved(weight, n_heads: int):
    """The rows of W_q or W_k (n_heads * d_head, d_model), written for halves RoPE (LLaMA's checkpoints),
    reordered inside each head for the course's interleaved RoPE: new[order] = old, head by head.

    Then q = new @ x satisfies q[order] = old @ x, and the rotated queries and keys of both layouts hold
    the same numbers in another order: every score q'.k' is the same. (The official LLaMA-to-Hugging Face
    weight converter applies the inverse reordering.)
    """
    rows, d_model = weight.shape[0], weight.shape[1:]
    d_head = rows // n_heads
    inverse = torch.argsort(halves_order(d_head))                             # new[j] = old[inverse[j]]
    return weight.reshape(n_heads, d_head, *d_model)[:, inverse].reshape(rows, *d_model)


class RotarySelfAttention(nn.Module):
    """Lesson 02's MultiHeadAttention (its weights and heads) with RoPE on the queries and keys.

    Used for self-attention, where queries and keys come from one sequence: key t sits at position
    t, and the T_q queries are the last T_q positions (T_q = T_k in training; the newest position
    only when decoding with lesson 05's prefix cache). forward has MultiHeadAttention's signature.
    """

    def __init__(self, attention):
        super().__init__()
        self.attention = attention                                            # lesson 02's module, reused

    def forward(self, query, key, value, mask=None, need_weights: bool = True):
        a = self.attention
        T_q, T_k = query.size(1), key.size(1)
        q = a.split_heads(a.W_q(query))                                       # (B, n_heads, T_q, d_head)
        k = a.split_heads(a.W_k(key))                                         # (B, n_heads, T_k, d_head)
        v = a.split_heads(a.W_v(value))                                       # (B, n_heads, T_k, d_head)
        positions = torch.arange(T_k, device=key.device)                      # (T_k,)
        q, k = apply_rope(q, positions[T_k - T_q:]), apply_rope(k, positions)  # NEW: rotate by position
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)                                          # (B, 1, T_q or 1, T_k)
        heads, weights = load_lesson(2).scaled_dot_product_attention(q, k, v, mask)  # (B, n_heads, T_q, d_head)
        if self.training and a.dropout.p > 0:                                 # as lesson 02 does
            weights = a.dropout(weights)
            heads = weights @ v
        return a.W_o(a.merge_heads(heads)), (weights if need_weights else None)  # (B, T_q, d_model)


# %% Grouped-query attention and the sliding window (LLaMA 2 70B, Mistral)
ROPE_LAYOUTS = {None: None, "interleaved": apply_rope, "halves": apply_rope_halves}


class GroupedQueryAttention(nn.Module):
    """Lesson 02's MultiHeadAttention with n_kv_heads key/value heads shared by its n_heads query heads.

    Query heads g * group .. (g + 1) * group - 1 (group = n_heads // n_kv_heads) all read key and value
    head g. n_kv_heads = n_heads is lesson 02's attention unchanged; n_kv_heads = 1 is multi-query
    attention. W_k and W_v shrink to n_kv_heads * d_head rows, and so does what a cache of keys and
    values holds per token (cache_bytes_per_token).
    rope: None, "interleaved" (the course's pairs (2i, 2i+1)) or "halves" (LLaMA's (i, i + d_head/2)):
    queries and keys rotated by position, for self-attention (key t at position t, the T_q queries at
    the last T_q positions). forward has MultiHeadAttention's signature and returns
    (output (B, T_q, d_model), weights (B, n_heads, T_q, T_k) or None).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = True,
                 rope: str | None = None, dropout: float = 0.0):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        if rope not in ROPE_LAYOUTS:
            raise ValueError(f"rope must be one of {list(ROPE_LAYOUTS)}, got {rope!r}")
        self.attention = load_lesson(2).MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_model // n_heads
        self.rope = rope
        if n_kv_heads != n_heads:                       # NEW: keys and values for n_kv_heads heads only
            self.attention.W_k = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
            self.attention.W_v = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)

    def keys_values(self, key, value):
        """What a cache of keys and values holds: (k, v), each (B, n_kv_heads, T_k, d_head), k rotated."""
        a, B, T_k = self.attention, key.size(0), key.size(1)
        k = a.W_k(key).view(B, T_k, self.n_kv_heads, self.d_head).transpose(1, 2)    # (B, n_kv_heads, T_k, d_head)
        v = a.W_v(value).view(B, T_k, self.n_kv_heads, self.d_head).transpose(1, 2)  # (B, n_kv_heads, T_k, d_head)
        if self.rope:
            k = ROPE_LAYOUTS[self.rope](k, torch.arange(T_k, device=key.device))
        return k, v

    def forward(self, query, key, value, mask=None, need_weights: bool = True):
        a, T_q, T_k = self.attention, query.size(1), key.size(1)
        q = a.split_heads(a.W_q(query))                                       # (B, n_heads, T_q, d_head)
        k, v = self.keys_values(key, value)                                   # (B, n_kv_heads, T_k, d_head)
        if self.rope:
            q = ROPE_LAYOUTS[self.rope](q, torch.arange(T_k - T_q, T_k, device=query.device))
        group = self.n_heads // self.n_kv_heads
        # NEW: key/value head g serves query heads g * group .. (g + 1) * group - 1
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, n_heads, T_k, d_head)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)                                          # (B, 1, T_q or 1, T_k)
        heads, weights = load_lesson(2).scaled_dot_product_attention(q, k, v, mask)  # (B, n_heads, T_q, d_head)
        if self.training and a.dropout.p > 0:                                 # as lesson 02 does
            weights = a.dropout(weights)
            heads = weights @ v
        return a.W_o(a.merge_heads(heads)), (weights if need_weights else None)  # (B, T_q, d_model)


def cache_bytes_per_token(attention: GroupedQueryAttention) -> int:
    """Bytes a cache of keys and values holds per token for one attention layer, measured on the tensors
    keys_values returns (2 n_kv_heads d_head numbers in the module's dtype). Works on the meta device."""
    weight = attention.attention.W_k.weight
    x = torch.zeros(1, 4, weight.size(1), dtype=weight.dtype, device=weight.device)   # 4 tokens
    k, v = attention.keys_values(x, x)
    return (k.nbytes + v.nbytes) // 4


def sliding_window_mask(T: int, window: int, device=None) -> torch.Tensor:
    """(T, T) boolean, True = may attend: query i sees keys i - window + 1 .. i (Mistral's window).

    Lesson 01's causal mask, and only the `window` most recent keys: one key further back is blocked.
    The diagonal (each position itself) is never blocked; window >= T is the causal mask.
    """
    if window < 1:
        raise ValueError(f"a window must hold at least the query itself: window >= 1, got {window}")
    i = torch.arange(T, device=device)
    recent = i[None, :] > i[:, None] - window                                 # (T, T): key j > query i - window
    return load_lesson(1).causal_mask(T, device=device) & recent


def decoder_only_mask(T: int, keep=None, window: int | None = None, device=None) -> torch.Tensor:
    """A decoder-only model's mask, True = may attend: causal (or a sliding window), and no padded key.

    keep (B, T) boolean, True = a real token (the polarity of Hugging Face's attention_mask, 1 = attend).
    Returns (T, T), or (B, T, T) with keep.
    """
    device = keep.device if keep is not None else device
    mask = load_lesson(1).causal_mask(T, device=device) if window is None else sliding_window_mask(T, window, device)
    return mask if keep is None else mask & keep[:, None, :]                 # (T, T) & (B, 1, T) -> (B, T, T)


# %% Modern building blocks (LLaMA, Mistral): RMSNorm, SwiGLU
class RMSNorm(nn.Module):
    """Root-mean-square normalisation: x / sqrt(mean(x^2) + eps) * weight.

    LayerNorm also subtracts the mean and adds a bias; RMSNorm keeps only the rescaling, which is
    one reduction fewer. Equals nn.RMSNorm(d_model, eps) (tested)."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        # rms = sqrt(mean over the last dimension of x^2 + eps)
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)      # (B, T, 1)
        return x / rms * self.weight                                          # (B, T, d_model)


class SwiGLU(nn.Module):
    """Gated feed-forward: W_down( silu(W_gate x) * (W_up x) ), silu(z) = z * sigmoid(z).

    Three matrices instead of lesson 04's two, no biases (as in LLaMA); swiglu_width(d_ff) gives
    the hidden width with about the parameters of a ReLU feed-forward of width d_ff."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.W_gate = nn.Linear(d_model, d_hidden, bias=False)
        self.W_up = nn.Linear(d_model, d_hidden, bias=False)
        self.W_down = nn.Linear(d_hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        hidden = F.silu(self.W_gate(x)) * self.W_up(x)                        # (B, T, d_hidden)
        return self.W_down(self.dropout(hidden))                              # (B, T, d_model)


def swiglu_width(d_ff: int) -> int:
    """2/3 of d_ff: three d_model x (2/3 d_ff) matrices hold as many weights as two d_model x d_ff."""
    return max(1, round(2 * d_ff / 3))


# %% Label smoothing, written out
def label_smoothed_cross_entropy(logits, target, smoothing: float, ignore_index: int):
    """What F.cross_entropy(logits, target, label_smoothing=smoothing, ignore_index=...) computes.

    logits (B, V, T) (classes second, as F.cross_entropy takes them), target (B, T). The target
    distribution puts 1 - smoothing on the right token and spreads smoothing evenly over all V:
      loss = (1 - smoothing) * (-log p[target]) + smoothing * mean over tokens c of (-log p[c])
    averaged over the positions whose target is not ignore_index.
    """
    log_p = F.log_softmax(logits, dim=1)                                      # (B, V, T)
    keep = target != ignore_index                                             # (B, T)
    picked = log_p.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)     # (B, T) log p[target]
    uniform = log_p.mean(dim=1)                                               # (B, T) mean over V of log p
    loss = -(1 - smoothing) * picked - smoothing * uniform                    # (B, T)
    return loss[keep].mean()


# %% Decoder-only: one stack instead of encoder + decoder
class DecoderOnlyTransformer(nn.Module):
    """One causal stack reading  input digits, BOS, answer  and predicting each next answer token.

    The stack is lesson 04's TransformerEncoder given a causal mask: a decoder-only block is an
    encoder block whose queries see only earlier positions (GPT, LLaMA). BOS, the first token of
    tgt_in, separates input from answer. The logits of the answer positions are returned, so
    forward(src (B, T_src), tgt_in (B, T_tgt)) -> (B, T_tgt, V), like Seq2SeqTransformer, and
    lesson 05's train() and evaluation work unchanged.
    """

    def __init__(self, task="reverse", n_digits=10, d_model=32, n_heads=2, n_layers=2, d_ff=128,
                 dropout=0.0, norm_first=True, embed_scale=False, max_len=64):
        super().__init__()
        self.config = dict(task=task, n_digits=n_digits, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                           d_ff=d_ff, dropout=dropout, norm_first=norm_first, embed_scale=embed_scale,
                           max_len=max_len)
        self.vocab_size, self.max_len = load_lesson(5).vocab_size(n_digits), max_len
        self.embed = nn.Embedding(self.vocab_size, d_model)
        self.scale = math.sqrt(d_model) if embed_scale else 1.0
        self.positions = load_lesson(3).PositionalEncoding(d_model, max_len=max_len, dropout=dropout)
        self.stack = load_lesson(4).TransformerEncoder(n_layers, d_model, n_heads, d_ff, dropout, norm_first)
        self.out = nn.Linear(d_model, self.vocab_size)

    def inputs(self, src, tgt_in):
        """(the stack's input (B, T, d_model), its mask (B, T, T)) for the sequence input, BOS, answer."""
        L5 = load_lesson(5)
        x = torch.cat([src, tgt_in], dim=1)                                   # (B, T) with T = T_src + T_tgt
        # True = may attend: earlier positions (causal) that are not PAD (inputs shorter than T_src)
        mask = L5.causal_mask(x.size(1), device=x.device) & (x != L5.PAD).unsqueeze(1)  # (T, T) & (B, 1, T)
        return self.positions(self.embed(x) * self.scale), mask               # (B, T, d_model), (B, T, T)

    def forward(self, src, tgt_in):
        h = self.stack(*self.inputs(src, tgt_in))                             # (B, T, d_model)
        return self.out(h[:, src.size(1):])                                   # (B, T_tgt, V): the answer positions

    def attention_weights(self, src, tgt_in):
        """Every block's self-attention weights, [(B, n_heads, T, T), ...] (use eval mode)."""
        return self.stack(*self.inputs(src, tgt_in), return_weights=True)[1]
