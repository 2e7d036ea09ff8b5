"""One contract suite that every `LatencyModel` (roofline, measured, calibrated) must pass."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.calibrate import CalibratedLatencyModel, LatencyFit
from prunesearch.profilers.hardware import HardwareProfile, get_profile
from prunesearch.profilers.latency import LatencyEstimate, LatencyModel, Workload
from prunesearch.profilers.measured import MeasuredLatencyModel
from prunesearch.profilers.ops import kv_bytes_per_token, model_dims, param_count
from prunesearch.pruning.plan import LayerPlan, PrunePlan

TINY = json.loads((Path(__file__).parent / "profilers" / "tiny_configs.json").read_text())
CPU_LIKE = HardwareProfile("cpu-like", 0.002, 0.002, 0.06, 15.0, 16.0, 10.0, 1.0, 1.0, step_overhead_us=500.0)
IMPLEMENTATIONS = {
    "roofline-h100-graphs": lambda: RooflineModel(get_profile("h100-sxm")),  # the profile's default engine
    "roofline-h100-eager": lambda: RooflineModel(dataclasses.replace(get_profile("h100-sxm"), default_engine="eager")),
    "roofline-dynamic-cache": lambda: RooflineModel(CPU_LIKE, dynamic_cache=True),
    "measured-cpu": lambda: MeasuredLatencyModel(warmup=1, repeats=2),
    "calibrated": lambda: CalibratedLatencyModel(LatencyFit("test-device", CPU_LIKE)),
}
WORKLOAD = Workload(batch=2, prompt_tokens=16, generate_tokens=4, dtype="fp32")
PRUNED = PrunePlan(layers=(LayerPlan(2, 48), LayerPlan(0, 0), LayerPlan(4, 0)), vocab=100)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def latency_model(request) -> LatencyModel:
    return IMPLEMENTATIONS[request.param]()


def test_implements_the_protocol(latency_model):
    assert isinstance(latency_model, LatencyModel)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("plan", [None, PRUNED], ids=["dense", "pruned"])
def test_estimate_is_complete_and_consistent(latency_model, arch, plan):
    config = TINY[arch]
    estimate = latency_model.estimate(config, plan, WORKLOAD)
    assert isinstance(estimate, LatencyEstimate)
    for value in (estimate.prefill_ms, estimate.decode_ms_per_token, estimate.tokens_per_s):
        assert math.isfinite(value) and value > 0
    steps = WORKLOAD.generate_tokens - 1
    assert estimate.total_ms == pytest.approx(estimate.prefill_ms + steps * estimate.decode_ms_per_token)
    assert estimate.tokens_per_s == pytest.approx(2 * 4 / (estimate.total_ms / 1e3))
    dims = model_dims(config, plan)
    assert estimate.params == param_count(dims)
    assert estimate.weight_bytes == estimate.params * 4
    assert estimate.kv_bytes_per_token == kv_bytes_per_token(dims, 4)
    assert estimate.fits_in_memory
    assert isinstance(estimate.method, str) and estimate.method
    json.dumps(estimate.to_dict())


def test_bad_plan_is_rejected(latency_model):
    bad = PrunePlan(layers=(LayerPlan(3, 96),) * 3)  # 3 heads is not a multiple of the GQA group (2)
    with pytest.raises(ValueError, match="group size"):
        latency_model.estimate(TINY["llama"], bad, WORKLOAD)
