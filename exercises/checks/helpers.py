"""What every exercise's checks share: a list to register checks in, and ways to say what is wrong.

A check is a function of the learner's implementation. It returns when the implementation passes,
and raises CheckFailed with lines that say what is wrong otherwise: which values, the largest
difference and where, and a hint that names the likely mistake.

    CHECKS = Checklist()

    @CHECKS.add("no mask: output equals F.scaled_dot_product_attention")
    def no_mask(fn):
        compare("output", fn(q, k, v)[0], expected, variants=[("hint for mistake A", output_A)])
"""
import math
from typing import Callable, NamedTuple

import torch

# float32 tolerances: the lessons' code and PyTorch's agree to ~1e-7 at these sizes.
ATOL = 1e-5
RTOL = 1e-4
NEG_INF = float("-inf")


class CheckFailed(Exception):
    """A check's verdict: lines that say what is wrong, the last one usually a hint."""

    def __init__(self, *lines):
        super().__init__(lines[0] if lines else "")
        self.lines = [line for line in lines if line]


class Check(NamedTuple):
    title: str                 # what the learner reads: "causal mask (T, T): equals ..."
    run: Callable              # run(implementation): returns, or raises CheckFailed
    on_error: str = ""         # hint shown when the learner's code raises a shape error here


class Checklist(list):
    """An exercise's checks, in the order they run."""

    def add(self, title: str, on_error: str = ""):
        """Decorator: register fn(implementation) as the next check, titled `title`.

        on_error: a hint shown when the learner's code raises an exception about shapes here.
        """

        def register(fn):
            self.append(Check(title, fn, on_error))
            return fn

        return register


# ----------------------------------------------------------------------------------------------
# Small random inputs
def randn(*shape):
    return torch.randn(*shape)


def random_mask(*shape, p_keep=0.6):
    """A random boolean mask (True = may attend) with at least one True in every row."""
    mask = torch.rand(*shape) < p_keep
    first = torch.randint(0, shape[-1], shape[:-1])
    mask.scatter_(-1, first.unsqueeze(-1), True)
    return mask


