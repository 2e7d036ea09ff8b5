"""Sampler seeds of the workers that share one study: distinct, and derived from the job's seed.

Workers that seed their samplers alike propose alike: NSGA-II with three workers on one seed proposed 57 of its 90
plans twice. A job's first worker (slot 0) uses the job's seed itself, so a search run by one worker proposes what
it always did; each later one (slot k) a seed hashed from the job's seed and k."""

from __future__ import annotations

import hashlib

SEED_BITS = 32  # NumPy's RandomState, which Optuna's samplers use, takes seeds below 2**32


def worker_seed(seed: int | None, slot: int) -> int | None:
    """The sampler seed of the `slot`-th worker to join a job seeded with `seed` (None stays None: unseeded)."""
    if seed is None or slot == 0:
        return seed
    digest = hashlib.sha256(f"prunesearch-worker:{seed}:{slot}".encode()).digest()
    return int.from_bytes(digest[: SEED_BITS // 8], "big")
