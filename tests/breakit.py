"""Run a lesson in this process with a learner's edit applied to a copy of a lesson file.

    run = run_lesson(5, ["--quick"], tmp_path, Edit(1, "torch.tril", "torch.triu"))
    assert "causal" in run.broken and not run.traceback

The edited copy is loaded under the lesson's own module name (lesson_01 ...), so every later lesson
that reuses it through common.load_lesson gets the edited version, as it would on a learner's disk.
The lessons loaded before are put back afterwards. Each Edit must match its lesson's source exactly
`count` times: when a lesson changes so that an edit no longer applies, its test fails instead of
silently testing the unedited lesson.
"""
import contextlib
import importlib.util
import io
import sys
import traceback as tb
from dataclasses import dataclass, field

from common import claims
from common.lessons import lesson_path


@dataclass(frozen=True)
class Edit:
    lesson: int        # the lesson file the edit changes
    old: str           # text in that file ...
    new: str           # ... replaced by this
    count: int = 1     # how many times `old` occurs (all of them are replaced)


@dataclass
class Run:
    out: str                       # what the lesson printed on stdout
    err: str                       # ... and on stderr
    exit_code: object              # None when main() returned, else SystemExit's code
    traceback: str                 # a traceback from an exception other than SystemExit, else ""
    claims: list = field(default_factory=list)    # every Claim made in the run
    insights: list = field(default_factory=list)  # the key-insight items (Claims and strings)

    @property
    def broken(self):
        """Names of the claims that did not hold."""
        return claims.broken(self.claims)

    @property
    def held(self):
        return [c.name for c in self.claims if c.holds]

    @property
    def broken_insights(self):
        return [c.name for c in self.insights if isinstance(c, claims.Claim) and not c.holds]


def apply(source: str, edit: Edit) -> str:
    found = source.count(edit.old)
    assert found == edit.count, (f"the edit {edit.old!r} -> {edit.new!r} should match lesson "
                                 f"{edit.lesson:02d} {edit.count} time(s), it matches {found}: update the catalogue")
    return source.replace(edit.old, edit.new)


def _load(name, path, source):
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def edited_sources(edits) -> dict:
    """{lesson number: its source with every edit for it applied}; a stale edit fails here."""
    sources = {}
    for edit in edits:
        source = sources.get(edit.lesson) or lesson_path(edit.lesson).read_text(encoding="utf-8")
        sources[edit.lesson] = apply(source, edit)
    return sources


@contextlib.contextmanager
def edited_lessons(*edits: Edit):
    """Inside: common.load_lesson(n) returns the edited lessons (and fresh copies of the others)."""
    sources = edited_sources(edits)
    names = [f"lesson_{n:02d}" for n in range(1, 6)]
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        for n in sorted(sources):                     # earlier lessons first: later ones load them
            _load(f"lesson_{n:02d}", lesson_path(n), sources[n])
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def run_lesson(n: int, argv, out_dir, *edits: Edit) -> Run:
    """Run lesson n's main(argv + --out-dir out_dir) with the edits applied; capture everything."""
    from common import load_lesson

    edited_sources(edits)                             # a stale edit fails here, before anything runs
    out, err, code, trace = io.StringIO(), io.StringIO(), None, ""
    claims.reset()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with edited_lessons(*edits):
                load_lesson(n).main([*argv, "--out-dir", str(out_dir)])
        except SystemExit as exc:
            code = exc.code
        except Exception:                             # a traceback is what the catalogue rules out
            trace = tb.format_exc()
    return Run(out.getvalue(), err.getvalue(), code, trace, list(claims.made), list(claims.insights))


def flat(text):
    """Printed text as one line (the console wraps paragraphs, also after a hyphen)."""
    return " ".join(text.split()).replace("- ", "-")


def check_named(run, breaks, insight_of):
    """No traceback; each claim in `breaks` printed as DOES NOT HOLD; and every key insight resting on
    a broken claim (insight_of: {claim name: insight name}) printed as DOES NOT HOLD too."""
    assert not run.traceback, run.traceback
    assert run.exit_code is None, run.err
    out = flat(run.out)
    missing = [name for name in breaks if name not in run.broken]
    assert not missing, f"held although the edit breaks them: {missing}; broken: {run.broken}"
    for claim in run.claims:
        if claim.name in breaks:
            assert flat(f"DOES NOT HOLD: {claim.text}")[:60] in out, claim.name
    insights = out.split("Key insights")[1]
    for name in run.broken:
        if name in insight_of:
            assert insight_of[name] in run.broken_insights, f"{insight_of[name]} asserts what {name} contradicts"
    for insight in run.insights:
        if not isinstance(insight, str) and not insight.holds:
            assert flat(f"DOES NOT HOLD: {insight.text}")[:60] in insights, insight.name