# ----------------------------------------------------------------------------------------------
# Words for shapes and numbers
def shape_str(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def num(x) -> str:
    """A number for reading: 4 significant digits."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.4g}"


def unravel(flat: int, shape) -> tuple:
    """The index (i, j, ...) of entry number `flat` in a tensor of `shape` (row-major)."""
    index = []
    for size in reversed(tuple(shape)):
        index.append(int(flat) % int(size))
        flat = int(flat) // int(size)
    return tuple(reversed(index))


def describe(obj) -> str:
    """What a returned object is, in a few words: 'a tensor of shape (2, 3)', 'a tuple of 3'."""
    if torch.is_tensor(obj):
        return f"a tensor of shape {shape_str(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    if type(obj).__module__ == "numpy" and hasattr(obj, "shape"):
        return f"a numpy array of shape {shape_str(obj.shape)}"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


# ----------------------------------------------------------------------------------------------
# The kind of tensor a result is: a tensor at all, real, on the inputs' device, of their dtype
CPU = torch.device("cpu")  # where the checks' inputs are


def dtype_hint(actual: torch.dtype, expected: torch.dtype) -> str:
    """The likely cause of a result of dtype `actual` where `expected` was due."""
    if expected == torch.bool:
        return ("a mask selects keys with True and False: make it with dtype=torch.bool (a float mask is added "
                "to the scores instead)")
    if actual == torch.bool:
        return "a boolean result: it came out of a comparison (==, <, ...); the values themselves were due"
    if not actual.is_floating_point:
        return ("integer values: a tensor made from integers (torch.arange(n), torch.tensor([1, 2])) or a "
                "rounding turned the result into integers; make it a float tensor, e.g. "
                "torch.arange(n, dtype=torch.float32)")
    if actual == torch.float64:
        return ("a float64 tensor in the computation (e.g. one made with dtype=torch.float64, or .double()) "
                f"turned the result into float64; keep {expected}, the dtype of the inputs")
    if actual.itemsize < expected.itemsize:
        return (f"{actual} holds fewer digits than {expected}: a conversion (.half(), .bfloat16(), .to(...)) "
                f"lost precision; keep {expected}, the dtype of the inputs")
    return f"keep {expected}, the dtype of the inputs"


def expect_kind(what, actual, dtype=None, device=CPU, legend=""):
    """Fail unless `actual` is a real tensor on `device` (and of `dtype`, when given)."""
    if not torch.is_tensor(actual):
        hint = ("the checker compares torch tensors: compute with torch (torch.from_numpy(array) turns an "
                "array into one)" if describe(actual).startswith("a numpy array") else "")
        raise CheckFailed(f"{what}: expected a tensor{legend}, got {describe(actual)}", hint and "hint: " + hint)
    if actual.is_complex():
        raise CheckFailed(f"{what}: complex values (dtype {actual.dtype}); expected real ones",
                          "hint: an imaginary part came in (a complex number such as 1j, torch.polar, torch.fft, "
                          "a .to(torch.cfloat)): compute with real tensors, or keep only .real")
    if actual.device != device:
        meta = " (a meta tensor holds no values)" if actual.device.type == "meta" else ""
        raise CheckFailed(f"{what}: on device {actual.device}{meta}; expected {device}, where the inputs are",
                          "hint: create new tensors on the inputs' device (e.g. torch.zeros(..., "
                          "device=query.device)); don't move the result with .to(...), .cuda() or .cpu()")
    if dtype is not None and actual.dtype != dtype:
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected {dtype}",
                          "hint: " + dtype_hint(actual.dtype, dtype))


# ----------------------------------------------------------------------------------------------
# Expectations about a result
def expect(condition: bool, *lines):
    """Raise CheckFailed(*lines) unless condition holds."""
    if not condition:
        raise CheckFailed(*lines)


def expect_shape(what, tensor, shape, hints=None, legend="", device=CPU):
    """Fail unless `tensor` is a real tensor of `shape` on `device`; hints maps a wrong shape to its likely cause."""
    expect_kind(what, tensor, device=device, legend=f" of shape {shape_str(shape)}{legend}")
    got = tuple(tensor.shape)
    if got != tuple(shape):
        hint = (hints or {}).get(got, "")
        raise CheckFailed(f"{what}: expected shape {shape_str(shape)}{legend}, got {shape_str(got)}",
                          hint and "hint: " + hint)


def expect_no_nan(what, tensor, why, hint):
    nan = torch.isnan(tensor)
    if nan.any():
        where = tuple(int(i) for i in nan.nonzero()[0])
        raise CheckFailed(f"{what}: NaN at index {where} {why}", "hint: " + hint)


def expect_pair(result, names="(output, weights)"):
    expect(isinstance(result, (tuple, list)) and len(result) == 2,
           f"expected a pair {names}, got {describe(result)}",
           f"hint: end with `return {names.strip('()')}`")
    return result


def call_keeping_inputs(fn, *args, names=(), **kwargs):
    """fn(*args, **kwargs), failing if it changed a tensor argument in place (names: the args' names)."""
    named = list(zip(names, args)) + list(kwargs.items())
    before = [(name, arg, arg.clone()) for name, arg in named if torch.is_tensor(arg)]
    result = fn(*args, **kwargs)
    for name, arg, copy in before:
        if not (arg.shape == copy.shape and torch.equal(arg, copy)):
            raise CheckFailed(f"your code changed its argument {name} in place",
                              "hint: an in-place operation (x /= ..., x.div_(...), masked_fill_, ...) on an input "
                              "changes the caller's tensor too; compute a new tensor instead (x / ..., masked_fill)")
    return result


# ----------------------------------------------------------------------------------------------
# Comparing a result with the reference
def _close(a, b, atol, rtol) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def _as_float64(t):
    return t.detach().to("cpu").to(torch.float64)


def _shape_hint(actual_shape, expected_shape) -> str:
    a, e = tuple(actual_shape), tuple(expected_shape)
    if len(a) == len(e) and sorted(a) == sorted(e):
        return "the same sizes in another order: a transpose missing, extra, or on the wrong dims?"
    if math.prod(a) == math.prod(e):
        return "the same number of values: a view/reshape to the wrong shape?"
    if len(a) == len(e) - 1:
        return "one dimension fewer than expected: something was summed, averaged or squeezed away?"
    return ""


def _generic_hint(a, e) -> str:
    """Patterns that fit many mistakes: transposed, off by a constant factor."""
    if a.dim() >= 2 and a.shape[-1] == a.shape[-2] and _close(a, e.transpose(-2, -1), 1e-4, 1e-3):
        return "your values are the expected ones transposed (rows and columns swapped)"
    usable = torch.isfinite(a) & torch.isfinite(e) & (e.abs() > 1e-3)
    if int(usable.sum()) >= 3:
        ratio = a[usable] / e[usable]
        spread = float(ratio.max() - ratio.min())
        factor = float(ratio.mean())
        if spread < 1e-3 * max(abs(factor), 1e-6) and abs(factor - 1) > 1e-3:
            return f"every value is {num(factor)} times the expected one: a scale factor too many or missing?"
    return ""


def compare(what: str, actual, expected, variants=(), hint: str = "", atol: float = ATOL, rtol: float = RTOL):
    """Pass if `actual` equals `expected` within tolerance; else raise CheckFailed explaining how.

    actual must be a real tensor of expected's shape, device and dtype. variants: (hint, tensor or
    zero-argument function) pairs, each a known mistake computed on the same inputs; the first one
    the learner's result matches gives the hint. They are computed only when the comparison fails.
    Without a matching variant, a transposed result or one off by a constant factor is recognised;
    else `hint` is shown.
    """
    expect_kind(what, actual, device=expected.device, legend=f" of shape {shape_str(expected.shape)}")
    if tuple(actual.shape) != tuple(expected.shape):
        found = match_variant(actual, variants, expected) or _shape_hint(actual.shape, expected.shape) or hint
        raise CheckFailed(f"{what}: expected shape {shape_str(expected.shape)}, got {shape_str(actual.shape)}",
                          found and "hint: " + found)
    if actual.dtype != expected.dtype:
        bool_hint = hint if torch.bool in (actual.dtype, expected.dtype) else ""
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected {expected.dtype}",
                          "hint: " + (bool_hint or dtype_hint(actual.dtype, expected.dtype)))
    a, e = _as_float64(actual), _as_float64(expected)
    new_nan = torch.isnan(a) & ~torch.isnan(e)
    if new_nan.any():
        where = tuple(int(i) for i in new_nan.nonzero()[0])
        found = match_variant(actual, variants, expected)
        raise CheckFailed(
            f"{what}: NaN at index {where} ({int(new_nan.sum())} NaN values in all); expected {num(e[where])}",
            "hint: " + (found or hint or "a NaN usually comes from softmax over a row where every score is -inf "
                        "(0/0), or from dividing by zero"))
    if _close(a, e, atol, rtol):
        return
    diff = (a - e).abs().nan_to_num(nan=float("inf"))
    flat = int(diff.argmax())
    where = unravel(flat, a.shape)
    n_wrong = int((diff > atol + rtol * e.abs()).sum())
    lines = [f"{what}: largest difference {num(diff.max())} at index {where}: expected {num(e[where])}, "
             f"got {num(a[where])} ({n_wrong} of {a.numel()} values differ)"]
    found = match_variant(actual, variants, expected) or _generic_hint(a, e)
    if found or hint:
        lines.append("hint: " + (found or hint))
    raise CheckFailed(*lines)


def match_variant(actual, variants, expected=None) -> str:
    """The hint of the first known mistake (hint, tensor or function) whose result `actual` equals.

    A mistake that gives the right result on these inputs (an inverted mask when there is no mask)
    says nothing about this result: it is skipped when `expected` is given.
    """
    a = _as_float64(actual)
    e = None if expected is None else _as_float64(expected)
    for hint, variant in variants:
        try:
            v = variant() if callable(variant) else variant
        except Exception:  # a variant that does not apply to these inputs
            continue
        if v is None or tuple(v.shape) != tuple(a.shape):
            continue
        v = _as_float64(v)
        if _close(a, v, 1e-4, 1e-3) and not (e is not None and _close(v, e, ATOL, RTOL)):
            return hint
    return ""
