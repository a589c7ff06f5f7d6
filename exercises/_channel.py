"""What the child that runs an attempt may tell the parent, and how the parent makes sure of a pass.

The child runs each check on the learner's code and records what every call into that code
returned (Recorder: tensors, tuples, numbers, None; anything else only as its description). It
sends, per check, its verdict and that record. The child is not trusted: the learner's code runs
in it and could replace the checker's functions there, or write to the channel itself. So:
- messages are read with torch.load(weights_only=True), which builds tensors, numbers, strings and
  containers only (no pickled objects, so a message cannot run code in the parent); a message of
  the wrong form or out of order ends the exercise with a failure (read_message, _isolation.py);
- the parent runs every check that passed in the child again, in its own process, with its own
  checker and inputs, answering each call into the learner's code from the record (verify). A pass
  stands only if it passes there too: replaced checker functions, forged messages or a model
  changed by the attempt cannot turn a wrong result into a pass.
"""
import builtins
import io
import warnings

import torch
import torch.nn as nn

from exercises.checks import checks_of
from exercises.checks.helpers import Opaque, describe, routed

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Values: what a call into the learner's code returned, in a form torch.load(weights_only=True) reads
def encode_value(value):
    if torch.is_tensor(value):
        if value.layout != torch.strided or value.device.type != "cpu":  # every check wants CPU tensors: these
            return {"opaque": f"{describe(value)} on device {value.device} ({value.layout})"}  # fail in any case
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        items = [encode_value(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"opaque": describe(value)}


def decode_value(value):
    if isinstance(value, dict):
        return Opaque(str(value.get("opaque", "an object")))
    if isinstance(value, tuple):
        return tuple(decode_value(v) for v in value)
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value


def _builtin_name(exc: BaseException) -> str:
    """The first built-in exception class of exc (torch's errors are RuntimeError, AssertionError, ...)."""
    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "Exception"


class Recorder:
    """A route (helpers.routed) that calls the learner's code and records what each call returned."""

    def __init__(self):
        self.entries = []

    def __call__(self, fn, args, kwargs):
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.entries.append({"raise": _builtin_name(exc)})
            raise
        self.entries.append({"module": True} if isinstance(result, nn.Module) else {"return": encode_value(result)})
        return result


class ReplayMismatch(Exception):
    """The parent's check made a call the child's record does not have: the record is not genuine."""


class Replayer:
    """A route that answers each call from a child's record instead of running the learner's code."""

    def __init__(self, entries):
        self.entries, self.position = list(entries), 0

    def __call__(self, fn, args, kwargs):
        if self.position >= len(self.entries):
            raise ReplayMismatch("the check made more calls than the record holds")
        entry = self.entries[self.position]
        self.position += 1
        if "raise" in entry:
            cls = getattr(builtins, str(entry["raise"]), None)
            raise (cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError)("(replayed)")
        if "module" in entry:
            if not isinstance(fn, type):
                raise ReplayMismatch("the record holds a module where the check called one")
            return fn(*args, **kwargs)  # the lesson's class, as a stand-in: its calls are answered from the record
        return decode_value(entry.get("return"))


class _StandInAttention(nn.Module):
    """The layers the multi-head attention checks copy weights into, and nothing else."""

    def __init__(self, d_model, n_heads, dropout=0.0, bias=True, fused=False):
        super().__init__()
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model, bias=bias) for _ in range(4))


class _StandInBlock(nn.Module):
    """The layers the encoder block checks copy weights into, and nothing else."""

    def __init__(self, d_model, n_heads, d_ff, dropout=0.0, norm_first=False):
        super().__init__()
        self.self_attn = _StandInAttention(d_model, n_heads)
        self.feed_forward = nn.Module()
        self.feed_forward.linear1, self.feed_forward.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)


STAND_INS = {"multi_head_attention": _StandInAttention, "encoder_block": _StandInBlock}


def stand_in(name):
    """What the parent hands a check in place of the learner's code: a module with the layers the check
    fills, or a function; the calls themselves are answered from the record, never by this."""
    if name in STAND_INS:
        return STAND_INS[name]

    def function(*args, **kwargs):
        raise ReplayMismatch("the learner's function was called outside the record")

    return function


def verify(name, i, entries, seconds):
    """Run check i of exercise `name` in this process with the calls answered from `entries`.

    Returns the CheckResult of this run (passed only if the check passes and every entry was used).
    """
    from exercises._checker import CheckResult, _run_check

    check_ = checks_of(name)[i]
    replayer = Replayer(entries)
    with routed(replayer):
        try:
            result = _run_check(check_, i, stand_in(name), None, seconds)
        except NotImplementedError:  # replayed: a check that passed in the child cannot have raised it
            return CheckResult(check_.title, False, ["the record says your code raised NotImplementedError"])
    if result.passed and replayer.position != len(replayer.entries):
        return CheckResult(check_.title, False, ["the record of your code's results holds more calls than the "
                                                 "check makes"])
    return result


# ----------------------------------------------------------------------------------------------
# Messages
def pack(message: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(message, buffer)
    return buffer.getvalue()


class BadMessage(Exception):
    """A message that is not one the child's checker sends: the learner's code wrote to the channel."""


MESSAGE_FIELDS = {
    "start": {"name": str, "offset": int},
    "check": {"i": int},
    "checked": {"i": int, "passed": bool, "lines": list, "hint": (list, type(None)), "timed_out": bool,
                "calls": list, "refused": list, "lesson": list},
    "result": {"state": str, "note": str, "source": str, "refused": list, "lesson": list},
}


def read_message(data: bytes) -> dict:
    """The message in `data`, checked for its form; BadMessage if it is not one the checker sends."""
    try:
        with warnings.catch_warnings():  # a forged message may warn about its pickle protocol: it is refused anyway
            warnings.simplefilter("ignore")
            message = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise BadMessage(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(message, dict) or message.get("kind") not in MESSAGE_FIELDS:
        raise BadMessage("no known kind")
    for field, kind in MESSAGE_FIELDS[message["kind"]].items():
        if not isinstance(message.get(field), kind):
            raise BadMessage(f"field {field} of a {message['kind']} message")
    for field in ("lines", "refused", "lesson"):
        if not all(isinstance(x, str) for x in message.get(field, [])):
            raise BadMessage(f"field {field}")
    if message["kind"] == "checked":
        if message["hint"] is not None and not (len(message["hint"]) == 4 and all(isinstance(x, str) for x in
                                                                                   message["hint"])):
            raise BadMessage("field hint")
        if not all(isinstance(entry, dict) for entry in message["calls"]):
            raise BadMessage("field calls")
    return message
