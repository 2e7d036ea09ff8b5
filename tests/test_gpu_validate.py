"""bench/gpu_validate.py runs end to end on a CPU with small shapes (how CI covers the GPU validation kit)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_validate.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_validate", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_on_cpu_with_small_shapes(tmp_path):
    gpu_validate = _load()
    out = tmp_path / "report.json"
    argv = ["--device", "cpu", "--plans", "2", "--warmup", "1", "--repeats", "1", "--prompt", "8", "--generate", "3"]
    report = gpu_validate.main([*argv, "--out", str(out)])
    assert out.is_file() and report["device"]["kind"] == "cpu" and report["dtype"] == "fp32"
    assert report["targets_met"] is None  # the GPU targets are not judged on a CPU
    assert "no CUDA graphs on a CPU" in report["graphs_path"]
    assert set(report["engines"]) == {"eager", "graphs"}
    for engine in report["engines"].values():
        assert set(engine["shapes"]) == set(gpu_validate.CPU_SHAPES)
        for row in engine["shapes"].values():
            for model in ("datasheet", "calibrated"):
                assert math.isfinite(row[model]["prefill_mape_pct"]) and math.isfinite(row[model]["decode_mape_pct"])
        fitted = engine["fitted"]
        assert 0.05 <= fitted["compute_efficiency"] <= 1.25 and 0.05 <= fitted["bandwidth_efficiency"] <= 1.25
        assert fitted["launch_overhead_us"] > 0 and fitted["step_overhead_us"] >= 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_targets_on_a_gpu():
    report = _load().main(["--plans", "4", "--repeats", "3"])
    assert report["targets_met"] and all(report["targets_met"].values()), report["targets_met"]
