"""Lesson 02: multi-head attention. (SKELETON: building blocks only; sections to be written.)"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import load_lesson

# Reused from lesson 01 (one source for each component).
scaled_dot_product_attention = load_lesson(1).scaled_dot_product_attention


# %% Building blocks
class MultiHeadAttention(nn.Module):
    """n_heads attention heads side by side, each on its own d_head = d_model // n_heads slice.

    forward(query (B, T_q, d_model), key (B, T_k, d_model), value (B, T_k, d_model), mask=None)
    -> (output (B, T_q, d_model), weights (B, n_heads, T_q, T_k)).
    mask: boolean, True = may attend, of shape (T_q, T_k), (B, T_q, T_k), (B, 1, T_k) or
    (B, n_heads, T_q, T_k). With need_weights=False the fused F.scaled_dot_product_attention
    computes the same output faster and weights is None.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if n_heads <= 0 or d_model <= 0 or d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout_p = dropout
        self.W_q = nn.Linear(d_model, d_model, bias=bias)  # all heads' query projections at once
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)  # mixes the heads' outputs back together
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x):
        """(B, T, d_model) -> (B, n_heads, T, d_head)."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def merge_heads(self, x):
        """(B, n_heads, T, d_head) -> (B, T, d_model). The transpose back is essential."""
        B, _, T, _ = x.shape
        return x.transpose(1, 2).reshape(B, T, self.d_model)

    def forward(self, query, key, value, mask=None, need_weights: bool = True):
        q = self.split_heads(self.W_q(query))  # (B, n_heads, T_q, d_head)
        k = self.split_heads(self.W_k(key))    # (B, n_heads, T_k, d_head)
        v = self.split_heads(self.W_v(value))  # (B, n_heads, T_k, d_head)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, T_q or 1, T_k) -> (B, 1, T_q or 1, T_k): same for every head
        if need_weights:
            # Scaled by sqrt(d_head), the size of each head's dot products (not d_model).
            heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, n_heads, T_q, d_head)
            if self.training and self.dropout_p > 0:
                heads = self.dropout(weights) @ v  # dropout on the weights, as nn.MultiheadAttention
        else:
            p = self.dropout_p if self.training else 0.0
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            weights = None
        return self.W_o(self.merge_heads(heads)), weights  # (B, T_q, d_model)
