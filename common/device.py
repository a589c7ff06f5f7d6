"""Pick the device: CUDA if it really works, else Apple's MPS, else the CPU.

`torch.cuda.is_available()` can say True while the first real operation fails (a driver too old
for this build of torch, a GPU taken by another process, an unsupported card). So we also run a
tiny probe operation and fall back to the CPU, with a one-line warning, if it raises.
"""
import sys

import torch


def _probe(device: str):
    """Run one small operation on `device`. Returns None if it worked, else the error text."""
    try:
        x = torch.arange(4, dtype=torch.float32, device=device)
        value = float((x @ x).item())  # .item() forces the work to finish
        if value != 14.0:
            return f"probe computed {value}, expected 14.0"
        return None
    except Exception as exc:  # any failure means: do not use this device
        text = str(exc).strip()
        return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(requested: str = "auto"):
    """Return (torch.device, reason). `requested` is auto, cpu, cuda or mps.

    A device that was asked for but cannot be used gives a warning on stderr and the CPU.
    """
    if requested == "cpu":
        return torch.device("cpu"), "asked for with --device cpu"
    broken = []  # (auto) devices that are visible but failed the probe: the header says so

    if requested in ("auto", "cuda"):
        if torch.cuda.is_available():
            error = _probe("cuda")
            if error is None:
                name = torch.cuda.get_device_name(0)
                how = "asked for with --device cuda" if requested == "cuda" else "auto: CUDA works"
                return torch.device("cuda"), f"{how} ({name})"
            why = f"CUDA is visible but a test operation failed ({error})"
            broken.append(why)
        else:
            why = "torch.cuda.is_available() is False (CPU-only torch build, or no usable driver)"
        if requested == "cuda":
            print(f"warning: --device cuda asked for, but {why}; using the CPU instead", file=sys.stderr)
            return torch.device("cpu"), f"fallback: {why}"

    if requested in ("auto", "mps"):
        if _mps_available():
            error = _probe("mps")
            if error is None:
                how = "asked for with --device mps" if requested == "mps" else "auto: no CUDA, Apple MPS works"
                return torch.device("mps"), how
            why = f"MPS is visible but a test operation failed ({error})"
            broken.append(why)
        else:
            why = "torch.backends.mps.is_available() is False (not an Apple-silicon Mac, or old macOS)"
        if requested == "mps":
            print(f"warning: --device mps asked for, but {why}; using the CPU instead", file=sys.stderr)
            return torch.device("cpu"), f"fallback: {why}"

    if broken:
        return torch.device("cpu"), "auto: " + "; ".join(broken)
    return torch.device("cpu"), "auto: no CUDA or MPS found"
