"""Exercise: multi-head attention (lesson 02), from memory.

The constructor is given: the checker copies PyTorch's weights into W_q, W_k, W_v and W_o, so
keep those names (all heads' projections in one nn.Linear(d_model, d_model) each).
Write split_heads, merge_heads and forward, then check from the repository root:

    python -m exercises check multi_head_attention

forward may ignore need_weights and fused (the checker always asks for the weights).
The reference version is `MultiHeadAttention` in 02_multi_head_attention.py; after the checker
has had its say, `python -m exercises compare multi_head_attention` shows it beside yours.
"""
import math  # noqa: F401

import torch  # noqa: F401
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401

from common import load_lesson

# You may reuse lesson 01's attention (as lesson 02 does), or your own:
#   from exercises.attention import scaled_dot_product_attention
# or write the scores, softmax and weighted sum inline.
scaled_dot_product_attention = load_lesson(1).scaled_dot_product_attention


class MultiHeadAttention(nn.Module):
    """n_heads attention heads side by side, each on its own d_head = d_model // n_heads slice.

    forward(query (B, T_q, d_model), key (B, T_k, d_model), value (B, T_k, d_model), mask=None,
    need_weights=True) -> (output (B, T_q, d_model), weights (B, n_heads, T_q, T_k) or None).
    mask: boolean, True = may attend, of shape (T_q, T_k), (B, T_q, T_k), (B, 1, T_k) or
    (B, n_heads, T_q, T_k). A query with nothing to attend to gets weights 0, not NaN.
    Equal to nn.MultiheadAttention(d_model, n_heads, dropout, batch_first=True) with the same
    weights (W_q, W_k, W_v are the thirds of its in_proj, W_o its out_proj) and the mask inverted.
    Dropout, as in nn.MultiheadAttention: in training mode on the attention weights at rate
    `dropout`; the weights returned are the ones that multiplied the values. In eval mode, none.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 fused: bool = False):
        super().__init__()
        if n_heads <= 0 or d_model <= 0 or d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.fused = fused  # the lesson's opt-in to PyTorch's kernel; your forward may ignore it
        self.W_q = nn.Linear(d_model, d_model, bias=bias)  # all heads' query projections at once
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)  # mixes the heads' outputs back together
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x):
        """(B, T, d_model) -> (B, n_heads, T, d_head)."""
        raise NotImplementedError("write MultiHeadAttention.split_heads")

    def merge_heads(self, x):
        """(B, n_heads, T, d_head) -> (B, T, d_model), the inverse of split_heads."""
        raise NotImplementedError("write MultiHeadAttention.merge_heads")

    def forward(self, query, key, value, mask=None, need_weights: bool = True):
        raise NotImplementedError(
            "write MultiHeadAttention.forward, then run: python -m exercises check multi_head_attention")
