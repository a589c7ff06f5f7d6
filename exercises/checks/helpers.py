"""What every exercise's checks share: a list to register checks in, and ways to say what is wrong.

A check is a function of the learner's implementation. It returns when the implementation passes,
and raises CheckFailed with lines that say what is wrong otherwise (which values, the largest
difference and where) and a Hint that names the likely mistake in three levels: the symptom and
where to look, the idea behind it, the line of code.

    CHECKS = Checklist()

    @CHECKS.add("no mask: output equals F.scaled_dot_product_attention")
    def no_mask(fn):
        output = call(fn, q, k, v)           # every call into the learner's code goes through call()
        compare("output", output, expected, variants=[(HINT_A, output_with_mistake_A)])

Two rules keep a check repeatable in another process (the checker replays it there to confirm a
pass, see exercises/_channel.py): its random inputs come from this module's generator (randn,
rand, randint, random_mask, reference_module), never from torch's global one, which the learner's
code also draws from; and it reaches the learner's code only through call().
"""
import math
import re
from typing import Callable, NamedTuple

import torch

# float32 tolerances: the lessons' code and PyTorch's agree to ~1e-7 at these sizes.
ATOL = 1e-5
RTOL = 1e-4
NEG_INF = float("-inf")


class Hint(NamedTuple):
    """A hint in three levels; the checker shows the first, `--hint 2` and `--hint 3` the others."""

    key: str      # a short name for the mistake (the tests assert which hint an attempt gets)
    look: str     # level 1: the symptom, and where in your code to look
    concept: str  # level 2: the idea your code gets wrong
    code: str     # level 3: the line of code

    def levels(self, upto: int) -> list:
        return [text for text in (self.look, self.concept, self.code)[:upto] if text]


class CheckFailed(Exception):
    """A check's verdict: lines that say what is wrong, and a Hint when the likely mistake is known."""

    def __init__(self, *lines, hint: Hint = None):
        super().__init__(lines[0] if lines else "")
        self.lines = [line for line in lines if line]
        self.hint = hint


class Check(NamedTuple):
    title: str                 # what the learner reads: no formula in it (it is shown in --exam too)
    run: Callable              # run(implementation): returns, or raises CheckFailed
    on_error: Hint = None      # shown when the learner's code raises an exception about shapes here


class Checklist(list):
    """An exercise's checks, in the order they run: the first failure should point at the cause."""

    def __init__(self, line_hints=()):
        super().__init__()
        # (regular expression, Hint): when the learner's code raises, the line that raised is
        # matched against these first (e.g. `key.T` on a batched tensor).
        self.line_hints = list(line_hints)

    def add(self, title: str, on_error: Hint = None):
        """Decorator: register fn(implementation) as the next check, titled `title`."""

        def register(fn):
            self.append(Check(title, fn, on_error))
            return fn

        return register

    def hint_for_line(self, code_line: str):
        return next((hint for pattern, hint in self.line_hints if re.search(pattern, code_line or "")), None)


# ----------------------------------------------------------------------------------------------
# How the checks reach the learner's code
def _direct(fn, args, kwargs):
    return fn(*args, **kwargs)


_route = [_direct]  # replaced while a check runs in the sandbox (records) or is replayed (returns records)


def call(fn, *args, **kwargs):
    """Call the learner's function, class or module: every check reaches the learner's code here."""
    return _route[0](fn, args, kwargs)


class routed:
    """`with routed(route):` sends call() through route(fn, args, kwargs) instead of calling fn."""

    def __init__(self, route):
        self.route = route

    def __enter__(self):
        self.previous, _route[0] = _route[0], self.route
        return self.route

    def __exit__(self, *exc_info):
        _route[0] = self.previous
        return False


# ----------------------------------------------------------------------------------------------
# Small random inputs, from the checks' own generator (reseeded before each check)
GENERATOR = torch.Generator().manual_seed(0)


def reseed(seed: int):
    GENERATOR.manual_seed(seed)


def randn(*shape):
    return torch.randn(*shape, generator=GENERATOR)


def rand(*shape):
    return torch.rand(*shape, generator=GENERATOR)


def randint(low, high, shape):
    return torch.randint(low, high, shape, generator=GENERATOR)


def random_mask(*shape, p_keep=0.6):
    """A random boolean mask (True = may attend) with at least one True in every row."""
    mask = rand(*shape) < p_keep
    first = randint(0, shape[-1], shape[:-1])
    mask.scatter_(-1, first.unsqueeze(-1), True)
    return mask


