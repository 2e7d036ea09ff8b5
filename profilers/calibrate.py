"""Latency calibration: fit the roofline to this device from a handful of measurements, persist it, evaluate it.

"Calibration" names three things in prunesearch; here it is always the latency one, and its identifiers say so
(`LatencyFit`, `fit_latency`, `load_latency_fit`). Calibration *text* (documents for importance statistics and
the proxy) is `pruning.calibration`; how a search samples that text is the spec's `CalibrationSampling`. The
command-line names (`latency-calibrate`, `--hardware local-calibrated`) are a public contract and stay.

Calibrations live in `$PRUNESEARCH_HOME/calibration/<device-key>.json` (default `~/.cache/prunesearch`), one per
engine (`<device-key>-graphs.json` for the CUDA-graph engine). An eager calibration prices transformers'
copying DynamicCache, because that is what it was measured on.

A calibration is used for every model on its device, so it is fitted on a designed set of shapes
(`design_configs`: widths, depths, GQA ratios, vocabularies, biases and q/k norms around the model given) and
with physically bounded parameters (`fit.FitBounds`), not on one model's plans alone.
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

from prunesearch.choices import Engine
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import LayerPlan, ModelShape, PrunePlan

from .analytical import RooflineModel, gemm_tile, phase_ops
from .fit import FitBounds, PhaseCost, fit_efficiencies, mape, spearman
from .hardware import HardwareError, HardwareProfile, data_dir
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
    engine: Engine = Engine.EAGER

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_key": self.device_key,
            "profile": self.profile.to_dict(),
            "device": self.device,
            "metrics": self.metrics,
            "engine": self.engine.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyFit:
        profile = HardwareProfile.from_dict(data["profile"])
        return cls(data["device_key"], profile, data["device"], data["metrics"], Engine(data.get("engine", "eager")))


def latency_fit_path(device_key: str, engine: Engine = Engine.EAGER) -> Path:
    suffix = "" if engine == Engine.EAGER else f"-{engine.value}"
    return data_dir() / "calibration" / f"{device_key}{suffix}.json"


def save_latency_fit(fit: LatencyFit) -> Path:
    """Write the latency fit atomically; returns its path."""
    path = latency_fit_path(fit.device_key, fit.engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fit.to_dict(), indent=2))
    tmp.replace(path)
    return path


def load_latency_fit(device_key: str, engine: Engine = Engine.EAGER) -> LatencyFit:
    """The saved latency fit of `device_key` for `engine`, or an error that says how to make one."""
    path = latency_fit_path(device_key, engine)
    if not path.is_file():
        how = (
            "run `prunesearch latency-calibrate --model DIR` first"
            if engine == Engine.EAGER
            else "fit one on a CUDA device with `python bench/gpu_validate.py`"
        )
        raise LatencyFitMissingError(
            f"no {engine.value} latency calibration for device {device_key!r} at {path}; {how}"
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


def design_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Shapes around `config` (a llama-family config dict) that separate what a latency fit must tell apart:
    width, depth, GQA ratio, vocabulary, MLP width, and the kernels architectures add (q/k/v biases with tied
    embeddings as in Qwen2, per-head q/k norms as in Qwen3). Each keeps the head size; all are small enough to
    build with random weights on a CPU."""
    base = {k: v for k, v in config.items() if k not in ("architectures", "auto_map")}
    hidden, heads, layers = base["hidden_size"], base["num_attention_heads"], base["num_hidden_layers"]
    head_dim = base.get("head_dim") or hidden // heads
    kv = base.get("num_key_value_heads") or heads
    half = max(heads // 2, 1)
    designs = {
        "base": base,
        "narrow": base
        | {
            "hidden_size": half * head_dim,
            "num_attention_heads": half,
            "num_key_value_heads": max(kv // 2, 1),
            "head_dim": head_dim,
        },
        "shallow": base | {"num_hidden_layers": max(layers // 3, 1)},
        "gqa4": base | {"num_key_value_heads": max(heads // 4, 1)},
        "wide_mlp": base | {"intermediate_size": base["intermediate_size"] * 2},
        "big_vocab": base | {"vocab_size": base["vocab_size"] * 4},
        "bias_tied": base
        | {"model_type": "qwen2", "tie_word_embeddings": True, "num_key_value_heads": max(heads // 2, 1)},
        "qk_norm": base | {"model_type": "qwen3", "num_key_value_heads": max(heads // 2, 1)},
    }
    return {name: d | {"head_dim": head_dim} for name, d in designs.items()}


def calibration_set(
    config: dict[str, Any], plans: int, rng: random.Random, design: bool = True
) -> list[tuple[dict[str, Any], PrunePlan]]:
    """What a calibration measures: `config` dense and with `plans - 1` random plans, then (with `design`) every
    other `design_configs` shape dense and with one random plan."""
    shape = model_shape(config)
    pairs = [(config, PrunePlan.dense(shape))] + [(config, random_plan(shape, rng)) for _ in range(plans - 1)]
    if design:
        for name, variant in design_configs(config).items():
            if name != "base":
                variant_shape = model_shape(variant)
                pairs += [(variant, PrunePlan.dense(variant_shape)), (variant, random_plan(variant_shape, rng))]
    return pairs


def _phase_costs(measurements: Sequence[Measurement], profile: HardwareProfile, engine: Engine) -> list[PhaseCost]:
    costs = []
    tile = gemm_tile(profile)
    for m in measurements:
        ops = phase_ops(model_dims(m.config, m.plan), m.workload, engine == Engine.EAGER, engine, tile)
        dtype = m.workload.dtype
        costs.append(PhaseCost.of(ops[0], profile, dtype, m.prefill_ms / 1e3))
        costs.append(PhaseCost.of(ops[1], profile, dtype, m.decode_ms / 1e3))
    return costs


def fit_profile(
    measurements: Sequence[Measurement], base: HardwareProfile, engine: Engine = Engine.EAGER
) -> HardwareProfile:
    """`base` with efficiency factors, launch and per-step overheads of `engine` fitted to `measurements`,
    each within physical bounds (the per-kernel cost around `base`'s probed or datasheet one)."""
    base = base.for_engine(engine)
    bounds = FitBounds.around_probe(base.launch_overhead_us * 1e-6)
    result = fit_efficiencies(_phase_costs(measurements, base, engine), bounds)
    return dataclasses.replace(
        base,
        name=base.name.replace("local:", "local-calibrated:", 1),
        compute_efficiency=float(result.compute_efficiency),
        bandwidth_efficiency=float(result.bandwidth_efficiency),
        launch_overhead_us=result.launch_overhead_s * 1e6,
        step_overhead_us=result.step_overhead_s * 1e6,
        engines={},
        default_engine=engine,
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
    engine: Engine = Engine.EAGER,
) -> LatencyFit:
    """Fit on `measurements`; report fit accuracy, and held-out accuracy when `holdout` is given."""
    fit = LatencyFit(device_key, fit_profile(measurements, base, engine), device or {}, engine=engine)
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
        """Calibrated prediction for `config` pruned by `plan` on the calibrated device (its engine only)."""
        if workload.engine is not None and workload.engine != self.fit.engine:
            raise HardwareError(
                f"the latency calibration of {self.fit.device_key!r} is for the {self.fit.engine.value} engine, "
                f"not {workload.engine.value}"
            )
        return self.roofline().estimate(config, plan, workload)

    def roofline(self) -> RooflineModel:
        """The roofline with the fitted profile that prices every estimate (and a verification step's cost)."""
        profile = dataclasses.replace(self.fit.profile, default_engine=self.fit.engine)
        return RooflineModel(profile, dynamic_cache=self.fit.engine == Engine.EAGER, method="calibrated")
