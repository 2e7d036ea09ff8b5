"""Multi-fidelity scoring: stop a candidate after a fraction of the calibration blocks when it cannot enter the
front. Pure logic: no torch, no storage.

Optuna's pruners do not support multi-objective studies, so the rule is our own. A candidate is scored on the
first `fraction` of the blocks (the evaluator puts the blocks in a fixed random order, so these sample the whole
calibration text). From the per-block values of its quality objective, its full-fidelity quality is estimated
as their mean, with the standard error of a mean of blocks drawn without replacement. It is finished on the
rest only if its optimistic quality (mean - margin x standard error) with its exact latency (and extra
objectives) is dominated by no member of the current front; otherwise it stops early.

A stopped candidate is stored as a complete trial whose `fidelity` constraint is violated, so it never reaches
the front or the hypervolume, yet counts towards `n_trials` and still informs the sampler with its estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A low-fidelity estimate of a candidate's quality objective on its own scale (KL, or NLL for ppl)."""

    mean: float
    stderr: float
    blocks: int

    def optimistic(self, margin: float) -> float:
        return self.mean - margin * self.stderr


def estimate(block_values: Sequence[float], total_blocks: int) -> Estimate:
    """Mean and standard error of the mean of `block_values`, a random sample of `total_blocks` blocks (with the
    finite-population correction: it is 0 once every block is scored)."""
    n = len(block_values)
    if n == 0:
        raise ValueError("no block scored")
    mean = sum(block_values) / n
    if n < 2:
        return Estimate(mean, math.inf, n)
    variance = sum((v - mean) ** 2 for v in block_values) / (n - 1)
    correction = max(0.0, 1 - n / total_blocks) if total_blocks else 0.0
    return Estimate(mean, math.sqrt(variance / n * correction), n)


def dominated(point: Sequence[float], front: Sequence[Sequence[float]]) -> bool:
    """Whether a front member is no worse than `point` in every objective and better in one (all minimised)."""
    return any(_dominates(member, point) for member in front)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    pairs = list(zip(a, b, strict=True))
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def could_enter_front(optimistic_values: Sequence[float], front: Sequence[Sequence[float]]) -> bool:
    """True unless the current front dominates the candidate even at its optimistic quality."""
    return not dominated(optimistic_values, front)


def low_fidelity_batches(n_batches: int, fraction: float) -> int:
    """How many batches the first stage scores: at least one, fewer than all (0 when staging cannot save)."""
    if fraction >= 1 or n_batches < 2:
        return 0
    return min(n_batches - 1, max(1, round(n_batches * fraction)))
