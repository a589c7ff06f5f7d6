"""Lesson 04: the transformer encoder block. (SKELETON: building blocks only; sections to be written.)"""
import torch.nn as nn

from common import load_lesson

# Reused from lesson 02 (one source for each component).
MultiHeadAttention = load_lesson(2).MultiHeadAttention


# %% Building blocks
class FeedForward(nn.Module):
    """Position-wise feed-forward: the same two-layer MLP applied to every token on its own.

    FFN(x) = linear2(dropout(relu(linear1(x)))), d_model -> d_ff -> d_model.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))  # (B, T, d_model)


class TransformerEncoderBlock(nn.Module):
    """Self-attention and a feed-forward, each wrapped in a residual connection and a LayerNorm.

    post-LN (norm_first=False, the paper): x = norm(x + sublayer(x))
    pre-LN  (norm_first=True, most modern code): x = x + sublayer(norm(x))
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

    def _attend(self, x, mask, return_weights):
        out, weights = self.self_attn(x, x, x, mask=mask, need_weights=return_weights)
        return self.dropout1(out), weights

    def forward(self, x, mask=None, return_weights: bool = False):
        if self.norm_first:
            attended, weights = self._attend(self.norm1(x), mask, return_weights)
            x = x + attended
            x = x + self.dropout2(self.feed_forward(self.norm2(x)))
        else:
            attended, weights = self._attend(x, mask, return_weights)
            x = self.norm1(x + attended)
            x = self.norm2(x + self.dropout2(self.feed_forward(x)))
        return (x, weights) if return_weights else x


class TransformerEncoder(nn.Module):
    """n_layers encoder blocks in a row (plus a final LayerNorm when pre-LN).

    forward(x (B, T, d_model), mask=None) -> (B, T, d_model);
    with return_weights=True -> (x, [weights of each layer, (B, n_heads, T, T)]).
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 norm_first: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderBlock(d_model, n_heads, d_ff, dropout, norm_first) for _ in range(n_layers)
        )
        # Pre-LN leaves the last block's output un-normalised, so a final LayerNorm follows.
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x, mask=None, return_weights: bool = False):
        all_weights = []
        for layer in self.layers:
            if return_weights:
                x, weights = layer(x, mask, return_weights=True)
                all_weights.append(weights)
            else:
                x = layer(x, mask)
        x = self.norm(x)
        return (x, all_weights) if return_weights else x
