"""Checks of the `causal_mask` exercise: causal_mask(T, device=None) -> a (T, T) boolean mask.

True on and below the diagonal (query t may attend to keys 0..t), dtype bool, the same attention
as PyTorch's is_causal=True, and the `device` argument used. A wrong mask is compared with the
known mistakes in CAUSAL_MISTAKES (upper triangle, inverted, diagonal missing) to name the one made.
The values are checked at T = 5 first: at T = 1 a missing diagonal and an inverted mask look alike.
"""
import torch
import torch.nn.functional as F

from exercises.checks.helpers import (CheckFailed, Checklist, Hint, call, compare, describe, expect, expect_kind,
                                      expect_shape, randn)

CHECKS = Checklist()

UPPER_TRIANGLE = Hint(
    "upper triangle", "Your mask is True above the diagonal: look at which triangle you keep.",
    "Row t is query t; it may see keys 0..t, the past and itself, which lie on and below the diagonal. "
    "Above the diagonal is the future.", "torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))")
MASK_POLARITY = Hint(
    "mask polarity", "Your mask is False exactly where a query may attend: look at whether True means blocked "
    "in your code.", "In this course True = may attend (as F.scaled_dot_product_attention); True = blocked is "
    "nn.MultiheadAttention's convention.", "torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))")
DIAGONAL_MISSING = Hint(
    "diagonal missing", "Your mask is False on the diagonal: look at the diagonal argument of your triangle.",
    "Query t may attend to itself: keys 0..t include t. A strict triangle blocks the token from seeing itself, "
    "and the first query then sees nothing at all.", "torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=0)")
MASK_DTYPE = Hint(
    "mask dtype", "The mask is not boolean: look at the dtype of the tensor you build it from.",
    "A boolean mask selects keys (True = may attend); a float 0/1 mask would be added to the scores, which is "
    "another convention (0 and -inf).", "torch.ones(T, T, dtype=torch.bool) (torch.ones alone is float)")
CAUSAL_MISTAKES = [
    (UPPER_TRIANGLE, lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool))),
    (DIAGONAL_MISSING, lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)),
    (MASK_POLARITY, lambda T: ~torch.tril(torch.ones(T, T, dtype=torch.bool))),
    (UPPER_TRIANGLE, lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)),  # future only
]


def _compare_mask(T, mask):
    expected = torch.tril(torch.ones(T, T, dtype=torch.bool))
    expect_shape(f"causal_mask({T})", mask, (T, T))
    expect(mask.dtype == torch.bool, f"causal_mask({T}) has dtype {mask.dtype}, expected torch.bool", hint=MASK_DTYPE)
    wrong = mask.cpu() != expected
    if wrong.any():
        row, col = (int(i) for i in wrong.nonzero()[0])
        hint = next((h for h, make in CAUSAL_MISTAKES if torch.equal(mask.cpu(), make(T))), None)
        raise CheckFailed(f"causal_mask({T})[{row}, {col}] (query {row}, key {col}) is {bool(mask[row, col])}, "
                          f"expected {bool(expected[row, col])} ({int(wrong.sum())} of {T * T} entries wrong)",
                          hint=hint)


@CHECKS.add("causal_mask(5) is a (5, 5) tensor of dtype torch.bool")
def causal_shape(fn):
    mask = call(fn, 5)
    expect_shape("causal_mask(5)", mask, (5, 5))
    expect(mask.dtype == torch.bool, f"causal_mask(5) has dtype {mask.dtype}, expected torch.bool", hint=MASK_DTYPE)


@CHECKS.add("values for T = 5, 8, 2, 1: which keys each query may attend to")
def causal_values(fn):
    for T in (5, 8, 2, 1):  # T = 1 last: there a missing diagonal and an inverted mask look alike
        _compare_mask(T, call(fn, T))


@CHECKS.add("as attn_mask of F.scaled_dot_product_attention it equals is_causal=True")
def causal_in_attention(fn):
    T = 6
    q, k, v = randn(2, T, 8), randn(2, T, 8), randn(2, T, 4)
    mask = call(fn, T)
    expect_kind(f"causal_mask({T})", mask)
    expect_shape(f"causal_mask({T})", mask, (T, T))
    hint = MASK_DTYPE if mask.dtype != torch.bool else next(
        (h for h, make in CAUSAL_MISTAKES if torch.equal(mask.cpu(), make(T))), None)
    compare("output with your mask", F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            F.scaled_dot_product_attention(q, k, v, is_causal=True), hint=hint)


DEVICE_IGNORED = Hint(
    "device ignored", "The mask comes back on the CPU whatever device is asked for: look at the line that "
    "creates it.", "Tensors are created on the CPU unless told otherwise; the mask must live where the scores "
    "are, or masked_fill fails on a GPU.", "torch.ones(T, T, dtype=torch.bool, device=device)")


def _cuda_usable() -> bool:
    """Whether this process can create CUDA tensors (not in a child forked after its parent used CUDA)."""
    if not torch.cuda.is_available():
        return False
    try:
        torch.empty(0, device="cuda")
        return True
    except RuntimeError:
        return False


def _where(fn, *args, **kwargs):
    """fn(...)'s result in words and its device: all the check needs, and no CUDA tensor to pass on."""
    result = fn(*args, **kwargs)
    return torch.is_tensor(result), describe(result), str(getattr(result, "device", "no device"))


@CHECKS.add("the device argument is used")
def causal_device(fn):
    if call(_cuda_usable):  # asked through call(): a re-check elsewhere follows the same branch
        is_tensor, what, device = call(_where, fn, 4, device=torch.device("cuda"))
        expect(is_tensor and device.startswith("cuda"), f"causal_mask(4, device='cuda') returned {what} on {device}",
               hint=DEVICE_IGNORED)
        return
    # Without CUDA, creating a tensor on "cuda" raises; a mask that comes back means the device was ignored.
    try:
        mask = call(fn, 4, device=torch.device("cuda"))
    except (AssertionError, RuntimeError):
        return
    raise CheckFailed(f"causal_mask(4, device='cuda') returned {describe(mask)} on "
                      f"{getattr(mask, 'device', 'no device')}, on a machine without CUDA: the device "
                      f"argument was ignored", hint=DEVICE_IGNORED)
