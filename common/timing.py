"""Timing a small piece of work the way the lessons report it: the fastest of a few runs.

The fastest run is the one least disturbed by other programs, so it is the best estimate of what the
work itself costs on a busy machine. A GPU runs asynchronously: the device is synchronised before
the clock starts and before it stops, so the time covers the work and not only its launch.
"""
import time

import torch


def best_time(fn, device="cpu", repeats: int = 5) -> float:
    """Fastest wall-clock time of fn() in seconds over `repeats` calls, after one warm-up call."""
    kind = torch.device(device).type
    sync = getattr(torch, kind).synchronize if kind in ("cuda", "mps") else (lambda: None)
    fn()  # warm-up: first calls pay for memory allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best
