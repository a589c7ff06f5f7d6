"""Exercise: the transformer encoder block (lesson 04), from memory.

The constructor is given: the checker copies the weights of PyTorch's nn.TransformerEncoderLayer
into self_attn (its W_q, W_k, W_v, W_o), feed_forward (its linear1, linear2), norm1 and norm2, so
keep those names. It builds on lesson 02's MultiHeadAttention and lesson 04's FeedForward; to build
on your own attention instead, replace the line `MultiHeadAttention = load_lesson(2)...` below by
    from exercises.multi_head_attention import MultiHeadAttention
Write forward, then check from the repository root:

    python -m exercises check encoder_block

forward may ignore return_weights (the checker never asks for the weights).
The reference version is `TransformerEncoderBlock` in 04_transformer_block.py; after the checker
has had its say, `python -m exercises compare encoder_block` shows it beside yours.
"""
import torch.nn as nn

from common import load_lesson

MultiHeadAttention = load_lesson(2).MultiHeadAttention  # forward(q, k, v, mask) -> (output, weights)
FeedForward = load_lesson(4).FeedForward                # forward(x) -> (B, T, d_model), position by position


class TransformerEncoderBlock(nn.Module):
    """Self-attention and a feed-forward, each wrapped in a residual connection and a LayerNorm.

    norm_first=False is post-LN (the paper's placement), norm_first=True pre-LN (most modern code):
    equal to nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, norm_first=norm_first,
    batch_first=True) with the same weights (activation ReLU). norm1 belongs to the attention
    sublayer, norm2 to the feed-forward. Dropout as in that layer: in training mode on the attention
    weights, inside the feed-forward, and on each sublayer's output (dropout1, dropout2) before it
    joins the residual; in eval mode, none.
    forward(x (B, T, d_model), mask=None) -> (B, T, d_model); mask as in lesson 02, True = may attend.
    With return_weights=True it returns (x, attention weights (B, n_heads, T, T)).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout=dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x, mask=None, return_weights: bool = False):
        raise NotImplementedError("write TransformerEncoderBlock.forward, then run: "
                                  "python -m exercises check encoder_block")
