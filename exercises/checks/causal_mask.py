"""Checks of the `causal_mask` exercise: causal_mask(T, device=None) -> a (T, T) boolean mask.

True on and below the diagonal (query t may attend to keys 0..t), dtype bool, the same attention
as PyTorch's is_causal=True, and the `device` argument used. A wrong mask is compared with the
known mistakes in CAUSAL_MISTAKES (upper triangle, inverted, diagonal missing) to name the one made.
"""
import torch
import torch.nn.functional as F

from exercises.checks.helpers import (CheckFailed, Checklist, compare, describe, expect, expect_kind, expect_shape,
                                      randn)

CHECKS = Checklist()


CAUSAL_MISTAKES = [
    ("True above the diagonal lets each query see the future and hides the past: keep the lower "
     "triangle, torch.tril", lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool))),
    ("True marks the blocked positions here (nn.MultiheadAttention's convention); in this course "
     "True = may attend, so the allowed lower triangle is True", lambda T: ~torch.tril(torch.ones(T, T, dtype=torch.bool))),
    ("the diagonal is missing: query t may attend to itself (keys 0..t, t included): torch.tril(..., diagonal=0)",
     lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)),
]


def _compare_mask(T, mask):
    expected = torch.tril(torch.ones(T, T, dtype=torch.bool))
    expect_shape(f"causal_mask({T})", mask, (T, T))
    expect(mask.dtype == torch.bool, f"causal_mask({T}) has dtype {mask.dtype}, expected torch.bool",
           "hint: a boolean mask selects (True = may attend); create it with dtype=torch.bool "
           "(torch.tril(torch.ones(T, T)) alone is float)")
    wrong = mask.cpu() != expected
    if wrong.any():
        row, col = (int(i) for i in wrong.nonzero()[0])
        hint = next((h for h, make in CAUSAL_MISTAKES if torch.equal(mask.cpu(), make(T))), "")
        raise CheckFailed(f"causal_mask({T})[{row}, {col}] (query {row}, key {col}) is {bool(mask[row, col])}, "
                          f"expected {bool(expected[row, col])} ({int(wrong.sum())} of {T * T} entries wrong)",
                          hint and "hint: " + hint)


@CHECKS.add("causal_mask(5) is a (5, 5) tensor of dtype torch.bool")
def causal_shape(fn):
    mask = fn(5)
    expect_shape("causal_mask(5)", mask, (5, 5))
    expect(mask.dtype == torch.bool, f"causal_mask(5) has dtype {mask.dtype}, expected torch.bool",
           "hint: create it with dtype=torch.bool: a float 0/1 mask would be added to the scores, "
           "not used to select")


@CHECKS.add("values for T = 1, 2, 5, 8: True on and below the diagonal")
def causal_values(fn):
    for T in (1, 2, 5, 8):
        _compare_mask(T, fn(T))


@CHECKS.add("as attn_mask of F.scaled_dot_product_attention it equals is_causal=True")
def causal_in_attention(fn):
    T = 6
    q, k, v = randn(2, T, 8), randn(2, T, 8), randn(2, T, 4)
    mask = fn(T)
    expect_kind(f"causal_mask({T})", mask)
    compare("output with your mask", F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            hint="check the mask's values (the check above) and its dtype: a float mask is added to the "
                 "scores instead of selecting keys")


DEVICE_HINT = ("pass device=device to the tensor you create, e.g. torch.ones(T, T, dtype=torch.bool, "
               "device=device), so the mask lives where the scores are")


@CHECKS.add("the device argument is used")
def causal_device(fn):
    if torch.cuda.is_available():
        mask = fn(4, device=torch.device("cuda"))
        expect(torch.is_tensor(mask) and mask.device.type == "cuda",
               f"causal_mask(4, device='cuda') returned {describe(mask)} on "
               f"{getattr(mask, 'device', 'no device')}", "hint: " + DEVICE_HINT)
        return
    # Without CUDA, creating a tensor on "cuda" raises; a mask that comes back means the device was ignored.
    try:
        mask = fn(4, device=torch.device("cuda"))
    except (AssertionError, RuntimeError):
        return
    raise CheckFailed(f"causal_mask(4, device='cuda') returned {describe(mask)} on "
                      f"{getattr(mask, 'device', 'no device')}, on a machine without CUDA: the device "
                      f"argument was ignored", "hint: " + DEVICE_HINT)
