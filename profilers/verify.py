"""The cost of a speculative-decoding verification step: the target scoring `tokens` new tokens per sequence in
one forward, with logits at every one of them. Pure logic: numpy only.

`verification_costs` asks the latency model first: one that prices verification itself (`VerificationPricer`,
e.g. `measured.MeasuredLatencyModel`, which times the (g + 1)-token forward on the device) answers; otherwise
the roofline behind the model prices it as below; a model with neither gets None (the caller prices v = 1).

A plain decode step feeds one token per sequence and needs logits at that one position. Verifying `g` drafted
tokens feeds `g + 1` (the last accepted token and the `g` drafts) and needs logits at all `g + 1`: the same op
list as a decode step with `q = g + 1` queries per sequence (GEMMs over `batch * q` rows, attention of `q`
queries against the cache plus the new keys), and an LM head and sampling over `batch * q` rows. Priced by the
same roofline as the decode step, at the workload's decode key lengths, so `tokens = 1` reproduces the model's
`decode_ms_per_token` exactly. While decoding is memory-bound (weights read once per step), extra tokens cost
little; once the GEMMs become compute-bound (large batches, large models on a GPU, a CPU), they cost in full.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from prunesearch.choices import Engine
from prunesearch.pruning.plan import PrunePlan

from .analytical import RooflineModel, gemm_tile
from .calibrate import CalibratedLatencyModel
from .engines import graphs_forward_ops
from .latency import LatencyModel, Workload
from .ops import GemmTile, ModelDims, Op, forward_ops, gemm_op, memory_op, model_dims
from .roofline import OpArrays, phase_seconds


@runtime_checkable
class VerificationPricer(Protocol):
    """A latency model that prices the verification step itself (a measured one: it times it)."""

    def verification_costs(self, config: Any, workload: Workload, max_lookahead: int) -> tuple[float, ...]:
        """`v(g)` for g = 1..max_lookahead, relative to one plain decode step of the dense model."""
        ...


def roofline_of(model: LatencyModel) -> RooflineModel | None:
    """The roofline behind a latency model (the model itself, or a calibration's); None for a measured one."""
    if isinstance(model, RooflineModel):
        return model
    if isinstance(model, CalibratedLatencyModel):
        return model.roofline()
    return None


def multi_token_ops(
    dims: ModelDims,
    workload: Workload,
    tokens: int,
    engine: Engine,
    dynamic_cache: bool = False,
    tile: GemmTile | None = None,
) -> list[Op]:
    """One forward feeding `tokens` new tokens per sequence with logits at each, per decode step's key length."""
    b, batch = workload.dtype_bytes, workload.batch
    keys = workload.prompt_tokens + np.arange(1, max(workload.decode_steps, 1) + 1, dtype=float) + (tokens - 1)
    if engine == Engine.GRAPHS:
        ops = graphs_forward_ops(dims, batch, tokens, keys, b, tile)
    else:
        ops = forward_ops(dims, batch, tokens, keys, b, dynamic_cache=dynamic_cache, tile=tile)
    rows = batch * tokens  # logits at every fed position, not only the last
    head = [
        gemm_op("lm_head", rows, dims.hidden, dims.vocab, b, tile=tile),
        memory_op("sample", rows * dims.vocab, b, 1),
    ]
    return [op for op in ops if op.name not in ("lm_head", "sample")] + head


def multi_token_step_ms(
    model: LatencyModel, config: Any, plan: PrunePlan | None, workload: Workload, tokens: int
) -> float | None:
    """Mean ms of one such forward over the workload's decode steps (None: the model has no roofline)."""
    roofline = roofline_of(model)
    if roofline is None:
        return None
    engine = workload.engine or roofline.profile.engine
    profile = roofline.profile.for_engine(engine)
    dynamic = roofline.dynamic_cache and engine == Engine.EAGER
    ops = multi_token_ops(model_dims(config, plan), workload, tokens, engine, dynamic, gemm_tile(profile))
    seconds, _ = phase_seconds(OpArrays.of(ops), profile, workload.dtype)
    return float(seconds.mean()) * 1e3


def verification_costs(
    model: LatencyModel, config: Any, workload: Workload, max_lookahead: int
) -> tuple[float, ...] | None:
    """`v(g)` for g = 1..max_lookahead: the dense model scoring g + 1 tokens per sequence in one forward, relative
    to one plain decode step: the model's own pricing if it has one, else its roofline's (None: neither)."""
    if isinstance(model, VerificationPricer):
        return model.verification_costs(config, workload, max_lookahead)
    one = multi_token_step_ms(model, config, None, workload, 1)
    if one is None:
        return None
    costs = (multi_token_step_ms(model, config, None, workload, g + 1) for g in range(1, max_lookahead + 1))
    return tuple(float(ms) / one for ms in costs)


__all__ = ["VerificationPricer", "multi_token_ops", "multi_token_step_ms", "roofline_of", "verification_costs"]
