"""Exercise: the causal mask (lesson 01), from memory.

Replace the body of the function below, then check it from the repository root:

    python -m exercises check causal_mask

The reference version is `causal_mask` in 01_attention_mechanism.py; after the checker has had its
say, `python -m exercises compare causal_mask` shows it beside yours.
"""
import torch  # noqa: F401


def causal_mask(T: int, device=None) -> torch.Tensor:
    """A (T, T) boolean mask, True on and below the diagonal: query t may attend to keys 0..t.

    True = may attend (the convention of F.scaled_dot_product_attention). Row = query position,
    column = key position; everything above the diagonal is the future and is blocked.
    """
    raise NotImplementedError("write causal_mask, then run: python -m exercises check causal_mask")
