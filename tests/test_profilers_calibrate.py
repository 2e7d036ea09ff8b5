"""Latency calibration (`LatencyFit`): the fit recovers known parameters, metrics, and per-device persistence."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.calibrate import (
    CalibratedLatencyModel,
    LatencyFit,
    LatencyFitMissingError,
    Measurement,
    accuracy,
    fit_latency,
    load_latency_fit,
    random_plan,
    save_latency_fit,
)
from prunesearch.profilers.fit import mape, spearman
from prunesearch.profilers.hardware import HardwareProfile
from prunesearch.profilers.latency import Workload
from prunesearch.pruning.architectures import model_shape

CONFIG = json.loads((Path(__file__).parent / "profilers" / "tiny_configs.json").read_text())["llama"]
CONFIG = dict(CONFIG, hidden_size=256, intermediate_size=688, vocab_size=4096, head_dim=64)
PROBED = HardwareProfile("local:test", 0.002, 0.002, 0.06, 15.0, 16.0, 4.0, 1.0, 1.0)
TRUTH = dataclasses.replace(
    PROBED, compute_efficiency=0.45, bandwidth_efficiency=0.3, launch_overhead_us=12.0, step_overhead_us=900.0
)


def synthetic(plans, workload) -> list[Measurement]:
    """Measurements produced by a known profile, so the fit has an exact answer."""
    truth = RooflineModel(TRUTH, dynamic_cache=True)
    out = []
    for plan in plans:
        e = truth.estimate(CONFIG, plan, workload)
        out.append(Measurement(CONFIG, plan, workload, e.prefill_ms, e.decode_ms_per_token))
    return out


def test_fit_recovers_a_known_device():
    rng = random.Random(1)
    shape = model_shape(CONFIG)
    workload = Workload(1, 128, 16, "fp32")
    fit_set = synthetic([None] + [random_plan(shape, rng) for _ in range(7)], workload)
    held_out = synthetic([random_plan(shape, rng) for _ in range(10)], workload)
    calibration = fit_latency(fit_set, PROBED, "test", holdout=held_out)
    assert calibration.metrics["holdout"]["prefill_mape_pct"] < 1.0
    assert calibration.metrics["holdout"]["decode_mape_pct"] < 1.0
    assert calibration.metrics["holdout"]["decode_spearman"] > 0.99
    assert calibration.profile.launch_overhead_us == pytest.approx(12.0, rel=0.1)
    assert calibration.profile.name == "local-calibrated:test"
    uncalibrated = accuracy(RooflineModel(PROBED, dynamic_cache=True), held_out)
    assert uncalibrated["decode_mape_pct"] > 10


def test_metrics():
    assert mape([110, 90], [100, 100]) == pytest.approx(10.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


def test_calibration_persists_per_device(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path))
    calibration = LatencyFit("cpu-x-2t", TRUTH, {"kind": "cpu"}, {"fit": {"decode_mape_pct": 1.0}})
    path = save_latency_fit(calibration)
    assert path == tmp_path / "calibration" / "cpu-x-2t.json"
    assert load_latency_fit("cpu-x-2t") == calibration
    with pytest.raises(LatencyFitMissingError, match="latency-calibrate"):
        load_latency_fit("other-device")


def test_calibrated_model_predicts_like_its_profile():
    workload = Workload(1, 64, 8, "fp32")
    got = CalibratedLatencyModel(LatencyFit("x", TRUTH)).estimate(CONFIG, None, workload)
    want = RooflineModel(TRUTH, dynamic_cache=True).estimate(CONFIG, None, workload)
    assert got.decode_ms_per_token == want.decode_ms_per_token and got.method == "calibrated:local:test:eager"
