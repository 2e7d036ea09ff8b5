"""Measured latency: build the pruned model (random weights) on the local device and time it.

Prefill is one forward over the prompt with `logits_to_keep=1` (as `generate` runs it); decode is G-1
single-token forwards on the KV cache plus the greedy pick, each timed on its own (convention: `latency.py`).
Verification (`measure_verification`): forwards feeding q tokens per sequence on the prompt's cache, with logits
and the greedy pick at all q, the cache cropped back after each; v(g) = median(q = g + 1) / median(q = 1).
CUDA events with synchronisation on GPUs, `time.perf_counter_ns` on CPU; the timer is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import transformers

from prunesearch.choices import TORCH_DTYPE_NAMES, DType, Engine
from prunesearch.pruning.plan import PrunePlan

from .device import device_facts
from .hardware import HardwareError
from .latency import LatencyEstimate, Workload, totals
from .ops import kv_bytes_per_token, model_dims

T = TypeVar("T")
TORCH_DTYPES: dict[DType, torch.dtype] = {dtype: getattr(torch, name) for dtype, name in TORCH_DTYPE_NAMES.items()}


class Timer(Protocol):
    def __call__(self, fn: Callable[[], T]) -> tuple[T, float]:
        """Run `fn`, return its result and the elapsed milliseconds."""
        ...


def cpu_timer(fn: Callable[[], T]) -> tuple[T, float]:
    """Monotonic wall-clock timing for CPU work (which is synchronous)."""
    start = time.perf_counter_ns()
    result = fn()
    return result, (time.perf_counter_ns() - start) / 1e6


@dataclass(frozen=True)
class CudaTimer:
    """CUDA-event timing: record around `fn`, synchronise, read the elapsed time (factories injectable)."""

    event_factory: Callable[[], Any] = field(default=lambda: torch.cuda.Event(enable_timing=True))
    synchronize: Callable[[], None] = field(default=lambda: torch.cuda.synchronize())

    def __call__(self, fn: Callable[[], T]) -> tuple[T, float]:
        start, end = self.event_factory(), self.event_factory()
        self.synchronize()
        start.record()
        result = fn()
        end.record()
        self.synchronize()
        return result, float(start.elapsed_time(end))


@dataclass(frozen=True)
class Stats:
    """Median and 10th/90th percentiles of repeated timings, in milliseconds."""

    median: float
    p10: float
    p90: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        p10, median, p90 = np.percentile(samples, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), tuple(samples))


def timer_for(device: str) -> Timer:
    return CudaTimer() if device.startswith("cuda") else cpu_timer


def _one_run(model, workload: Workload, timer: Timer, device: str) -> tuple[float, float]:
    """One prefill and its decode steps; returns (prefill ms, mean decode-step ms)."""
    ids = _random_ids(model, workload.batch, workload.prompt_tokens, device)
    out, prefill_ms = timer(lambda: _step(model, ids, None, logits_to_keep=1))
    steps = []
    for _ in range(max(workload.decode_steps, 1)):
        out, ms = timer(lambda out=out: _step(model, out[0], out[1]))
        steps.append(ms)
    return prefill_ms, float(np.mean(steps))


def _step(model, ids: torch.Tensor, cache: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    output = model(ids, cache=cache, use_cache=True, **kwargs)
    return output.logits[:, -1:].argmax(-1), output.cache


def measure_latency(
    model, workload: Workload, *, warmup: int = 2, repeats: int = 5, timer: Timer | None = None
) -> tuple[Stats, Stats]:
    """Prefill and per-decode-step statistics of `model` on `workload` (per-run means for decode)."""
    device = str(next(model.parameters()).device)
    timer = timer or timer_for(device)
    runs = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            result = _one_run(model, workload, timer, device)
            if index >= warmup:
                runs.append(result)
    return Stats.of([r[0] for r in runs]), Stats.of([r[1] for r in runs])


def measure_interleaved(
    models: list, workload: Workload, *, warmup: int = 1, repeats: int = 5, timer: Timer | None = None
) -> list[tuple[Stats, Stats]]:
    """`measure_latency` for several models, in rounds (one run of each model per round), so that load from
    other processes on a shared machine spreads over all models instead of skewing a few."""
    samples: list[list[tuple[float, float]]] = [[] for _ in models]
    with torch.inference_mode():
        for index in range(warmup + repeats):
            for model, runs in zip(models, samples, strict=True):
                device = str(next(model.parameters()).device)
                result = _one_run(model, workload, timer or timer_for(device), device)
                if index >= warmup:
                    runs.append(result)
    return [(Stats.of([r[0] for r in runs]), Stats.of([r[1] for r in runs])) for runs in samples]


def measure_verification(
    model, workload: Workload, max_tokens: int, *, warmup: int = 2, repeats: int = 5, timer: Timer | None = None
) -> list[Stats]:
    """Statistics of one forward feeding q = 1..`max_tokens` new tokens per sequence (index q - 1) on a cache of
    the prompt, with logits and the greedy pick at all q: a plain decode step at q = 1, the verification of q - 1
    drafted tokens above it. Each round times every q once, in an order rotating with the round, so load from
    other processes spreads over all q; the cache is cropped back after every forward, so all read the same keys."""
    device = str(next(model.parameters()).device)
    timer = timer or timer_for(device)
    samples: list[list[float]] = [[] for _ in range(max_tokens)]
    with torch.inference_mode():
        cache = _prompt_cache(model, workload, device)
        for index in range(warmup + repeats):
            for q in _rotated(max_tokens, index):
                ms = _timed_verification(model, cache, _random_ids(model, workload.batch, q, device), timer)
                if index >= warmup:
                    samples[q - 1].append(ms)
    return [Stats.of(runs) for runs in samples]


def _prompt_cache(model, workload: Workload, device: str) -> Any:
    """The KV cache after an (untimed) prefill of a random prompt, recording past states so that sliding-window
    layers can be cropped back too."""
    ids = _random_ids(model, workload.batch, workload.prompt_tokens, device)
    _, cache = _step(model, ids, None, logits_to_keep=1)
    cache.activate_past_recording()
    return cache


def _rotated(count: int, start: int) -> list[int]:
    """1..count, starting at 1 + start % count."""
    order = list(range(1, count + 1))
    shift = start % count
    return order[shift:] + order[:shift]


def _random_ids(model, batch: int, tokens: int, device: str) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, tokens), device=device)


def _timed_verification(model, cache: Any, ids: torch.Tensor, timer: Timer) -> float:
    """The ms of one forward feeding `ids` (batch, tokens) on `cache`; the cache is cropped back after it."""
    length = cache.get_seq_length()
    _, ms = timer(lambda: _verify(model, ids, cache))
    cache.crop(-ids.shape[1])
    if cache.get_seq_length() != length:
        raise RuntimeError(f"the cache did not crop back to {length} tokens")
    return ms


def _verify(model, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """The greedy pick at every fed position, shape (batch, tokens)."""
    return model(ids, cache=cache, use_cache=True).logits.argmax(-1)


def hf_config(config: Mapping[str, Any] | transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """A transformers config from a config dict (as read from config.json) or a config."""
    if isinstance(config, transformers.PretrainedConfig):
        return config
    data = dict(config)
    return transformers.AutoConfig.for_model(data.pop("model_type"), **data)


def build_model(config: Any, plan: PrunePlan | None, dtype: str, device: str):
    """The pruned model with random weights, built by the surgery package's `build_pruned_model`."""
    from prunesearch.pruning.architectures import model_shape
    from prunesearch.pruning.modeling import build_pruned_model

    config = hf_config(config)
    plan = plan or PrunePlan.dense(model_shape(config))
    return build_pruned_model(config, plan, dtype=TORCH_DTYPES[dtype], device=device)