def reference_module(factory):
    """factory(), e.g. PyTorch's nn.MultiheadAttention, with weights drawn from the checks' generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(randint(0, 2**31 - 1, ())))
        return factory()


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


class Opaque:
    """A returned object that could not be sent between processes: only its description is kept."""

    def __init__(self, description: str):
        self.description = description


def describe(obj) -> str:
    """What a returned object is, in a few words: 'a tensor of shape (2, 3)', 'a tuple of 3'."""
    if isinstance(obj, Opaque):
        return obj.description
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

NUMPY_HINT = Hint("numpy result", "Your function returned a numpy array where a torch tensor was due: look at "
                  "the line that builds the result.",
                  "The checker (and every later lesson) composes tensors: autograd, devices and dtypes "
                  "only exist for torch tensors.",
                  "compute with torch operations; torch.from_numpy(array) turns an array into a tensor")
COMPLEX_HINT = Hint("complex result", "The result has complex values: look for a complex number (1j), "
                    "torch.polar, torch.fft or a .to(torch.cfloat) in your code.",
                    "Every quantity here is real; a complex dtype also makes every later operation complex.",
                    "compute with real tensors (torch.sin, torch.cos), or keep only .real")
DEVICE_HINT = Hint("wrong device", "The result lives on another device than the inputs: look at the lines "
                   "that create new tensors or move the result.",
                   "A function should work wherever its inputs are: create new tensors on the inputs' "
                   "device and never move the result.",
                   "torch.zeros(..., device=query.device); no .to(...), .cuda() or .cpu() on the result")


def dtype_hint(actual: torch.dtype, expected: torch.dtype) -> Hint:
    """The likely cause of a result of dtype `actual` where `expected` was due."""
    if expected == torch.bool:
        return Hint("mask dtype", f"The mask has dtype {actual}: look at the line that creates it.",
                    "A boolean mask selects keys (True = may attend); a float mask would be added to the "
                    "scores instead, a different convention.",
                    "create it with dtype=torch.bool, e.g. torch.ones(T, T, dtype=torch.bool)")
    if actual == torch.bool:
        return Hint("boolean result", "A boolean result: the values came out of a comparison (==, <, ...); "
                    "look at the last line of your computation.",
                    "The values themselves were due, not a test on them.",
                    "return the tensor before the comparison")
    if not actual.is_floating_point:
        return Hint("integer result", "Integer values: look for a tensor made from integers (torch.arange(n), "
                    "torch.tensor([1, 2])) or a rounding.",
                    "Arithmetic on integer tensors stays integer (or rounds); results here are real numbers.",
                    "torch.arange(n, dtype=torch.float32), or .float() before dividing")
    if actual == torch.float64:
        return Hint("float64 result", "The result is float64: look for a tensor made with dtype=torch.float64, "
                    "a .double() or a numpy array in the computation.",
                    f"One float64 operand turns the whole result into float64; the inputs are {expected}.",
                    f"compute in float64 if you like, then return .to({expected}) (or .float())")
    if actual.itemsize < expected.itemsize:
        return Hint("lower precision", f"{actual} holds fewer digits than {expected}: look for a .half(), "
                    ".bfloat16() or .to(...) in your code.",
                    f"The inputs are {expected}; converting down loses precision the checker can see.",
                    f"keep {expected}, the dtype of the inputs")
    return Hint("other dtype", f"The result is {actual}: look for a conversion in your code.",
                f"Keep the dtype of the inputs, {expected}.", f"keep {expected}")


def expect_kind(what, actual, dtype=None, device=CPU, legend=""):
    """Fail unless `actual` is a real tensor on `device` (and of `dtype`, when given)."""
    if not torch.is_tensor(actual):
        raise CheckFailed(f"{what}: expected a tensor{legend}, got {describe(actual)}",
                          hint=NUMPY_HINT if describe(actual).startswith("a numpy array") else None)
    if actual.is_complex():
        raise CheckFailed(f"{what}: complex values (dtype {actual.dtype}); expected real ones", hint=COMPLEX_HINT)
    if actual.device != device:
        meta = " (a meta tensor holds no values)" if actual.device.type == "meta" else ""
        raise CheckFailed(f"{what}: on device {actual.device}{meta}; expected {device}, where the inputs are",
                          hint=DEVICE_HINT)
    if dtype is not None and actual.dtype != dtype:
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected {dtype}", hint=dtype_hint(actual.dtype, dtype))


# ----------------------------------------------------------------------------------------------
# Expectations about a result
def expect(condition: bool, *lines, hint: Hint = None):
    """Raise CheckFailed(*lines, hint=hint) unless condition holds."""
    if not condition:
        raise CheckFailed(*lines, hint=hint)


def expect_shape(what, tensor, shape, hints=None, legend="", device=CPU):
    """Fail unless `tensor` is a real tensor of `shape` on `device`; hints maps a wrong shape to its Hint."""
    expect_kind(what, tensor, device=device, legend=f" of shape {shape_str(shape)}{legend}")
    got = tuple(tensor.shape)
    if got != tuple(shape):
        raise CheckFailed(f"{what}: expected shape {shape_str(shape)}{legend}, got {shape_str(got)}",
                          hint=(hints or {}).get(got) or shape_hint(got, shape))


def expect_no_nan(what, tensor, why, hint: Hint):
    nan = torch.isnan(tensor)
    if nan.any():
        where = tuple(int(i) for i in nan.nonzero()[0])
        raise CheckFailed(f"{what}: NaN at index {where} {why}", hint=hint)


RETURN_PAIR_HINT = "return {names}"


def expect_pair(result, names="(output, weights)"):
    pair = names.strip("()")
    expect(isinstance(result, (tuple, list)) and len(result) == 2,
           f"expected a pair {names}, got {describe(result)}",
           hint=Hint("return a pair", f"Your function returned {describe(result)}: look at its return line.",
                     f"The contract is a pair {names}, in that order.", f"return {pair}"))
    return result


IN_PLACE_HINT = Hint("in place", "Your code changed one of its inputs: look for an in-place operation on an "
                     "argument (x /= ..., x.div_(...), masked_fill_, x[...] = ...).",
                     "The caller's tensor is the same object as your argument: changing it in place changes "
                     "the caller's data too (and breaks autograd).",
                     "compute a new tensor instead: x = x / ..., scores.masked_fill(...) without the underscore")


def call_keeping_inputs(fn, *args, names=(), **kwargs):
    """call(fn, *args, **kwargs), failing if it changed a tensor argument in place (names: the args' names)."""
    named = list(zip(names, args)) + list(kwargs.items())
    before = [(name, arg, arg.clone()) for name, arg in named if torch.is_tensor(arg)]
    result = call(fn, *args, **kwargs)
    for name, arg, copy in before:
        if not (arg.shape == copy.shape and torch.equal(arg, copy)):
            raise CheckFailed(f"your code changed its argument {name} in place", hint=IN_PLACE_HINT)
    return result


# ----------------------------------------------------------------------------------------------
# Comparing a result with the reference
def _close(a, b, atol, rtol) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def _as_float64(t):
    return t.detach().to("cpu").to(torch.float64)


def shape_hint(actual_shape, expected_shape):
    """A Hint for a result of the wrong shape, from the shapes alone (None when nothing fits)."""
    a, e = tuple(actual_shape), tuple(expected_shape)
    if len(a) == len(e) and sorted(a) == sorted(e):
        return Hint("dims in another order", f"The result has the right sizes in another order, {shape_str(a)} "
                    f"instead of {shape_str(e)}: look at your transposes.",
                    "A transpose is missing, extra, or swaps the wrong pair of dimensions.",
                    "x.transpose(-2, -1) swaps the last two dimensions only")
    if math.prod(a) == math.prod(e):
        return Hint("reshaped", f"The result has the right number of values in the shape {shape_str(a)}: look at "
                    "your view/reshape calls.", "A view or reshape to the wrong shape keeps the values but "
                    "not their meaning.", f"the result must be {shape_str(e)}")
    if len(a) == len(e) - 1:
        return Hint("dimension lost", "The result has one dimension fewer than expected: look for a sum, mean "
                    "or squeeze.", "A reduction removed a dimension the contract keeps.",
                    "keep the dimension (keepdim=True), or leave the reduction out")
    return None


def _generic_hint(a, e):
    """Patterns that fit many mistakes: transposed, off by a constant factor."""
    if a.dim() >= 2 and a.shape[-1] == a.shape[-2] and _close(a, e.transpose(-2, -1), 1e-4, 1e-3):
        return Hint("transposed result", "Your values are the expected ones transposed (rows and columns "
                    "swapped): look at which index is the row.", "Rows are queries (or positions), columns "
                    "are keys (or features).", "x.transpose(-2, -1), or swap the roles in the computation")
    usable = torch.isfinite(a) & torch.isfinite(e) & (e.abs() > 1e-3)
    if int(usable.sum()) >= 3:
        ratio = a[usable] / e[usable]
        spread = float(ratio.max() - ratio.min())
        factor = float(ratio.mean())
        if spread < 1e-3 * max(abs(factor), 1e-6) and abs(factor - 1) > 1e-3:
            return Hint("constant factor", f"Every value is {num(factor)} times the expected one: look for a "
                        "scale factor too many or missing.", "Only a constant multiplies the result: the "
                        "structure is right, a scale is not.", f"find where a factor {num(factor)} (or "
                        f"{num(1 / factor)}) comes in")
    return None


NAN_HINT = Hint("NaN", "NaN values: look for a softmax over a row where every score is -inf, or a division "
                "by zero.", "softmax over a row of -inf is 0/0 = NaN; a query with nothing to attend to needs "
                "its weights set to 0 explicitly.", "weights = weights.masked_fill(~mask, 0.0) after the softmax")


def compare(what: str, actual, expected, variants=(), hint: Hint = None, atol: float = ATOL, rtol: float = RTOL):
    """Pass if `actual` equals `expected` within tolerance; else raise CheckFailed explaining how.

    actual must be a real tensor of expected's shape, device and dtype. variants: (Hint, tensor or
    zero-argument function) pairs, each a known mistake computed on the same inputs; the first one
    the learner's result matches gives the hint. They are computed only when the comparison fails.
    Without a matching variant, a transposed result or one off by a constant factor is recognised;
    else `hint` is given.
    """
    expect_kind(what, actual, device=expected.device, legend=f" of shape {shape_str(expected.shape)}")
    if tuple(actual.shape) != tuple(expected.shape):
        found = match_variant(actual, variants, expected) or shape_hint(actual.shape, expected.shape) or hint
        raise CheckFailed(f"{what}: expected shape {shape_str(expected.shape)}, got {shape_str(actual.shape)}",
                          hint=found)
    if actual.dtype != expected.dtype:
        bool_hint = hint if torch.bool in (actual.dtype, expected.dtype) else None
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected {expected.dtype}",
                          hint=bool_hint or dtype_hint(actual.dtype, expected.dtype))
    a, e = _as_float64(actual), _as_float64(expected)
    new_nan = torch.isnan(a) & ~torch.isnan(e)
    if new_nan.any():
        where = tuple(int(i) for i in new_nan.nonzero()[0])
        raise CheckFailed(
            f"{what}: NaN at index {where} ({int(new_nan.sum())} NaN values in all); expected {num(e[where])}",
            hint=match_variant(actual, variants, expected) or hint or NAN_HINT)
    if _close(a, e, atol, rtol):
        return
    diff = (a - e).abs().nan_to_num(nan=float("inf"))
    flat = int(diff.argmax())
    where = unravel(flat, a.shape)
    n_wrong = int((diff > atol + rtol * e.abs()).sum())
    raise CheckFailed(f"{what}: largest difference {num(diff.max())} at index {where}: expected {num(e[where])}, "
                      f"got {num(a[where])} ({n_wrong} of {a.numel()} values differ)",
                      hint=match_variant(actual, variants, expected) or _generic_hint(a, e) or hint)


