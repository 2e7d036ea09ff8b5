"""Latency calibration: fit the roofline to this device from a handful of measurements, persist it, evaluate it.

"Calibration" names three things in prunesearch; here it is always the latency one, and its identifiers say so
(`LatencyFit`, `fit_latency`, `load_latency_fit`). Calibration *text* (documents for importance statistics and
the proxy) is `pruning.calibration`; how a search samples that text is the spec's `CalibrationSampling`. The
command-line names (`latency-calibrate`, `--hardware local-calibrated`) are a public contract and stay.

Calibrations live in `$PRUNESEARCH_HOME/calibration/<device-key>.json` (default `~/.cache/prunesearch`).
The calibrated model prices transformers' copying DynamicCache, because that is what it was measured on.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunesearch.pruning.plan import LayerPlan, ModelShape, PrunePlan

from .analytical import RooflineModel, phase_ops
from .fit import PhaseCost, fit_efficiencies, mape, spearman
from .hardware import HardwareProfile, data_dir
from .latency import LatencyEstimate, LatencyModel, Workload
from .ops import model_dims


class LatencyFitMissingError(FileNotFoundError):
    """No latency fit has been saved for this device."""


@dataclass(frozen=True)
class Measurement:
    """Measured median prefill and decode-step milliseconds of one config + plan + workload."""

    config: Any
    plan: PrunePlan | None
    workload: Workload
    prefill_ms: float
    decode_ms: float


@dataclass(frozen=True)
class LatencyFit:
    """A fitted profile for one device, with how well it fits (`metrics`) and the device's facts."""

    device_key: str
    profile: HardwareProfile
    device: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyFit:
        return cls(data["device_key"], HardwareProfile.from_dict(data["profile"]), data["device"], data["metrics"])


def latency_fit_path(device_key: str) -> Path:
    return data_dir() / "calibration" / f"{device_key}.json"


def save_latency_fit(fit: LatencyFit) -> Path:
    """Write the latency fit atomically; returns its path."""
    path = latency_fit_path(fit.device_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fit.to_dict(), indent=2))
    tmp.replace(path)
    return path


def load_latency_fit(device_key: str) -> LatencyFit:
    """The saved latency fit of `device_key`, or an error that says how to make one."""
    path = latency_fit_path(device_key)
    if not path.is_file():
        raise LatencyFitMissingError(
            f"no latency calibration for device {device_key!r} at {path}; "
            "run `prunesearch latency-calibrate --model DIR` first"
        )
    return LatencyFit.from_dict(json.loads(path.read_text()))


def random_plan(shape: ModelShape, rng: random.Random) -> PrunePlan:
    """A random plan of the kind calibration and benchmarks need: per layer removed, without attention or MLP,
    or a random share of KV groups and MLP channels; sometimes a trimmed vocabulary."""
    layers = []
    for _ in range(shape.num_layers):
        heads = rng.choice([0, shape.num_heads, rng.randrange(1, shape.num_kv_heads + 1) * shape.group_size])
        ffn = rng.choice([0, shape.intermediate_size, rng.randrange(1, shape.intermediate_size + 1)])
        layers.append(LayerPlan(heads, ffn))
    if all(x.removed for x in layers):
        layers[0] = LayerPlan(shape.num_heads, shape.intermediate_size)
    vocab = rng.choice([None, rng.randrange(max(shape.vocab_size // 8, shape.num_special_tokens), shape.vocab_size)])
    return PrunePlan(layers=tuple(layers), vocab=vocab)


def _phase_costs(measurements: Sequence[Measurement], profile: HardwareProfile) -> list[PhaseCost]:
    costs = []
    for m in measurements:
        prefill, decode = phase_ops(model_dims(m.config, m.plan), m.workload, dynamic_cache=True)
        dtype = m.workload.dtype
        costs.append(PhaseCost.of(prefill, profile, dtype, m.prefill_ms / 1e3))
        costs.append(PhaseCost.of(decode, profile, dtype, m.decode_ms / 1e3))
    return costs


def fit_profile(measurements: Sequence[Measurement], base: HardwareProfile) -> HardwareProfile:
    """`base` with efficiency factors, launch and per-step overheads fitted to `measurements`."""
    result = fit_efficiencies(_phase_costs(measurements, base))
    return dataclasses.replace(
        base,
        name=base.name.replace("local:", "local-calibrated:", 1),
        compute_efficiency=float(result.compute_efficiency),
        bandwidth_efficiency=float(result.bandwidth_efficiency),
        launch_overhead_us=result.launch_overhead_s * 1e6,
        step_overhead_us=result.step_overhead_s * 1e6,
    )


def accuracy(model: LatencyModel, measurements: Sequence[Measurement]) -> dict[str, float]:
    """MAPE (%) and Spearman of `model` against measurements, separately for prefill and decode."""
    estimates = [model.estimate(m.config, m.plan, m.workload) for m in measurements]
    result = {}
    for phase, measured, predicted in (
        ("prefill", [m.prefill_ms for m in measurements], [e.prefill_ms for e in estimates]),
        ("decode", [m.decode_ms for m in measurements], [e.decode_ms_per_token for e in estimates]),
    ):
        result[f"{phase}_mape_pct"] = mape(predicted, measured)
        result[f"{phase}_spearman"] = spearman(predicted, measured) if len(measured) > 2 else float("nan")
    return result


def fit_latency(
    measurements: Sequence[Measurement],
    base: HardwareProfile,
    device_key: str,
    device: dict[str, Any] | None = None,
    holdout: Sequence[Measurement] = (),
) -> LatencyFit:
    """Fit on `measurements`; report fit accuracy, and held-out accuracy when `holdout` is given."""
    fit = LatencyFit(device_key, fit_profile(measurements, base), device or {})
    model = CalibratedLatencyModel(fit)
    metrics = {"fit": accuracy(model, measurements), "fit_samples": len(measurements)}
    if holdout:
        metrics |= {"holdout": accuracy(model, holdout), "holdout_samples": len(holdout)}
    return dataclasses.replace(fit, metrics=_finite(metrics))


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and not np.isfinite(v) else v

    return clean(metrics)


@dataclass(frozen=True)
class CalibratedLatencyModel:
    """`LatencyModel`: the roofline with this device's fitted profile, pricing a copying KV cache."""

    fit: LatencyFit

    def estimate(self, config: Any, plan: PrunePlan | None, workload: Workload) -> LatencyEstimate:
        """Calibrated prediction for `config` pruned by `plan` on the calibrated device."""
        model = RooflineModel(self.fit.profile, dynamic_cache=True, method="calibrated")
        return model.estimate(config, plan, workload)
