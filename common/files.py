"""Writing outputs so that nothing is ever half-written, and remembering what a run wrote.

Every output (PNG, JSON, checkpoint) is written to a temporary file with a unique name in the same
folder, then renamed over the final name. A rename within one folder is atomic: a reader (or a
second run writing the same file at the same moment) sees the old file or the new one, never a
mix, and Ctrl-C or a full disk in the middle leaves the old file untouched.

A measurement that takes many steps (a challenge's runs) is a `Result`: while it is incomplete it is
written as NAME.partial.json (its figures as NAME.partial.png), and only a complete one is moved over
NAME.json, so an interrupted rerun never replaces the last complete result.
"""
import json
import os
import tempfile
from pathlib import Path

from common import process
from common.errors import UserError

# Paths written by this run, in order: the Ctrl-C message lists them as kept.
written = []
# The Results of this run that are not complete yet: the Ctrl-C message says where each one is.
in_progress = []


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


def read_json(path, what: str, fix: str):
    """The JSON in `path`; UserError naming `what` and `fix` when it is missing, not a regular file
    (a folder, a FIFO that would block the read), unreadable, or not JSON."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {str(path)!r} does not exist; {fix}")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe or a device?)"
        raise UserError(f"{what} {str(path)!r} is {kind}; move it away, then {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = _reason(exc) if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{what} {str(path)!r} cannot be read ({reason}); {fix}") from None


def partial_name(name: str) -> str:
    """'ablations.json' -> 'ablations.partial.json'; 'mystery_A.png' -> 'mystery_A.partial.png'."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.partial.{suffix}" if dot else f"{name}.partial"


class Result:
    """A measurement saved as it goes and replacing an earlier complete one only once complete.

        result = Result(out_dir, "ablations.json")
        result.save(partial)                     # after each finished part: ablations.partial.json
        fig_name = result.name("ablations.png")  # a figure of the incomplete result: ablations.partial.png
        result.complete(everything)              # ablations.json (and .png), atomically; the partial files go

    Until complete() an earlier ablations.json stays as it was, whatever stops the run.
    """

    def __init__(self, folder, name: str):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.partial_path = self.folder / partial_name(name)
        self.figures = {}                        # partial name -> final name, of files drawn while incomplete
        self.saved = False
        in_progress.append(self)

    def name(self, final_name: str) -> str:
        """The name a file of this result (a figure) gets while the result is incomplete."""
        self.figures[partial_name(final_name)] = final_name
        return partial_name(final_name)

    def final_name(self, name: str) -> str:
        """The name `name` (given by name()) gets once the result is complete."""
        return self.figures.get(name, name)

    def save(self, obj) -> Path:
        """The result so far, as NAME.partial.json."""
        self.saved = True
        return write_json(self.partial_path, obj)

    def complete(self, obj) -> Path:
        """Write the complete result over NAME.json and move its figures over their final names, as one
        step a signal cannot cut in two; the partial files are gone afterwards."""
        with process.held():
            write_json(self.path, obj)
            moves = [(self.folder / p, self.folder / f) for p, f in self.figures.items()]
            if self.saved:
                moves.append((self.partial_path, None))
            for source, target in moves:
                if not source.is_file():
                    continue
                try:
                    os.replace(source, target) if target else os.remove(source)
                except OSError as exc:
                    raise UserError(f"could not move {str(source)!r} into place ({_reason(exc)}); the complete "
                                    f"result is in {str(self.path)!r}") from None
                forget(source, replaced_by=target)
        if self in in_progress:
            in_progress.remove(self)
        return self.path


def forget(path, replaced_by=None):
    """`path` no longer exists (moved to `replaced_by`, or removed): the Ctrl-C message must not list it."""
    if str(path) in written:
        written.remove(str(path))
        if replaced_by is not None and str(replaced_by) not in written:
            written.append(str(replaced_by))


def kept_text() -> str:
    """What an interrupted run leaves, for its one line: 'kept what was finished in out: a.png,
    ablations.partial.json (what this run finished); the earlier complete ablations.json is unchanged'."""
    paths = [Path(p) for p in dict.fromkeys(written) if os.path.exists(p)]
    partials = {r.partial_path for r in in_progress}
    earlier = [r.path for r in in_progress if r.path.is_file() and str(r.path) not in written]
    folders = {p.parent for p in paths}
    show = (lambda p: p.name) if len(folders) == 1 else str
    if paths:
        names = [show(p) + (" (what this run finished)" if p in partials else "") for p in paths[-6:]]
        more = f" (and {len(paths) - 6} more)" if len(paths) > 6 else ""
        where = f" in {next(iter(folders))}" if len(folders) == 1 else ""
        text = f"kept what was finished{where}: {', '.join(names)}{more}"
    else:
        text, show = "nothing was written", str
    if earlier:
        are = "is" if len(earlier) == 1 else "are"
        text += f"; the earlier complete {', '.join(show(p) if p.parent in folders else str(p) for p in earlier)} {are} " \
                "unchanged"
    return text


def start_run():
    """Forget what an earlier run in this process wrote (tests run many in one process)."""
    written.clear()
    in_progress.clear()


process.kept_text = kept_text          # what an interruption outside a run (while importing) names as kept
