"""Lesson 05's training speed, measured against a reference recipe in the same run.

    python bench/bench_training.py                    # 3 seeds, every task once (a few minutes)
    python bench/bench_training.py --seeds 5 --repeats 2
    python bench/bench_training.py --skip-tasks       # only the reversal race

Part 1, the reversal race (length 16, digits 0-9, >= 99% exact-match on the same 1000 held-out
validation sequences, checked every 10 steps):
  - ours: lesson 05's default model and training (`train(TrainConfig())`);
  - the reference: the recipe of the UvA deep learning course's Tutorial 6 for reversal, built here
    from lesson 04's TransformerEncoderBlock: encoder-only, one-hot digits -> linear -> sinusoidal
    positions -> 1 post-LN block (d_model 32, 1 head, d_ff 64) -> per-position classifier
    (linear, LayerNorm, ReLU, linear); Adam lr 5e-4, 50 warmup steps then cosine decay over 3,910
    steps (10 epochs of 50,000 sequences at batch 128, as in the recipe), batch 128, gradient
    clipping at 5. Fresh random sequences each step, like ours.
  Both report optimizer steps and training seconds (time in training steps, validation excluded)
  until the target, median over seeds, and the ratio.
Part 2, the other tasks: `05_mini_transformer.py --task T` with default flags as a fresh process,
  its wall time (imports, training, decoding, plots) and test exact-match.

No thread variables are set: the lesson's thread policy (common.set_threads: 1 thread unless
--threads or OMP_NUM_THREADS says otherwise) applies. Results also go to bench/results_training.json.
"""
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402

lesson05 = common.load_lesson(5)
TransformerEncoderBlock = common.load_lesson(4).TransformerEncoderBlock
PositionalEncoding = common.load_lesson(3).PositionalEncoding

REFERENCE = dict(d_model=32, n_heads=1, d_ff=64, lr=5e-4, warmup=50, cosine_steps=3910, batch_size=128,
                 grad_clip=5.0, max_steps=3000, eval_every=10)


class ReferenceReverser(nn.Module):
    """Encoder-only reversal model of the reference recipe: a label for every input position."""

    def __init__(self, n_digits=10, d_model=32, n_heads=1, d_ff=64):
        super().__init__()
        self.n_digits = n_digits
        self.input = nn.Linear(n_digits, d_model)                        # on one-hot digits
        self.positions = PositionalEncoding(d_model, max_len=64)          # lesson 03
        self.block = TransformerEncoderBlock(d_model, n_heads, d_ff, norm_first=False)  # lesson 04, post-LN
        self.output = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.ReLU(),
                                    nn.Linear(d_model, n_digits))

    def forward(self, digits):                                            # (B, T) -> (B, T, n_digits)
        x = self.positions(self.input(F.one_hot(digits, self.n_digits).float()))
        return self.output(self.block(x))


