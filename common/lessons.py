"""Load an earlier lesson as a module, so later lessons reuse its components.

The lesson files start with a digit (``02_multi_head_attention.py``), so a plain ``import``
cannot name them. ``load_lesson(2)`` finds the file, imports it once and returns the module:

    MultiHeadAttention = load_lesson(2).MultiHeadAttention

There is one source for each component: the lesson that teaches it. Change attention in
lesson 02 and lessons 04 and 05 use your change. Importing a lesson prints and writes nothing.
"""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


def lesson_path(n: int) -> Path:
    """The file of lesson n, e.g. 2 -> <repo>/02_multi_head_attention.py."""
    matches = sorted(REPO_ROOT.glob(f"{int(n):02d}_*.py"))
    if not matches:
        raise FileNotFoundError(f"no lesson {int(n):02d}_*.py in {REPO_ROOT}")
    return matches[0]


def load_lesson(n: int) -> ModuleType:
    """Import lesson n (once) and return it as a module named ``lesson_0n``."""
    name = f"lesson_{int(n):02d}"
    if name in sys.modules:
        return sys.modules[name]
    path = lesson_path(n)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before running the file, so classes defined there can be pickled and
    # a lesson that loads another lesson during import finds a single copy of it.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
