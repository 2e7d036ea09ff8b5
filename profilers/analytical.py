"""The roofline latency model: prices a config + plan from FLOPs and bytes alone (no weights, no torch).

The formula (one op = max(compute time, memory time) + launch overhead; one `step_overhead` per forward) is
in `roofline.py`, shared with the calibration fit; the op lists per engine are in `engines.py`.
Decode is integrated exactly: every step's key length is priced (vectorised), then averaged.
Memory: weights + the workload's full KV cache + the largest prefill activation must fit in the profile's
memory less its headroom; `details.max_batch` is the largest concurrency that does.
`details.decode_time_shares` splits a decode step's time into compute-bound kernels, weight reads, KV-cache
reads, other activations, and fixed overheads; `decode_bound` names the largest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from prunesearch.choices import Engine
from prunesearch.pruning.plan import PrunePlan

from .engines import phase_ops as engine_phase_ops
from .hardware import HardwareProfile
from .latency import LatencyEstimate, Workload, totals
from .ops import GemmTile, ModelDims, Op, kv_bytes_per_token, matmul_flops, model_dims, param_count
from .roofline import OpArrays, phase_seconds, time_shares


def phase_ops(
    dims: ModelDims,
    workload: Workload,
    dynamic_cache: bool = False,
    engine: Engine = Engine.EAGER,
    tile: GemmTile | None = None,
) -> tuple[list[Op], list[Op]]:
    """Prefill ops (batch x prompt) and decode ops with one array entry per decode step's key length."""
    return engine_phase_ops(dims, workload, engine, dynamic_cache=dynamic_cache, tile=tile)


def gemm_tile(profile: HardwareProfile) -> GemmTile | None:
    """The profile's GEMM tile with its SM count, or None (no tile effects, e.g. a CPU)."""
    if profile.gemm_tile is None:
        return None
    return GemmTile(*profile.gemm_tile, sms=profile.sm_count)


def _activation_bytes(dims: ModelDims, workload: Workload) -> int:
    tokens = workload.batch * workload.prompt_tokens
    widest = max([dims.hidden * 4, dims.vocab // workload.prompt_tokens] + [2 * x.ffn for x in dims.layers])
    return tokens * widest * workload.dtype_bytes


def kv_cache_bytes(dims: ModelDims, workload: Workload) -> int:
    """The full KV cache of the workload: every sequence at its final length."""
    per_sequence = kv_bytes_per_token(dims, workload.dtype_bytes) * (workload.prompt_tokens + workload.generate_tokens)
    return per_sequence * workload.batch


def memory_needed(dims: ModelDims, workload: Workload) -> int:
    """Weights, the full KV cache and the largest prefill activation (logits, MLP hidden) in bytes."""
    weights = param_count(dims) * workload.dtype_bytes
    return weights + kv_cache_bytes(dims, workload) + _activation_bytes(dims, workload)


def max_batch(dims: ModelDims, workload: Workload, usable_bytes: int) -> int:
    """The largest concurrency whose weights, KV cache and prefill activations fit in `usable_bytes` (0: none)."""
    one = Workload(1, workload.prompt_tokens, workload.generate_tokens, workload.dtype)
    per_sequence = kv_cache_bytes(dims, one) + _activation_bytes(dims, one)
    free = usable_bytes - param_count(dims) * workload.dtype_bytes
    return max(int(free // per_sequence), 0) if per_sequence else 0


@dataclass(frozen=True)
class RooflineModel:
    """`LatencyModel` from a hardware profile. The engine is the workload's, else the profile's default;
    `dynamic_cache` prices transformers' copying KV cache (eager only)."""

    profile: HardwareProfile
    dynamic_cache: bool = False
    method: str = "roofline"

    def estimate(self, config: Any, plan: PrunePlan | None, workload: Workload) -> LatencyEstimate:
        """Price `config` pruned by `plan` running `workload` on `self.profile` (ms even for 70B)."""
        engine = workload.engine or self.profile.engine
        profile = self.profile.for_engine(engine)
        dims = model_dims(config, plan)
        dynamic = self.dynamic_cache and engine == Engine.EAGER
        prefill, decode = phase_ops(dims, workload, dynamic, engine, gemm_tile(profile))
        prefill_arrays, decode_arrays = OpArrays.of(prefill), OpArrays.of(decode)
        prefill_s, prefill_mem = phase_seconds(prefill_arrays, profile, workload.dtype)
        decode_s, decode_mem = phase_seconds(decode_arrays, profile, workload.dtype)
        prefill_ms, decode_ms = float(prefill_s.mean()) * 1e3, float(decode_s.mean()) * 1e3
        total_ms, tokens_per_s = totals(prefill_ms, decode_ms, workload)
        params = param_count(dims)
        needed, usable = memory_needed(dims, workload), profile.usable_memory_bytes
        decode_shares = time_shares(decode_arrays, profile, workload.dtype)
        details = {
            "hardware": self.profile.name,
            "engine": engine.value,
            "prefill_flops": float(matmul_flops(prefill)),
            "decode_flops_per_step": float(np.mean(matmul_flops(decode))),
            "prefill_memory_bound_share": float(prefill_mem.mean()),
            "decode_memory_bound_share": float(decode_mem.mean()),
            "decode_time_shares": decode_shares,
            "decode_bound": _bound(decode_shares),
            "prefill_bound": _bound(time_shares(prefill_arrays, profile, workload.dtype)),
            "memory_needed_bytes": needed,
            "memory_usable_bytes": usable,
            "max_batch": max_batch(dims, workload, usable),
        }
        if profile.recommended_ffn_step:
            details["recommended_ffn_step"] = profile.recommended_ffn_step
        return LatencyEstimate(
            prefill_ms=prefill_ms,
            decode_ms_per_token=decode_ms,
            total_ms=total_ms,
            tokens_per_s=tokens_per_s,
            params=params,
            weight_bytes=params * workload.dtype_bytes,
            kv_bytes_per_token=kv_bytes_per_token(dims, workload.dtype_bytes),
            fits_in_memory=needed <= usable,
            method=f"{self.method}:{self.profile.name}:{engine.value}",
            details=details,
        )


def _bound(shares: dict[str, float]) -> str:
    """The largest share's name: what a phase is mostly bound by."""
    return max(shares, key=shares.get)
