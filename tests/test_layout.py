"""The course's layout: five lessons at the top level beside the docs and folders, and one direction of use.

The imports are read from each file's syntax tree (without running anything): no module may reach
itself again through its imports, and nothing in common/ (generic helpers) or lesson05_plumbing/
(lesson 05's plumbing) may import challenges/ (the experiments built on them).
"""
import ast
import subprocess

import pytest

from conftest import REPO_ROOT

TOP_LEVEL_FILES = {"README.md", "QUICKSTART.md", "requirements.txt", "Makefile", "pytest.ini", ".gitignore"}


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:                       # not a git checkout: every file on disk instead
        return [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*") if p.is_file()
                and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(REPO_ROOT).parts)]
    return out.stdout.split()


def module_files():
    """{dotted module name: path} for the project's Python files (tests left out)."""
    found = {}
    for path in REPO_ROOT.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] in ("tests", ".venv", "venv") or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name, path, modules):
    """The project modules that `name` imports (absolute and relative imports, at any depth)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*parts, base] if base else parts)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    # a package and its own submodules belong together: not a cycle between files
    return {t for t in resolved if not (t.startswith(name + ".") or name.startswith(t + "."))}


def import_graph():
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle as a list of module names, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_top_level_holds_the_lessons_the_docs_and_folders():
    top = {f.split("/")[0] for f in tracked_files() if "/" not in f}
    lessons = sorted(f for f in top if f[:2].isdigit() and f.endswith(".py"))
    assert [f[:3] for f in lessons] == ["01_", "02_", "03_", "04_", "05_"], lessons
    assert top - set(lessons) <= TOP_LEVEL_FILES, f"files beside the lessons: {sorted(top - set(lessons) - TOP_LEVEL_FILES)}"


def test_no_module_reaches_itself_through_its_imports():
    graph = import_graph()
    assert "lesson05_plumbing.settings" in graph and "common.cli" in graph      # the walk found the project
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("package", ["common", "lesson05_plumbing"])
def test_helpers_and_plumbing_never_import_the_challenges(package):
    graph = import_graph()
    offending = {name: sorted(d for d in deps if d.split(".")[0] == "challenges")
                 for name, deps in graph.items() if name.split(".")[0] == package}
    assert not any(offending.values()), offending


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lesson_05_opens_with_what_a_learner_needs_not_a_re_export_block():
    source = (REPO_ROOT / "05_mini_transformer.py").read_text(encoding="utf-8")
    assert "noqa: F401" not in source and "re-exported" not in source
