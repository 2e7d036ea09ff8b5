"""The roofline formula, written once: the analytical model prices with it and the calibration fit fits it.

Time of one op = max(FLOPs / (peak * compute_efficiency), bytes / (bandwidth * bandwidth_efficiency))
+ launches * launch_overhead; a phase is the sum over its ops plus one `step_overhead` per forward.
Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hardware import HardwareProfile
from .ops import Op


@dataclass(frozen=True)
class OpArrays:
    """An op list as arrays: one row per op, one column per context (decode key length), repeats, launches."""

    flops: np.ndarray  # [ops, contexts]
    bytes: np.ndarray  # [ops, contexts]
    repeat: np.ndarray  # [ops, 1]
    launches: int  # kernel launches of the whole op list (repeats included)
    kinds: tuple[str, ...] = ()  # each op's kind ("gemm", "attention", "memory"), for `time_shares`

    @classmethod
    def of(cls, ops: list[Op]) -> OpArrays:
        return cls(
            flops=_broadcast(ops, "flops"),
            bytes=_broadcast(ops, "bytes"),
            repeat=np.array([op.repeat for op in ops], dtype=float)[:, None],
            launches=sum(op.launches * op.repeat for op in ops),
            kinds=tuple(op.kind for op in ops),
        )


def _broadcast(ops: list[Op], attr: str) -> np.ndarray:
    values = [np.asarray(getattr(op, attr), dtype=float) for op in ops]
    shape = np.broadcast_shapes(*(v.shape for v in values))
    return np.stack([np.broadcast_to(v, shape) for v in values]).reshape(len(ops), -1)


def roofline_seconds(arrays: OpArrays, flops_per_s: float, bytes_per_s: float) -> np.ndarray:
    """Per context: the sum over ops of max(compute time, memory time) at the given effective rates.
    Overheads are not included (see `phase_seconds`)."""
    compute, memory = arrays.flops / flops_per_s, arrays.bytes / bytes_per_s
    return (np.maximum(compute, memory) * arrays.repeat).sum(axis=0)


def memory_bound_seconds(arrays: OpArrays, flops_per_s: float, bytes_per_s: float) -> np.ndarray:
    """Per context: the part of `roofline_seconds` spent in memory-bound ops (reported, not fitted: the
    efficiency fit evaluates only `roofline_seconds`, many times)."""
    compute, memory = arrays.flops / flops_per_s, arrays.bytes / bytes_per_s
    return (np.where(memory >= compute, memory, 0.0) * arrays.repeat).sum(axis=0)


def phase_seconds(arrays: OpArrays, profile: HardwareProfile, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of one forward per context on `profile` (roofline at its efficiencies, plus launches times the
    launch overhead, plus one step overhead), and the share of the roofline time spent in memory-bound ops."""
    flops_per_s = profile.peak_flops(dtype) * profile.compute_efficiency
    bytes_per_s = profile.bandwidth_bytes_per_s * profile.bandwidth_efficiency
    roof = roofline_seconds(arrays, flops_per_s, bytes_per_s)
    memory_bound = memory_bound_seconds(arrays, flops_per_s, bytes_per_s)
    launches = arrays.launches * profile.launch_overhead_us * 1e-6
    return roof + launches + profile.step_overhead_us * 1e-6, memory_bound / roof


# What a memory-bound op of each kind mostly reads: GEMMs their weights, attention the KV cache.
MEMORY_BOUND_BY_KIND = {"gemm": "weights", "attention": "kv_cache", "memory": "activations"}


def time_shares(arrays: OpArrays, profile: HardwareProfile, dtype: str) -> dict[str, float]:
    """Shares of a phase's time (mean over contexts): compute-bound ops, memory-bound GEMMs (weight reads),
    memory-bound attention (KV-cache reads), other memory-bound ops (activations), and fixed overheads."""
    flops_per_s = profile.peak_flops(dtype) * profile.compute_efficiency
    bytes_per_s = profile.bandwidth_bytes_per_s * profile.bandwidth_efficiency
    compute, memory = arrays.flops / flops_per_s, arrays.bytes / bytes_per_s
    per_op = (np.maximum(compute, memory) * arrays.repeat).mean(axis=1)
    compute_bound = (compute > memory).mean(axis=1) >= 0.5
    seconds = dict.fromkeys(["compute", "weights", "kv_cache", "activations"], 0.0)
    for kind, bound, t in zip(arrays.kinds, compute_bound, per_op, strict=True):
        seconds["compute" if bound else MEMORY_BOUND_BY_KIND[kind]] += float(t)
    seconds["overhead"] = arrays.launches * profile.launch_overhead_us * 1e-6 + profile.step_overhead_us * 1e-6
    total = sum(seconds.values())
    return {name: value / total for name, value in seconds.items()}
