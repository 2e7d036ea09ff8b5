"""Least-squares fit of a roofline's efficiency factors and overheads to measurements. Pure numpy.

Predicted phase time = roofline(ce, be) + launches * L + S, with the roofline of `roofline.py` (the same
function the analytical model prices with). For fixed (ce, be) the model is linear in (L, S) >= 0, solved
exactly by weighted least squares on relative error; (ce, be) are found by a log-spaced grid search refined
twice around the best point.
"""

from __future__ import annotations

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
class FitResult:
    compute_efficiency: float
    bandwidth_efficiency: float
    launch_overhead_s: float
    step_overhead_s: float
    rms_relative_error: float


def _solve_overheads(residual: np.ndarray, launches: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Non-negative (L, S) minimising sum(((residual - L*launches - S) / y)^2); returns (L, S, rms)."""
    design = np.stack([launches / y, 1.0 / y], axis=1)
    target = residual / y
    candidates = [np.linalg.lstsq(design, target, rcond=None)[0]]
    for column in (0, 1):  # one of them clamped to zero
        coef = np.zeros(2)
        col = design[:, column]
        coef[column] = max(float(col @ target / (col @ col)), 0.0)
        candidates.append(coef)
    candidates.append(np.zeros(2))
    best = min((c for c in candidates if (c >= 0).all()), key=lambda c: np.sum((target - design @ c) ** 2))
    rms = float(np.sqrt(np.mean((target - design @ best) ** 2)))
    return float(best[0]), float(best[1]), rms


def _evaluate(phases: list[PhaseCost], ce: float, be: float) -> FitResult:
    roof = np.array([p.roofline_s(ce, be) for p in phases])
    y = np.array([p.measured_s for p in phases])
    launches = np.array([p.launches for p in phases])
    launch, step, rms = _solve_overheads(y - roof, launches, y)
    return FitResult(ce, be, launch, step, rms)


def fit_efficiencies(phases: list[PhaseCost], points: int = 17, rounds: int = 3) -> FitResult:
    """Best (ce, be, L, S) for the measured phases by relative least squares."""
    bounds = [(np.log(1e-3), np.log(2.0))] * 2
    best: FitResult | None = None
    for _ in range(rounds):
        ce_grid, be_grid = (np.exp(np.linspace(low, high, points)) for low, high in bounds)
        results = [_evaluate(phases, ce, be) for ce in ce_grid for be in be_grid]
        best = min(results + ([best] if best else []), key=lambda r: r.rms_relative_error)
        centers = (np.log(best.compute_efficiency), np.log(best.bandwidth_efficiency))
        bounds = [_around(center, bound, points) for center, bound in zip(centers, bounds, strict=True)]
    return best


def _around(center: float, bound: tuple[float, float], points: int) -> tuple[float, float]:
    step = (bound[1] - bound[0]) / (points - 1)
    return center - step, center + step


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
