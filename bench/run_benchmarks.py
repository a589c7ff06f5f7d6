"""Wall time of each lesson with its default flags, as a learner runs it (imports included).

    python bench/run_benchmarks.py                 # every lesson, 3 runs each, median reported
    python bench/run_benchmarks.py --runs 5 --lessons 1 2

Each run is a fresh `python NN_lesson.py --out-dir <temp folder>` process, so the times include
starting Python and importing torch and matplotlib. Thread variables are not set: each lesson's own
thread policy applies. The machine is measured too (cores, load), because a busy machine is slower.
Results are printed as a table and written to bench/results_lessons.json.
"""
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402


def time_lesson(script: Path, runs: int, extra):
    walls = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            env = dict(os.environ, MPLBACKEND="Agg")
            start = time.perf_counter()
            result = subprocess.run([sys.executable, str(script), "--out-dir", out, *extra],
                                    cwd=ROOT, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if result.returncode != 0:
                tail = ((result.stderr or result.stdout).strip().splitlines() or [""])[-1]
                raise common.UserError(f"{script.name} failed (exit {result.returncode}): {tail}")
    return walls


def import_cost(runs: int):
    """Seconds to start Python and import torch + matplotlib.pyplot (the floor of every lesson)."""
    code = "import torch, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        walls.append(time.perf_counter() - start)
    return walls


@common.entry_point
def main(argv=None):
    parser = common.plain_parser(__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per lesson (median reported)")
    parser.add_argument("--lessons", type=int, nargs="*", default=None, help="lesson numbers (default: all)")
    parser.add_argument("--quick", action="store_true", help="time the --quick runs instead")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error(f"--runs must be from 1 to 50, got {args.runs}")

    scripts = sorted(ROOT.glob("[0-9][0-9]_*.py"))
    if args.lessons:
        unknown = sorted(set(args.lessons) - {int(s.name[:2]) for s in scripts})
        if unknown:
            parser.error(f"--lessons: no lesson {', '.join(map(str, unknown))}; the lessons are "
                         f"{' '.join(str(int(s.name[:2])) for s in scripts)}")
        scripts = [s for s in scripts if int(s.name[:2]) in args.lessons]
    extra = ["--quick"] if args.quick else []

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.2f}, python {platform.python_version()}")
    rows = {"imports (torch + matplotlib)": import_cost(args.runs)}
    for script in scripts:
        rows[script.name] = time_lesson(script, args.runs, extra)

    print(f"\n{'what':<34} {'median s':>9} {'min s':>7} {'max s':>7}   ({args.runs} runs)")
    for name, walls in rows.items():
        print(f"{name:<34} {statistics.median(walls):>9.2f} {min(walls):>7.2f} {max(walls):>7.2f}")
    results = {name: {"median_s": statistics.median(w), "runs_s": w} for name, w in rows.items()}
    results["_machine"] = {"cores": os.cpu_count(), "load_average_1min": load, "quick": args.quick}
    common.write_json(ROOT / "bench" / "results_lessons.json", results)


if __name__ == "__main__":
    main()
