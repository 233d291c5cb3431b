"""Timing an engine's forward, for the cost model behind the schedule and modeled latency."""

from __future__ import annotations

import time

import torch


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timer reads what a forward took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_forward_cost(engine, repeats: int = 3, long: int = 32) -> tuple[float, float]:
    """Fit ``fixed + per_token * n`` from timed forwards over 1 and ``long`` tokens (fresh caches)."""

    def timed(n: int) -> float:
        best = float("inf")
        for _ in range(repeats):
            cache = engine.new_cache(1, long + 1)
            sync_device(engine.device)
            start = time.perf_counter()
            engine.forward(cache, [0], [0], [[engine.pad_id] * n])
            sync_device(engine.device)
            best = min(best, time.perf_counter() - start)
        return best

    timed(1)  # warm-up
    one, many = timed(1), timed(long)
    per_token = max(many - one, 0.0) / (long - 1)
    return (max(one - per_token, 0.0), per_token)
