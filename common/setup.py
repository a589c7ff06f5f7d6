"""Threads, seeds and the lesson header: what every lesson's main() does first."""
import os
import random

import numpy as np
import torch

from common.console import header
from common.device import choose_device

# Thread policy, chosen by measurement on a shared 2-core machine (torch 2.13, CPU): a training
# step of a small model (d_model <= 64) took ~15 ms with 1 thread, and 20-50x longer with torch's
# default of 2 threads whenever another process used a core (threads wait for each other). A second
# thread gained almost nothing even on an idle machine at these sizes. So the default is 1 thread;
# OMP_NUM_THREADS or --threads override it.
DEFAULT_THREADS = 1


def set_threads(threads=None) -> int:
    """Set torch's CPU thread count: `threads`, else $OMP_NUM_THREADS, else 1. Returns it."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else DEFAULT_THREADS
    torch.set_num_threads(int(threads))
    return int(threads)


def seed_everything(seed: int):
    """Seed Python's random, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(args, title: str) -> torch.device:
    """Threads, device, seed and the header. Returns the device to use."""
    threads = set_threads(args.threads)
    device, reason = choose_device(args.device)
    seed_everything(args.seed)
    header(title, device=device, reason=reason, seed=args.seed, threads=threads,
           out_dir=args.out_dir, quick=getattr(args, "quick", False))
    return device
