"""How a course command starts and ends, whatever happens around it.

- torch's OpenMP library reads $OMP_NUM_THREADS when torch is imported and prints a warning of its
  own for a value it cannot use (0, -1, abc, 1.5, empty). `common` is imported before torch, takes
  such a value out of the environment here, and `parse_args` reports it as one line.
- SIGTERM (`kill`, a job scheduler, an editor's stop button) is handled like Ctrl-C: the same
  KeyboardInterrupt, so the same code keeps what was finished; `interruption()` says which one it
  was, and the run ends with exit status 130 (Ctrl-C) or 143 (SIGTERM). Once a run is ending,
  another Ctrl-C or SIGTERM is ignored, so it still ends with one line and that status.
- A console that goes away (output piped into `head`, which stops reading; a full disk; a closed
  stdout) ends the run quietly or with one line, never a traceback; a console that cannot show a
  character (an ASCII terminal) shows '?' instead.

This module imports nothing from the course or torch: `common/__init__.py` imports it first.
"""
import contextlib
import os
import signal
import sys
import threading

EXIT_STATUS = {"Ctrl-C": 130, "SIGTERM": 143}    # 128 + the signal's number, as shells report it
BROKEN_PIPE_STATUS = 141                          # 128 + SIGPIPE: what `yes | head` reports for `yes`

# ---------------------------------------------------------------- $OMP_NUM_THREADS, before torch loads
# The text of an $OMP_NUM_THREADS that is not a positive whole number, taken out of the environment
# before torch's OpenMP library could warn about it (None: there was none).
unusable_thread_setting = None


def usable_thread_count(text: str) -> bool:
    """True for what OpenMP and the course both read as a thread count: a positive whole number."""
    text = text.strip()
    return text.isascii() and text.isdigit() and int(text) > 0


def take_unusable_thread_setting():
    """Remove an $OMP_NUM_THREADS that OpenMP would warn about (remembering it for parse_args)."""
    global unusable_thread_setting
    text = os.environ.get("OMP_NUM_THREADS")
    if text is not None and not usable_thread_count(text):
        unusable_thread_setting = text
        del os.environ["OMP_NUM_THREADS"]


# ---------------------------------------------------------------- Ctrl-C and SIGTERM
_state = {"signal": None,      # the signal behind the last interruption: "Ctrl-C" or "SIGTERM"
          "held": 0,           # > 0 inside held(): a signal waits until the block is done
          "pending": None,     # a signal that arrived inside held()
          "stopping": False}   # the run is ending: further signals are ignored


def _name(number) -> str:
    return "SIGTERM" if number == signal.SIGTERM else "Ctrl-C"


