"""Writing outputs so that nothing is ever half-written, and remembering what a run wrote.

Every output (PNG, JSON, checkpoint) is written to a temporary file with a unique name in the same
folder, then renamed over the final name. A rename within one folder is atomic: a reader (or a
second run writing the same file at the same moment) sees the old file or the new one, never a
mix, and Ctrl-C or a full disk in the middle leaves the old file untouched.
"""
import json
import os
import tempfile
from pathlib import Path

from common.errors import UserError

# Paths written by this process, in order: the Ctrl-C message lists them as kept.
written = []


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Call write(tmp_path) to fill a unique temporary file next to `path`, then rename it to `path`.

    A failure (full disk, a folder in the way, no permission) leaves any earlier file at `path`
    as it was and raises UserError naming the path and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {str(path)!r}: a folder of that name is in the way; move it, or "
                        "pass another --out-dir")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r} ({_reason(exc)}); pass a writable --out-dir") from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"could not write {str(path)!r} ({_reason(exc)}); the earlier file, if any, is "
                        "unchanged; free some space or pass another --out-dir") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if str(path) not in written:
        written.append(str(path))
    return path


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def write_json(path, obj) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
