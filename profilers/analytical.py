"""The roofline latency model: prices a config + plan from FLOPs and bytes alone (no weights, no torch).

The formula (one op = max(compute time, memory time) + launch overhead; one `step_overhead` per forward) is
in `roofline.py`, shared with the calibration fit.
Decode is integrated exactly: every step's key length is priced (vectorised), then averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from prunesearch.pruning.plan import PrunePlan

from .hardware import HardwareProfile
from .latency import LatencyEstimate, Workload, totals
from .ops import ModelDims, Op, forward_ops, kv_bytes_per_token, matmul_flops, model_dims, param_count
from .roofline import OpArrays, phase_seconds


def phase_ops(dims: ModelDims, workload: Workload, dynamic_cache: bool = False) -> tuple[list[Op], list[Op]]:
    """Prefill ops (batch x prompt) and decode ops with one array entry per decode step's key length."""
    b, batch, prompt = workload.dtype_bytes, workload.batch, workload.prompt_tokens
    prefill = forward_ops(dims, batch, prompt, prompt, b, dynamic_cache=dynamic_cache)
    contexts = prompt + np.arange(1, max(workload.decode_steps, 1) + 1, dtype=float)
    decode = forward_ops(dims, batch, 1, contexts, b, dynamic_cache=dynamic_cache)
    return prefill, decode


def memory_needed(dims: ModelDims, workload: Workload) -> int:
    """Weights, the full KV cache and the largest prefill activation (logits, MLP hidden) in bytes."""
    b = workload.dtype_bytes
    tokens = workload.batch * workload.prompt_tokens
    kv = kv_bytes_per_token(dims, b) * workload.batch * (workload.prompt_tokens + workload.generate_tokens)
    widest = max([dims.hidden * 4, dims.vocab // workload.prompt_tokens] + [2 * x.ffn for x in dims.layers])
    return param_count(dims) * b + kv + tokens * widest * b


@dataclass(frozen=True)
class RooflineModel:
    """`LatencyModel` from a hardware profile; `dynamic_cache` prices transformers' copying KV cache."""

    profile: HardwareProfile
    dynamic_cache: bool = False
    method: str = "roofline"

    def estimate(self, config: Any, plan: PrunePlan | None, workload: Workload) -> LatencyEstimate:
        """Price `config` pruned by `plan` running `workload` on `self.profile` (ms even for 70B)."""
        dims = model_dims(config, plan)
        prefill, decode = phase_ops(dims, workload, self.dynamic_cache)
        prefill_s, prefill_mem = phase_seconds(OpArrays.of(prefill), self.profile, workload.dtype)
        decode_s, decode_mem = phase_seconds(OpArrays.of(decode), self.profile, workload.dtype)
        prefill_ms, decode_ms = float(prefill_s.mean()) * 1e3, float(decode_s.mean()) * 1e3
        total_ms, tokens_per_s = totals(prefill_ms, decode_ms, workload)
        params = param_count(dims)
        details = {
            "hardware": self.profile.name,
            "prefill_flops": float(matmul_flops(prefill)),
            "decode_flops_per_step": float(np.mean(matmul_flops(decode))),
            "prefill_memory_bound_share": float(prefill_mem.mean()),
            "decode_memory_bound_share": float(decode_mem.mean()),
        }
        return LatencyEstimate(
            prefill_ms=prefill_ms,
            decode_ms_per_token=decode_ms,
            total_ms=total_ms,
            tokens_per_s=tokens_per_s,
            params=params,
            weight_bytes=params * workload.dtype_bytes,
            kv_bytes_per_token=kv_bytes_per_token(dims, workload.dtype_bytes),
            fits_in_memory=memory_needed(dims, workload) <= self.profile.memory_bytes,
            method=f"{self.method}:{self.profile.name}",
            details=details,
        )
