"""Lesson 03: positional encoding. (SKELETON: building blocks only; sections to be written.)"""
import torch
import torch.nn as nn


# %% Building blocks
def sinusoidal_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table of sinusoidal positions.

    PE[p, 2i]   = sin(p / 10000^(2i / d_model))
    PE[p, 2i+1] = cos(p / 10000^(2i / d_model))
    Sines in even columns, cosines in odd columns (interleaved, as in the paper).
    """
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)            # (ceil(d_model/2),)
    # wavelength factor 10000^(2i / d_model), one per dimension pair
    denominator = torch.pow(10000.0, two_i / d_model)
    angles = position / denominator                                     # (max_len, ceil(d_model/2))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return pe


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table to token embeddings: (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, d_model: int, max_len: int = 512, dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.dropout = nn.Dropout(dropout)
        # A buffer: moves with .to(device), is not trained, and is not saved in checkpoints
        # (it is recomputed from the formula).
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x):
        T = x.size(1)
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds the positional encoding's max_len {self.max_len}")
        return self.dropout(x + self.pe[:T])  # (B, T, d_model) + (T, d_model) broadcasts over B
