"""Shared test helpers.

Lessons are run in-process through their `main(argv)` (importing torch once for the whole suite
instead of once per lesson run), with output going to pytest's temporary folders.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import load_lesson

REPO_ROOT = Path(__file__).resolve().parent.parent

# The suite runs on one thread, like the lessons by default: fastest on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def run_main(tmp_path):
    """run_main(n, *flags) runs lesson n's main() with --out-dir tmp_path and returns tmp_path."""

    def _run(n, *flags):
        load_lesson(n).main([*flags, "--out-dir", str(tmp_path)])
        return tmp_path

    return _run


def expect_user_error(capsys, n, *flags, contains=""):
    """Run lesson n with bad flags; assert exit status 2 and one clear line on stderr. Returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        load_lesson(n).main(list(flags))
    assert exc.value.code == 2, f"expected exit status 2, got {exc.value.code!r}"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    assert contains.lower() in err.lower(), f"{contains!r} not in {err!r}"
    return err


def run_script(*args, timeout=120):
    """Run a command in a fresh Python process from the repo root; returns CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
