"""Threads, seeds and the lesson header: what every lesson's main() does first."""
import random
import textwrap

import numpy as np
import torch

from common.cli import threads_from_environment
from common.console import WIDTH, header
from common.device import choose_device

# Thread policy, chosen by measurement (bench/bench_threads.py, 2-core machine, torch 2.13 CPU,
# lesson 05's default model): a training step took 13.7 ms with 1 thread and 12.4 ms with 2 on an
# idle machine, but 12.8 ms with 1 thread and 49.5 ms with 2 while another process kept one core
# busy (the threads wait for each other). At these model sizes a second thread gains ~10% at best
# and loses 4x (20-50x has been seen on busier shared machines) when anything else runs. So the
# default is 1 thread; OMP_NUM_THREADS or --threads override it.
DEFAULT_THREADS = 1


def set_threads(threads=None) -> int:
    """Set torch's CPU thread count: `threads`, else $OMP_NUM_THREADS, else 1. Returns it."""
    if threads is None:
        threads = threads_from_environment() or DEFAULT_THREADS   # checked: 1 .. cores
    torch.set_num_threads(int(threads))
    return int(threads)


def seed_everything(seed: int):
    """Seed Python's random, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def quick_note(args, note: str = "", **knobs):
    """With --quick: the one line common.setup prints, naming every knob --quick replaces and both
    values, e.g. quick_note(args, STEPS=(STEPS, 100)) -> '--quick replaces STEPS = 300 with 100'. A
    knob given as None (a flag set it) or already equal to its quick value is left out."""
    changed = [f"{name} = {knob!r} with {quick!r}" for name, pair in knobs.items() if pair is not None
               for knob, quick in [pair] if knob != quick]
    if args.quick and changed:
        args.quick_note = f"--quick replaces {', '.join(changed)}{note}"


def setup(args, title: str) -> torch.device:
    """Threads, device, seed and the header. Returns the device to use."""
    threads = set_threads(args.threads)
    device, reason = choose_device(args.device)
    seed_everything(args.seed)
    header(title, device=device, reason=reason, seed=args.seed, threads=threads,
           out_dir=args.out_dir, quick=getattr(args, "quick", False))
    if getattr(args, "quick_note", None):   # which knobs --quick overrides, said once
        print(textwrap.fill(args.quick_note, WIDTH, subsequent_indent="  "))
    return device
