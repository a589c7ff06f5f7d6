"""The rules of the child process that runs a learner's attempt, so that it cannot change the grading.

Installed once in the child (install), before any attempt is imported; it cannot be removed:
- an audit hook (sys.addaudithook) refuses, with PermissionError, what an attempt has no reason to
  do: writing, removing or renaming a file outside the child's scratch folder (the checker's files,
  the progress file, the lessons), starting a process (subprocess, os.fork, os.system, exec,
  posix_spawn), signalling another process, loading native code through ctypes, reaching other
  objects through the garbage collector, and replacing the profiler below;
- a profiler (sys.setprofile) notes every call into the graded lesson's own version of the
  exercise (load_lesson(1).causal_mask, a subclass that keeps the lesson's forward, or a fresh copy
  of the lesson file imported with importlib: the code comes from the lesson's file either way);
  reading that file counts too. Building on other components (lesson 01's attention inside your
  multi-head attention) is not noted.
What was refused and what of the lesson ran are reported per check (take_events) and decide the
grade in the parent process, which also re-checks every pass itself (_channel.py).
"""
import os
import sys
from pathlib import Path

from exercises import EXERCISES

PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
                  "subprocess.Popen", "os.startfile", "pty.spawn", "_winapi.CreateProcess"}
# events that change the file system, and which of their arguments are paths they change
WRITE_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (1,),
                "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
                "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
                "shutil.copytree": (1,), "shutil.move": (0, 1), "shutil.chown": (0,),
                "shutil.unpack_archive": (1,), "shutil.make_archive": (0,)}
