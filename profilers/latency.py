"""The latency-model interface: a workload goes in, a `LatencyEstimate` comes out. Pure logic, no torch.

Decode convention (every implementation follows it): like `generate`, the prefill forward already yields
the first new token, so a workload generating G tokens runs G-1 decode steps, at key lengths
prompt+1 .. prompt+G-1. `decode_ms_per_token` is the mean over those steps (the roofline integrates them
exactly); `total_ms = prefill_ms + (G-1) * decode_ms_per_token`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass as validated_dataclass

from prunesearch.choices import DTYPE_BYTES, DType, Engine
from prunesearch.pruning.plan import PrunePlan


@validated_dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class Workload:
    """What is timed: `batch` sequences of `prompt_tokens`, then `generate_tokens` new tokens each.

    The one definition: the search spec's `workload` field is this class, so the API, the CLIs and every latency
    model validate the same bounds. Construction validates (a `pydantic.ValidationError`, a `ValueError`).
    At least one generated token: the prefill yields it, and decode time is per generated token.
    `batch` is the serving concurrency: sequences decoded together, each step producing one token per sequence.
    `engine` is how the model runs (`Engine`); None means the hardware's default (graphs on datacenter GPU
    profiles, eager for `local`). A workload without an engine dumps exactly as before the field existed.
    """

    batch: Annotated[StrictInt, Field(ge=1, le=4096)] = 1
    prompt_tokens: Annotated[StrictInt, Field(ge=1, le=1_048_576)] = 512
    generate_tokens: Annotated[StrictInt, Field(ge=1, le=1_048_576)] = 128
    dtype: DType = DType.BF16
    engine: Engine | None = Field(None, exclude_if=lambda value: value is None)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def decode_steps(self) -> int:
        return self.generate_tokens - 1


@dataclass(frozen=True)
class LatencyEstimate:
    """Latency of one workload on one device, and the model facts that determine it."""

    prefill_ms: float
    decode_ms_per_token: float
    total_ms: float
    tokens_per_s: float
    params: int
    weight_bytes: int
    kv_bytes_per_token: int
    fits_in_memory: bool
    method: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"details": dict(self.details)}


def totals(prefill_ms: float, decode_ms_per_token: float, workload: Workload) -> tuple[float, float]:
    """`total_ms` and generated `tokens_per_s` from the per-phase times, by the convention above."""
    total_ms = prefill_ms + workload.decode_steps * decode_ms_per_token
    tokens_per_s = workload.batch * workload.generate_tokens / (total_ms / 1e3)
    return total_ms, tokens_per_s


@runtime_checkable
class LatencyModel(Protocol):
    """Prices a pruned model on a device: roofline (analytical), measured, or calibrated."""

    def estimate(self, config: Any, plan: PrunePlan | None, workload: Workload) -> LatencyEstimate:
        """Latency of `config` pruned by `plan` (None = dense) running `workload`."""
        ...