def train_reference(seed, val_src, val_out, heldout, seq_len=16, n_digits=10):
    """Train the reference until validation exact-match >= 0.99. Returns (steps, train seconds)."""
    r = REFERENCE
    torch.manual_seed(seed)
    model = ReferenceReverser(n_digits, r["d_model"], r["n_heads"], r["d_ff"])
    optimizer = torch.optim.Adam(model.parameters(), lr=r["lr"])
    generator = torch.Generator().manual_seed(seed)
    seconds = 0.0
    for step in range(1, r["max_steps"] + 1):
        t0 = time.perf_counter()
        factor = 0.5 * (1 + math.cos(math.pi * step / r["cosine_steps"]))
        if step <= r["warmup"]:
            factor *= step / r["warmup"]
        for group in optimizer.param_groups:
            group["lr"] = r["lr"] * factor
        digits = torch.randint(0, n_digits, (r["batch_size"], seq_len), generator=generator)
        fresh = torch.tensor([tuple(row) not in heldout for row in (digits + lesson05.FIRST_DIGIT).tolist()])
        digits = digits[fresh]                                            # never a held-out sequence
        model.train()
        loss = F.cross_entropy(model(digits).transpose(1, 2), digits.flip(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        optimizer.step()
        seconds += time.perf_counter() - t0
        if step % r["eval_every"] == 0:
            model.eval()
            with torch.no_grad():
                exact = (model(val_src).argmax(-1) == val_out).all(1).float().mean().item()
            if exact >= 0.99:
                return step, seconds
    return None, seconds


def reversal_race(seeds):
    config = lesson05.TrainConfig()
    val, test = lesson05.heldout_sets(config)
    val_src = val.src - lesson05.FIRST_DIGIT                              # digits (all length 16)
    val_out = val_src.flip(1)
    heldout = {tuple(row) for s in (val.src, test.src) for row in s.tolist()}
    ours, ref = [], []
    for seed in seeds:
        result = lesson05.train(lesson05.TrainConfig(seed=seed), quiet=True, data=(val, test))
        ours.append((result.target_step, result.target_seconds))
        ref.append(train_reference(seed, val_src, val_out, heldout))
        print(f"  seed {seed}: ours {fmt_run(ours[-1])} | reference {fmt_run(ref[-1])}", flush=True)
    return ours, ref


def fmt_run(run):
    steps, seconds = run
    return f"{steps} steps, {seconds:.2f} s" if steps is not None else f"not reached ({seconds:.1f} s)"


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_task(task, repeats):
    """Run the lesson with default flags for `task`; returns (walls, user CPU seconds, metrics)."""
    walls, users, metrics = [], [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            start = time.perf_counter()
            done = subprocess.run([sys.executable, str(ROOT / "05_mini_transformer.py"), "--task", task,
                                   "--out-dir", out], cwd=ROOT, capture_output=True, text=True,
                                  env=dict(os.environ, MPLBACKEND="Agg"))
            walls.append(time.perf_counter() - start)
            users.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before)
            if done.returncode != 0:
                tail = ((done.stderr or done.stdout).strip().splitlines() or [""])[-1]
                raise common.UserError(f"--task {task}: the lesson failed (exit {done.returncode}): {tail}")
            metrics = json.loads((Path(out) / "metrics.json").read_text())
    return walls, users, metrics


@common.entry_point
def main(argv=None):
    parser = common.plain_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the reversal race (median reported)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the lesson per task (median wall)")
    parser.add_argument("--tasks", nargs="*", default=list(lesson05.TASKS), choices=lesson05.TASKS,
                        help="tasks for part 2")
    parser.add_argument("--skip-tasks", action="store_true", help="only the reversal race")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the lesson policy)")
    args = parser.parse_args(argv)
    if not (1 <= args.seeds <= 20 and 1 <= args.repeats <= 20):
        parser.error("--seeds and --repeats must be from 1 to 20 (each is a full training run or lesson run)")
    if args.threads is not None:
        common.cli.check_threads(args.threads, f"--threads {args.threads}")
    threads = common.set_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.2f}, torch {torch.__version__}, "
          f"{threads} thread(s)")

    print("\nPart 1: reversal, length 16, until 99% exact-match on 1000 held-out sequences")
    ours, ref = reversal_race(list(range(args.seeds)))
    ours_steps, ours_s = median_or_none([s for s, _ in ours]), median_or_none([t for s, t in ours if s])
    ref_steps, ref_s = median_or_none([s for s, _ in ref]), median_or_none([t for s, t in ref if s])
    rows = [["ours (lesson 05 defaults)", ours_steps, ours_s, ours],
            ["reference (Tutorial 6 recipe)", ref_steps, ref_s, ref]]
    print()
    # the medians are over the seeds that reached the target; "reached" says how many did
    print(f"  {'model':<32} {'median steps':>13} {'median train s':>15} {'reached':>8}")
    for name, steps, seconds, runs in rows:
        reached = f"{sum(s is not None for s, _ in runs)}/{len(runs)}"
        print(f"  {name:<32} {str(steps) if steps is not None else 'not reached':>13} "
              f"{f'{seconds:.2f}' if seconds is not None else '-':>15} {reached:>8}")
    ratio = ref_s / ours_s if ours_s and ref_s else None
    step_ratio = ref_steps / ours_steps if ours_steps and ref_steps else None
    if ratio:
        print(f"  speed-up in training time: {ratio:.1f}x (goal >= 4x: {'met' if ratio >= 4 else 'NOT met'}); "
              f"in steps: {step_ratio:.1f}x")
    results = {"machine": {"cores": os.cpu_count(), "load_average_1min": load, "threads": threads},
               "reversal": {"ours": ours, "reference": ref, "ours_median_steps": ours_steps,
                            "ours_median_seconds": ours_s, "reference_median_steps": ref_steps,
                            "reference_median_seconds": ref_s, "speedup_seconds": ratio,
                            "speedup_steps": step_ratio}}

    if not args.skip_tasks:
        print(f"\nPart 2: python 05_mini_transformer.py --task T (default flags), {args.repeats} run(s) each")
        print(f"  {'task':<8} {'median wall s':>13} {'user CPU s':>10} {'steps':>6} {'test exact':>10} "
              f"{'target step':>11}  goal (>= 95% within 60 s)")
        results["tasks"] = {}
        for task in args.tasks:
            walls, users, m = run_task(task, args.repeats)
            wall = statistics.median(walls)
            exact = m["test"]["greedy"]["exact_match"]
            ok = exact >= 0.95 and wall <= 60
            print(f"  {task:<8} {wall:>13.1f} {statistics.median(users):>10.1f} {m['steps_run']:>6} "
                  f"{exact:>10.4f} {str(m['target_step']):>11}  {'met' if ok else 'NOT met'}", flush=True)
            results["tasks"][task] = {"walls_s": walls, "user_cpu_s": users, "steps_run": m["steps_run"],
                                      "test_exact_match_greedy": exact, "target_step": m["target_step"],
                                      "train_seconds": m["train_seconds"]}
    common.write_json(ROOT / "bench" / "results_training.json", results)
    print(f"\nwritten: {ROOT / 'bench' / 'results_training.json'}")


if __name__ == "__main__":
    main()