def _on_signal(number, frame):
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt (remembering which it was)."""
    if _state["stopping"]:
        return
    if _state["held"]:
        _state["pending"] = _state["pending"] or _name(number)
        return
    _state["signal"] = _name(number)
    raise KeyboardInterrupt


@contextlib.contextmanager
def held():
    """Run a block that must not be cut in two (files moved into place together): Ctrl-C or SIGTERM
    arriving inside it takes effect, as KeyboardInterrupt, when it ends."""
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
    if not _state["held"] and _state["pending"]:
        _state["signal"], _state["pending"] = _state["pending"], None
        raise KeyboardInterrupt


def interruption() -> str:
    """'Ctrl-C' or 'SIGTERM': what interrupted this run (a KeyboardInterrupt raised by code: 'Ctrl-C')."""
    return _state["signal"] or "Ctrl-C"


def begin_run():
    """A run starts: no interruption yet."""
    _state.update(signal=None, pending=None, stopping=False)


def stopping(for_good: bool):
    """The run is ending after an interruption: further Ctrl-C or SIGTERM are ignored, so it ends
    with one line and its status. for_good: this process ends with the run (never undone)."""
    _state["stopping"] = True
    if for_good and threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def end_run():
    """The run ended inside a process that goes on (a test): signals interrupt again."""
    _state.update(stopping=False, pending=None)


def kept_text() -> str:
    """What this process kept, for the line an interruption prints (common.files replaces this)."""
    return "nothing was written"


def _excepthook(kind, value, traceback):
    """Ctrl-C or SIGTERM outside a run (while Python imports torch, say): one line, 130 or 143."""
    if not issubclass(kind, KeyboardInterrupt):
        return sys.__excepthook__(kind, value, traceback)
    say(f"\ninterrupted ({interruption()}); {kept_text()}")
    os._exit(EXIT_STATUS[interruption()])


def _unraisable(info):
    """A KeyboardInterrupt from _on_signal that landed where Python cannot raise it (a weakref callback
    inside the import machinery, a __del__): Python would print 'Exception ignored' and carry on as if
    nothing happened. It is raised again a millisecond later instead, outside the callback (a timer:
    raising from here would land in this hook just the same), so the run still stops."""
    if isinstance(info.exc_value, KeyboardInterrupt) and _state["signal"] and not _state["stopping"] \
            and hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _raise_again)
        signal.setitimer(signal.ITIMER_REAL, 0.001)
        return
    sys.__unraisablehook__(info)


def _raise_again(number, frame):
    if not _state["stopping"]:
        raise KeyboardInterrupt


def install_signal_handlers():
    """SIGTERM and Ctrl-C raise KeyboardInterrupt through _on_signal (unless the program that imports
    the course chose other handlers, or ignores them); an uncaught one is one line."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _unraisable


# ---------------------------------------------------------------- the console
class ConsoleGone(Exception):
    """Writing to stdout or stderr failed: a pipe nobody reads any more, a full disk, a closed file."""

    def __init__(self, stream: str, error: OSError):
        super().__init__(f"{stream}: {error}")
        self.stream, self.error = stream, error


class _Guarded:
    """A console stream whose failures raise ConsoleGone (never mistaken for a file the run writes)."""

    def __init__(self, stream, name):
        self._stream, self._name = stream, name

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise ConsoleGone(self._name, exc) from None

    def flush(self):
        try:
            return self._stream.flush()
        except OSError as exc:
            raise ConsoleGone(self._name, exc) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _to_devnull(stream):
    """Point a failed console stream at os.devnull, so nothing more fails (not even Python's last flush)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def console():
    """stdout and stderr for one run: failures raise ConsoleGone, and a character the console's
    encoding lacks prints as '?'. Only the process's own streams are guarded (a test's captured
    streams are left alone); they are restored afterwards."""
    saved = sys.stdout, sys.stderr
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and stream is getattr(sys, f"__{name}__"):
            if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="replace")
            setattr(sys, name, _Guarded(stream, name))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def flush_quietly():
    """Flush stdout; if the console is gone, point it at os.devnull instead of failing."""
    stream = sys.stdout
    if stream is None:
        return
    try:
        stream.flush()
    except (OSError, ValueError, ConsoleGone):
        _to_devnull(getattr(stream, "_stream", stream))


def say(line: str):
    """Print one line on stderr after what stdout holds; never raises (the console may be gone)."""
    flush_quietly()
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError, ConsoleGone):
        pass


def console_gone(exc: ConsoleGone) -> int:
    """The exit status after the console failed: quiet after a closed pipe (the reader, e.g. `head`,
    has all it wanted), else one line on stderr, if stderr still works."""
    _to_devnull(getattr(sys, f"__{exc.stream}__"))
    if isinstance(exc.error, BrokenPipeError):
        return BROKEN_PIPE_STATUS
    if exc.stream == "stdout":
        reason = exc.error.strerror or exc.error.__class__.__name__
        say(f"error: could not write to standard output ({reason}); the rest of this run's output would be "
            "lost: send it to a file on a disk with space (> run.log), or leave it on the screen")
    return 2


take_unusable_thread_setting()
install_signal_handlers()
