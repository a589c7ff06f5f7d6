"""Checkpoints of a model: a dataclass config, a state_dict and plain extras, in one file.

Everything saved is a plain type (tensors, numbers, strings, lists, dicts), so torch.load(...,
weights_only=True) can read it: such a file can hold no code. Writing is atomic (common.files),
reading checks every part and reports a problem as one clear line (a common.UserError subclass).
The file carries a SHA-256 checksum of its format and of every weight (name, dtype, shape, bytes):
a file damaged after it was written (flipped bytes, an edited format) is refused by name. Files
written before the checksum existed still load.
"""
import hashlib
import io
import math
import os
import warnings
from dataclasses import asdict, fields

import torch

from common.files import write_bytes


def shorten(text: str, limit: int = 160) -> str:
    """One line of at most `limit` characters, cut at a word boundary with '...'."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def tensor_checksum(name: str, tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's name, dtype, shape and bytes (the same on every machine of one byte order)."""
    t = tensor.detach().cpu().contiguous()
    return _sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode(), t.reshape(-1).view(torch.uint8).numpy().tobytes())


def checksum(format_name: str, state_dict: dict) -> dict:
    """What save() stores and load() recomputes: one SHA-256 for the format, one per weight."""
    return {"algorithm": "sha256", "format": _sha256(str(format_name).encode()),
            "tensors": {name: tensor_checksum(name, t) for name, t in sorted(state_dict.items())}}


def save(path, format_name: str, config, state_dict, **extra):
    """Write {"format", "config": asdict(config), "state_dict" (on the CPU), "checksum", **extra} atomically."""
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {"format": format_name, "config": asdict(config), "state_dict": state_dict,
               "checksum": checksum(format_name, state_dict), **extra}
    buffer = io.BytesIO()
    torch.save(payload, buffer)      # in memory first: a full disk then fails in a plain file write
    return write_bytes(path, buffer.getvalue())


def _torch_load(path):
    """torch.load(weights_only=True), without torch's warning about a pickle protocol it did not write
    (a file that is not a checkpoint is refused with one line of ours instead)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def verify_checksum(ckpt: dict, name: str, error):
    """Raise `error` naming what does not match the checksum saved in the file (none saved: accepted,
    a file written before checksums existed)."""
    saved = ckpt.get("checksum")
    if saved is None:
        return
    fix = "retrain to write a new one"
    if not isinstance(saved, dict) or not isinstance(saved.get("tensors"), dict):
        raise error(f"checkpoint {name} is damaged: its checksum is not readable; {fix}")
    found = checksum(ckpt["format"], ckpt["state_dict"])
    if saved.get("format") != found["format"]:
        raise error(f"checkpoint {name} is damaged: its format field ({ckpt['format']!r}) does not match the "
                    f"checksum saved with it; {fix}")
    if set(saved["tensors"]) != set(found["tensors"]):
        raise error(f"checkpoint {name} is damaged: its weights are not the ones the checksum saved with it names; "
                    f"{fix}")
    bad = [k for k in found["tensors"] if saved["tensors"][k] != found["tensors"][k]]
    if bad:
        nan = [k for k in bad if ckpt["state_dict"][k].is_floating_point()
               and not bool(torch.isfinite(ckpt["state_dict"][k]).all())]
        which = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        holds = f"; {', '.join(nan[:3])} holds NaN or infinite values" if nan else ""
        raise error(f"checkpoint {name} is damaged: {which} {'does' if len(bad) == 1 else 'do'} not match the "
                    f"checksum saved with {'it' if len(bad) == 1 else 'them'}{holds}; {fix}")


def load(path, formats, required, error):
    """torch.load(weights_only=True) of a file whose "format" is one of `formats` and which has the
    keys `required`, its weights matching its checksum; raises `error` (a UserError class) naming
    the path and the reason."""
    name = repr(os.fspath(path))
    if os.path.isdir(path):
        raise error(f"checkpoint {name} is a folder, not a file; pass the file inside it")
    if not os.path.exists(path):
        raise error(f"checkpoint {name} not found; train one first or pass the right path")
    if not os.path.isfile(path):
        raise error(f"checkpoint {name} is not a regular file (a device or a pipe?); pass a checkpoint file")
    try:
        ckpt = _torch_load(path)
    except Exception as exc:  # truncated, not a torch file, or not plain data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "weights_only" in first or "invalid load key" in first:   # torch's long story for "not its format"
            first = "not a file torch.save wrote"
        reason = f"{exc.__class__.__name__}: {shorten(first, 120)}" if first else exc.__class__.__name__
        raise error(f"checkpoint {name} is corrupt or not a checkpoint ({reason}); retrain to write a new one") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in formats:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise error(f"{name} is not a checkpoint of this lesson (format {found!r}, expected {formats[0]!r})")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise error(f"{name} lacks {', '.join(missing)}; retrain to write a new one")
    if not isinstance(ckpt["state_dict"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["state_dict"].items()):
        raise error(f"{name} has a state_dict that is not a dict of named tensors; retrain to write a new one")
    verify_checksum(ckpt, name, error)
    return ckpt


def config_from_dict(values, config_class, required, where, error):
    """config_class(**values) with every value of the type its field declares (ints for ints,
    numbers for floats, ...); fields missing from `values` keep their defaults unless `required`."""
    if not isinstance(values, dict):
        raise error(f"{where} has a config that is not a dict; retrain to write a new one")
    known = {f.name: f for f in fields(config_class)}
    unknown = [k for k in values if k not in known]
    missing = [k for k in required if k not in values]
    if unknown or missing:
        what = f"unknown settings {unknown}" if unknown else f"no {', '.join(missing)} in its config"
        raise error(f"{where} has {what}; retrain to write a new one")
    defaults = config_class()
    for key, value in values.items():
        kind = type(getattr(defaults, key))
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            what = {int: "a whole number", float: "a number", str: "a text", bool: "True or False"}[kind]
            raise error(f"{where} has {key} = {value!r} in its config where {what} belongs; "
                        "retrain to write a new one")
    return config_class(**{k: float(v) if type(getattr(defaults, k)) is float else v for k, v in values.items()})


def check_finite_tensors(tensors: dict, where, what, error):
    """Raise `error` if any tensor holds NaN or infinity (they would poison every later result)."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise error(f"{where} holds NaN or infinite {what} ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): "
                    "the run that wrote it had diverged; retrain to write a new one")


def describe(path) -> str:
    """A few words about a checkpoint for messages: its task, step and validation exact-match."""
    try:
        ckpt = _torch_load(path)
        config, val = ckpt.get("config", {}), ckpt.get("val", {})
        return (f"task {config.get('task', '?')}, step {ckpt.get('step', '?')}, validation exact-match "
                f"{val.get('exact_match', float('nan')):.3f}")
    except Exception:  # any reason: it is only described, never used
        return "not readable as a checkpoint"
