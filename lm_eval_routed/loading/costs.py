"""Timing an engine's forward, for the cost model behind the schedule and modeled latency."""

from __future__ import annotations

import math
import time

import torch


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timer reads what a forward took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(engine, n_inf: int, n_kv: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds of one engine forward over ``n_inf`` new tokens after ``n_kv``
    cached ones (``HFEngine.forward``, as the decoder calls it; one row)."""
    cache = engine.new_cache(1, n_kv + n_inf)
    if n_kv:
        engine.forward(cache, [0], [0], [[engine.pad_id] * n_kv])
    best = math.inf
    for _ in range(repeats):  # each repeat writes the same slots after the same cached prefix
        sync_device(engine.device)
        start = time.perf_counter()
        engine.forward(cache, [0], [n_kv], [[engine.pad_id] * n_inf])
        sync_device(engine.device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_forward_cost(engine, repeats: int = 3, long: int = 32) -> tuple[float, float]:
    """Fit ``fixed + per_token * n`` from timed forwards over 1 and ``long`` tokens (empty caches)."""
    time_forward(engine, 1, 0, 1)  # warm-up
    one, many = time_forward(engine, 1, 0, repeats), time_forward(engine, long, 0, repeats)
    per_token = max(many - one, 0.0) / (long - 1)
    return (max(one - per_token, 0.0), per_token)
