"""The one roofline formula: priced by hand, and the same in the analytical model and the calibration fit."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

from prunesearch.profilers.analytical import RooflineModel, phase_ops
from prunesearch.profilers.calibrate import random_plan
from prunesearch.profilers.fit import PhaseCost
from prunesearch.profilers.hardware import HardwareProfile
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.ops import Op, model_dims
from prunesearch.profilers.roofline import OpArrays, phase_seconds
from prunesearch.pruning.architectures import model_shape

CONFIGS = json.loads((Path(__file__).parent / "profilers" / "tiny_configs.json").read_text())
PROFILE = HardwareProfile("test", 2.0, 2.0, 1.0, 100.0, 16.0, 3.0, 0.5, 0.25, 40.0)


def test_phase_seconds_by_hand():
    # bf16 peak 2 TFLOP/s at 50% -> 1e12 FLOP/s; 100 GB/s at 25% -> 25e9 B/s
    ops = [
        Op("compute_bound", "gemm", 4e9, 1e6, 1),  # 4 ms compute, 0.04 ms memory
        Op("memory_bound", "memory", 1e3, np.array([5e7, 1e8]), 2, repeat=3),  # 2 or 4 ms memory, x3
    ]
    seconds, memory_share = phase_seconds(OpArrays.of(ops), PROFILE, "bf16")
    launches = (1 + 2 * 3) * 3e-6
    expected = np.array([4e-3 + 3 * 2e-3, 4e-3 + 3 * 4e-3]) + launches + 40e-6
    np.testing.assert_allclose(seconds, expected, rtol=1e-12)
    np.testing.assert_allclose(memory_share, [6 / 10, 12 / 16], rtol=1e-12)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_fit_and_model_price_alike(arch):
    """With the same coefficients, the fit's prediction is the analytical model's, phase by phase."""
    truth = dataclasses.replace(PROFILE, compute_efficiency=0.37, bandwidth_efficiency=0.61)
    peak = dataclasses.replace(truth, compute_efficiency=1.0, bandwidth_efficiency=1.0)
    workload = Workload(2, 64, 12, "fp32")
    rng = random.Random(7)
    for plan in [None] + [random_plan(model_shape(CONFIGS[arch]), rng) for _ in range(4)]:
        estimate = RooflineModel(truth, dynamic_cache=True).estimate(CONFIGS[arch], plan, workload)
        prefill, decode = phase_ops(model_dims(CONFIGS[arch], plan), workload, dynamic_cache=True)
        for ops, ms in ((prefill, estimate.prefill_ms), (decode, estimate.decode_ms_per_token)):
            cost = PhaseCost.of(ops, peak, workload.dtype, ms / 1e3)
            roof = cost.roofline_s(truth.compute_efficiency, truth.bandwidth_efficiency)
            fitted = roof + cost.launches * truth.launch_overhead_us * 1e-6 + truth.step_overhead_us * 1e-6
            assert fitted * 1e3 == pytest.approx(ms, rel=1e-12)