@dataclass(frozen=True)
class MeasuredLatencyModel:
    """`LatencyModel` that times the real (random-weight) model on `device`: transformers eager, `repeats` timed
    runs after `warmup`, each a prefill followed by its decode steps (prefill and decode interleaved, so slow
    phases of a shared machine hit both); medians, with p10/p90 and their spread in `details`. It prices the
    target's speculative verification step by timing it too (`verification_costs`)."""

    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    timer: Timer | None = None
    # rounds of the verification timing: each is 9 decode-sized forwards, cheap, and at 5 rounds a loaded 2-core
    # CPU gave v(1) = 2.1 and v(2) = 1.3 for llama-docs; 40 rounds gave a smooth 1.03, 1.07, ... (docs/drafts.md)
    verify_rounds: int = 30

    def estimate(self, config: Any, plan: PrunePlan | None, workload: Workload) -> LatencyEstimate:
        """Build, warm up and time `config` pruned by `plan`; medians with p10/p90 in `details`."""
        _check_engine(workload)
        model = build_model(config, plan, workload.dtype, self.device)
        prefill, decode = measure_latency(model, workload, warmup=self.warmup, repeats=self.repeats, timer=self.timer)
        total_ms, tokens_per_s = totals(prefill.median, decode.median, workload)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        facts = device_facts(self.device, threads=torch.get_num_threads())
        details = {"prefill": _stats_dict(prefill), "decode": _stats_dict(decode), "device": facts}
        return LatencyEstimate(
            prefill_ms=prefill.median,
            decode_ms_per_token=decode.median,
            total_ms=total_ms,
            tokens_per_s=tokens_per_s,
            params=model.num_parameters(),
            weight_bytes=weight_bytes,
            kv_bytes_per_token=kv_bytes_per_token(model_dims(config, plan), workload.dtype_bytes),
            fits_in_memory=True,  # it ran
            method=f"measured:{facts.get('name', self.device)}",
            details=details,
        )

    def verification_costs(self, config: Any, workload: Workload, max_lookahead: int) -> tuple[float, ...]:
        """`v(g)` for g = 1..max_lookahead, timed on the dense model: the median (g + 1)-token forward on the
        prompt's cache over the median one-token forward, in the same rounds (`measure_verification`)."""
        _check_engine(workload)
        model = build_model(config, None, workload.dtype, self.device)
        stats = measure_verification(
            model, workload, max_lookahead + 1, warmup=self.warmup, repeats=self.verify_rounds, timer=self.timer
        )
        return tuple(step.median / stats[0].median for step in stats[1:])


def _check_engine(workload: Workload) -> None:
    if workload.engine not in (None, Engine.EAGER):
        raise HardwareError(
            "measured latency times transformers eager; the graphs engine is measured by bench/gpu_validate.py"
        )


def _stats_dict(stats: Stats) -> dict[str, float]:
    return {
        "median_ms": stats.median,
        "p10_ms": stats.p10,
        "p90_ms": stats.p90,
        "spread_pct": (stats.p90 - stats.p10) / stats.median * 100 if stats.median else 0.0,
        "repeats": len(stats.samples),
    }