REFUSED_EVENTS = {"ctypes.dlopen": "loading native code (ctypes)", "ctypes.dlsym": "loading native code (ctypes)",
                  "ctypes.dlsym/handle": "loading native code (ctypes)",
                  "gc.get_objects": "searching the garbage collector's objects",
                  "gc.get_referrers": "searching the garbage collector's objects",
                  "gc.get_referents": "searching the garbage collector's objects",
                  "sys.setprofile": "replacing the checker's profiler"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _real(path) -> str:
    return os.path.realpath(os.fsdecode(path))


class Sandbox:
    """The child's rules (see the module docstring); `begin(name)` before each exercise."""

    def __init__(self, scratch):
        self.scratch = _real(scratch)
        self.installed = False
        self.trusted_reads = 0      # > 0 while the checker itself reads a line of source to show it
        self.lesson_file = None     # the graded lesson's file (None: nothing to watch, e.g. --reference)
        self.lesson_cache = None
        self.entry = ""
        self.refused, self.lesson = [], []   # what happened since take_events()
        self._is_lesson_file = {}            # co_filename -> bool (a call's file, resolved once)

    # -- per exercise ------------------------------------------------------------------------------
    def begin(self, name, reference=False):
        """Watch for exercise `name`'s lesson code (not in --reference mode, where it is what is checked)."""
        from common.lessons import lesson_path

        exercise = EXERCISES[name]
        self.entry = exercise.entry
        path = None if reference else lesson_path(exercise.lesson)
        self.lesson_file = None if path is None else _real(path)
        self.lesson_cache = None if path is None else _real(path.parent / "__pycache__")
        self._is_lesson_file = {}
        self.take_events()

    def take_events(self):
        """(what was refused, what of the lesson's code ran or was read) since the last call."""
        events = (sorted(set(self.refused)), sorted(set(self.lesson)))
        self.refused, self.lesson = [], []
        return events

    # -- installing --------------------------------------------------------------------------------
    def install(self):
        """Install the audit hook and the profiler (for good: neither can be removed)."""
        import subprocess

        def refuse_fork_exec(*args, **kwargs):
            self.refused.append("starting a process")
            raise PermissionError("the exercise checker does not let an attempt start processes")

        try:
            import _posixsubprocess  # subprocess's way to start processes, with no audit event of its own
        except ImportError:          # Windows: processes start through _winapi, which has one
            _posixsubprocess = None
        if _posixsubprocess is not None:
            _posixsubprocess.fork_exec = refuse_fork_exec
        if hasattr(subprocess, "_fork_exec"):  # subprocess keeps its own name for it
            subprocess._fork_exec = refuse_fork_exec
        sys.dont_write_bytecode = True  # importing the attempt writes no .pyc next to it
        sys.setprofile(self._profile)
        sys.addaudithook(self._audit)
        self.installed = True

    def checker_reads(self):
        """A context in which the checker reads a line of source to show it (not counted as using a lesson)."""
        sandbox = self

        class _Reads:
            def __enter__(self):
                sandbox.trusted_reads += 1

            def __exit__(self, *exc_info):
                sandbox.trusted_reads -= 1
                return False

        return _Reads()

    # -- the profiler: calls into the lesson's own version of the exercise ------------------------------
    def _profile(self, frame, event, arg):
        if event != "call" or self.lesson_file is None:
            return
        code = frame.f_code
        filename = code.co_filename
        known = self._is_lesson_file.get(filename)
        if known is None:
            same_name = os.path.basename(filename) == os.path.basename(self.lesson_file)
            known = self._is_lesson_file[filename] = same_name and _real(filename) == self.lesson_file
        if known:
            qualname = getattr(code, "co_qualname", code.co_name)
            if (qualname == self.entry or qualname.startswith(self.entry + ".")) and not qualname.endswith(".__init__"):
                self.lesson.append(f"{qualname} of {os.path.basename(self.lesson_file)} ran")

    # -- the audit hook ----------------------------------------------------------------------------------
    def _audit(self, event, args):
        if event == "open":
            self._audit_open(args)
        elif event in WRITE_EVENTS:
            for index in WRITE_EVENTS[event]:
                if index < len(args) and isinstance(args[index], (str, bytes, os.PathLike)):
                    self._may_write(args[index], event)
        elif event in PROCESS_EVENTS:
            self._refuse("starting a process", f"the exercise checker does not let an attempt start processes "
                                               f"({event})")
        elif event in ("os.kill", "os.killpg"):
            if event == "os.killpg" or args[0] != os.getpid():
                self._refuse("signalling another process", "the exercise checker does not let an attempt "
                                                           "signal other processes")
        elif event in REFUSED_EVENTS:
            self._refuse(REFUSED_EVENTS[event], f"the exercise checker does not let an attempt do this: "
                                                f"{REFUSED_EVENTS[event]}")
        elif event == "import" and args and args[0] == "_posixsubprocess":
            self._refuse("starting a process", "the exercise checker does not let an attempt start processes")

    def _refuse(self, what, message):
        self.refused.append(what)
        raise PermissionError(message)

    def _audit_open(self, args):
        path, flags = args[0], args[2] if len(args) > 2 else 0
        if isinstance(path, int) or path is None:  # an open file descriptor: the process's own
            return
        if isinstance(flags, int) and flags & WRITE_FLAGS:
            self._may_write(path, "open")
        elif self.lesson_file is not None and not self.trusted_reads:
            real = _real(path)
            if real == self.lesson_file or (os.path.dirname(real) == self.lesson_cache and os.path.basename(
                    real).startswith(Path(self.lesson_file).stem + ".")):
                self.lesson.append(f"{os.path.basename(self.lesson_file)} was read")
                raise PermissionError("the exercise checker does not let an attempt read the lesson's own "
                                      "version of the exercise")

    def _may_write(self, path, event):
        real = _real(path)
        if real == os.devnull or real.startswith(self.scratch + os.sep) or real == self.scratch:
            return
        self._refuse(f"writing {real}", f"the exercise checker lets an attempt write only in its scratch folder "
                                        f"{self.scratch}, not {real}")


def open_files():
    """The file descriptors open in this process (None where the system cannot list them)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return {int(name) for name in os.listdir(folder)}
        except (OSError, ValueError):
            continue
    return None


def close_inherited_files(inherited, keep=()):
    """Close what this forked child inherited from its parent: `inherited`, the parent's open files just
    before the fork, but for `keep` (the result channel). A forked child holds every file its parent had
    open: a terminal or a pipe it could print a fake score on, a file the parent writes. The pipes that
    multiprocessing made for this child (after the listing) stay. Standard input becomes os.devnull.
    """
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd in sorted(inherited or ()):
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
