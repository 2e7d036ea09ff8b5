"""Bounded least-squares fit of a roofline's efficiency factors and overheads to measurements. Pure numpy.

Predicted phase time = roofline(ce, be) + launches * L + S, with the roofline of `roofline.py` (the same
function the analytical model prices with). Every parameter is kept physical by `FitBounds`: efficiencies are
shares of probed peaks (not far above 1, not near 0), the per-kernel cost lies around the probed dispatch cost,
the per-step cost is non-negative. For fixed (ce, be) the model is linear in (L, S), solved exactly within its
box by weighted least squares on relative error (every active set tried); (ce, be) are found by a log-spaced
grid search within their bounds, refined twice around the best point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .hardware import HardwareProfile
from .ops import Op
from .roofline import OpArrays, roofline_seconds


@dataclass(frozen=True)
class PhaseCost:
    """One measured phase as the fit needs it: its ops as arrays, the profile's peak rates, measured seconds."""

    arrays: OpArrays
    peak_flops_per_s: float
    peak_bytes_per_s: float
    measured_s: float

    @classmethod
    def of(cls, ops: list[Op], profile: HardwareProfile, dtype: str, measured_s: float) -> PhaseCost:
        return cls(OpArrays.of(ops), profile.peak_flops(dtype), profile.bandwidth_bytes_per_s, measured_s)

    @property
    def launches(self) -> float:
        return float(self.arrays.launches)

    def roofline_s(self, compute_eff: float, bandwidth_eff: float) -> float:
        """The roofline part of the model's prediction (`roofline.roofline_seconds`), averaged over contexts."""
        rates = (self.peak_flops_per_s * compute_eff, self.peak_bytes_per_s * bandwidth_eff)
        return float(roofline_seconds(self.arrays, *rates).mean())


@dataclass(frozen=True)
class FitBounds:
    """Physical bounds of the fitted parameters (seconds for the overheads)."""

    compute_efficiency: tuple[float, float] = (0.05, 1.25)
    bandwidth_efficiency: tuple[float, float] = (0.05, 1.25)
    launch_overhead_s: tuple[float, float] = (0.0, 1e-3)
    step_overhead_s: tuple[float, float] = (0.0, 0.1)

    @classmethod
    def around_probe(cls, launch_overhead_s: float) -> FitBounds:
        """Bounds for a device whose tiny-op dispatch was probed: a kernel costs 0.5x to 25x that probe. The probe
        is a bare `torch.add` at its fastest; an op inside a transformers module adds its Python call, argument
        handling and allocation (about 10x on a server CPU), a fused op's share is below one bare dispatch."""
        if launch_overhead_s <= 0:
            return cls()
        return cls(launch_overhead_s=(0.5 * launch_overhead_s, 25.0 * launch_overhead_s))


@dataclass(frozen=True)
class FitResult:
    compute_efficiency: float
    bandwidth_efficiency: float
    launch_overhead_s: float
    step_overhead_s: float
    rms_relative_error: float


def box_lstsq(design: np.ndarray, target: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """argmin ||design @ x - target|| subject to low <= x <= high, for a few columns: every active set (each
    variable free, at its lower or at its upper bound) is solved and the best feasible solution kept."""
    n = design.shape[1]
    best, best_cost = np.clip(np.zeros(n), low, high), np.inf
    for state in itertools.product((0, 1, 2), repeat=n):  # 0 free, 1 at low, 2 at high
        x = np.where(np.array(state) == 1, low, high).astype(float)
        free = [i for i in range(n) if state[i] == 0]
        if free:
            fixed = [i for i in range(n) if state[i] != 0]
            rest = target - design[:, fixed] @ x[fixed]
            x[free] = np.linalg.lstsq(design[:, free], rest, rcond=None)[0]
        if np.all(x >= low - 1e-15) and np.all(x <= high + 1e-15):
            cost = float(np.sum((design @ x - target) ** 2))
            if cost < best_cost:
                best, best_cost = x, cost
    return best


def _solve_overheads(
    residual: np.ndarray, launches: np.ndarray, y: np.ndarray, bounds: FitBounds
) -> tuple[float, float, float]:
    """(L, S) within `bounds` minimising sum(((residual - L*launches - S) / y)^2); returns (L, S, rms)."""
    design = np.stack([launches / y, 1.0 / y], axis=1)
    target = residual / y
    low = np.array([bounds.launch_overhead_s[0], bounds.step_overhead_s[0]])
    high = np.array([bounds.launch_overhead_s[1], bounds.step_overhead_s[1]])
    best = box_lstsq(design, target, low, high)
    rms = float(np.sqrt(np.mean((target - design @ best) ** 2)))
    return float(best[0]), float(best[1]), rms


def _evaluate(phases: list[PhaseCost], ce: float, be: float, bounds: FitBounds) -> FitResult:
    roof = np.array([p.roofline_s(ce, be) for p in phases])
    y = np.array([p.measured_s for p in phases])
    launches = np.array([p.launches for p in phases])
    launch, step, rms = _solve_overheads(y - roof, launches, y, bounds)
    return FitResult(ce, be, launch, step, rms)


def fit_efficiencies(
    phases: list[PhaseCost], bounds: FitBounds | None = None, points: int = 17, rounds: int = 3
) -> FitResult:
    """Best (ce, be, L, S) within `bounds` for the measured phases by relative least squares."""
    bounds = bounds or FitBounds()
    limits = [tuple(np.log(bounds.compute_efficiency)), tuple(np.log(bounds.bandwidth_efficiency))]
    ranges = list(limits)
    best: FitResult | None = None
    for _ in range(rounds):
        ce_grid, be_grid = (np.exp(np.linspace(low, high, points)) for low, high in ranges)
        results = [_evaluate(phases, ce, be, bounds) for ce in ce_grid for be in be_grid]
        best = min(results + ([best] if best else []), key=lambda r: r.rms_relative_error)
        centers = (np.log(best.compute_efficiency), np.log(best.bandwidth_efficiency))
        ranges = [_around(c, r, lim, points) for c, r, lim in zip(centers, ranges, limits, strict=True)]
    return best


def _around(center: float, current: tuple[float, float], limit: tuple[float, float], points: int):
    step = (current[1] - current[0]) / (points - 1)
    return max(center - step, limit[0]), min(center + step, limit[1])


def mape(predicted: np.ndarray | list[float], measured: np.ndarray | list[float]) -> float:
    """Mean absolute percentage error, in percent."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(predicted - measured) / measured) * 100)


def spearman(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return float(np.corrcoef(_ranks(np.asarray(a, float)), _ranks(np.asarray(b, float)))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):  # average tied ranks
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