def match_variant(actual, variants, expected=None):
    """The Hint of the first known mistake (Hint, tensor or function) whose result `actual` equals.

    A mistake that gives the right result on these inputs (an inverted mask when there is no mask)
    says nothing about this result: it is skipped when `expected` is given. Where `actual` has NaN
    (a row with nothing left to attend to, often a consequence of the mistake), the other values
    decide: an inverted mask that empties a row is still named as an inverted mask.
    """
    if not torch.is_tensor(actual) or actual.is_complex():
        return None
    a = _as_float64(actual)
    e = None if expected is None else _as_float64(expected)
    finite = ~torch.isnan(a)
    for hint, variant in variants:
        try:
            v = variant() if callable(variant) else variant
        except Exception:  # a variant that does not apply to these inputs
            continue
        if v is None or tuple(v.shape) != tuple(a.shape):
            continue
        v = _as_float64(v)
        if e is not None and _close(v, e, ATOL, RTOL):
            continue
        if _close(a, v, 1e-4, 1e-3):
            return hint
        if not bool(finite.all()) and int(finite.sum()) >= a.numel() // 2 and _close(a[finite], v[finite], 1e-4, 1e-3):
            return hint
    return None


# ----------------------------------------------------------------------------------------------
# Dropout: the share of values it zeroes, with the interval a correct dropout stays in
def binomial_interval(p: float, n: int, z: float = 4.5):
    """The shares of n draws a correct dropout at rate p falls between (z standard errors: a false
    alarm about once in 150 000 runs). Returns (low, high)."""
    half = z * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def share_line(what: str, zeros: int, n: int, p: float) -> str:
    low, high = binomial_interval(p, n)
    return (f"{what}: {zeros} of {n} values are 0, a share of {zeros / n:.3f}; dropout p={p:g} zeroes a share "
            f"between {low:.3f} and {high:.3f} here (p within its binomial interval)")
