"""Why the lessons use one CPU thread by default: training-step time for 1 and 2 threads,
on an idle machine and while another process keeps one core busy.

    python bench/bench_threads.py                  # lesson 05's default model, 60 steps per case
    python bench/bench_threads.py --steps 100 --d-model 64

For each case, lesson 05's `train()` runs a fixed number of steps (no target, validation only at
the end) and the milliseconds per training step are reported (median of --repeats). The "busy"
cases start one extra Python process that spins on a core, and stop it (by its PID) afterwards,
as another program on a laptop would. Results also go to bench/results_threads.json.
"""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import common  # noqa: E402

lesson05 = common.load_lesson(5)
from lesson05_plumbing.settings import validate_config  # noqa: E402


def ms_per_step(threads: int, steps: int, d_model: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    config = lesson05.TrainConfig(d_model=d_model, steps=steps, eval_every=steps, patience=0, target=2.0,
                                  val_size=200, test_size=200)
    times = []
    for seed in range(repeats):
        config.seed = seed
        result = lesson05.train(config, device="cpu", quiet=True)
        times.append(1000 * result.train_seconds / result.steps_run)
    return statistics.median(times)


@common.entry_point
def main(argv=None):
    parser = common.plain_parser(__doc__)
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per case (median reported)")
    parser.add_argument("--d-model", type=int, default=lesson05.TrainConfig().d_model,
                        help="model width (default: lesson 05's)")
    args = parser.parse_args(argv)
    if not (1 <= args.steps <= 10_000 and 1 <= args.repeats <= 50):
        parser.error("--steps must be from 1 to 10000 and --repeats from 1 to 50")
    try:
        validate_config(lesson05.TrainConfig(d_model=args.d_model))   # e.g. divisible by the heads
    except common.UserError as exc:
        parser.error(str(exc))

    # "idle" below means: no extra load started by this script; the load average says how idle it was
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f}, torch {torch.__version__}, lesson 05 model "
          f"with d_model {args.d_model}, {args.steps} steps per measurement, median of {args.repeats}")
    rows = {}
    for busy in (False, True):
        spinner = None
        if busy:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            for threads in (1, 2):
                key = f"{threads} thread{'s' if threads > 1 else ''}, {'one core busy' if busy else 'idle'}"
                rows[key] = ms_per_step(threads, args.steps, args.d_model, args.repeats)
                print(f"  {key:<28} {rows[key]:8.1f} ms per training step")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    common.write_json(ROOT / "bench" / "results_threads.json", rows)


if __name__ == "__main__":
    main()
