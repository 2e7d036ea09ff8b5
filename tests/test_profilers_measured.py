"""Measured latency and verification steps on CPU, the injectable timers, and device facts with and without NVML."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prunesearch.choices import Engine
from prunesearch.profilers.device import cpu_facts, device_facts, device_key, gpu_facts
from prunesearch.profilers.hardware import HardwareError
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.measured import (
    CudaTimer,
    MeasuredLatencyModel,
    Stats,
    build_model,
    measure_latency,
    measure_verification,
)

from .factories import tiny_model

TINY = json.loads((Path(__file__).parent / "profilers" / "tiny_configs.json").read_text())


def test_measures_prefill_and_decode_of_a_tiny_model_on_cpu():
    model = build_model(TINY["llama"], None, "fp32", "cpu")
    prefill, decode = measure_latency(model, Workload(1, 16, 5, "fp32"), warmup=1, repeats=3)
    for stats in (prefill, decode):
        assert len(stats.samples) == 3
        assert 0 < stats.p10 <= stats.median <= stats.p90


def test_injected_timer_sees_every_prefill_and_decode_step():
    calls = []

    def fake_timer(fn):
        result = fn()
        calls.append(1)
        return result, 2.0 if len(calls) % 4 == 1 else 1.0  # 1 prefill + 3 decode steps per run

    model = build_model(TINY["qwen2"], None, "fp32", "cpu")
    prefill, decode = measure_latency(model, Workload(2, 8, 4, "fp32"), warmup=2, repeats=3, timer=fake_timer)
    assert len(calls) == (2 + 3) * 4
    assert prefill.median == 2.0 and decode.median == 1.0


def test_verification_costs_are_median_ratios_to_the_one_token_step():
    fed = []

    def fake_timer(fn):
        picks = fn()  # the greedy pick at every fed position: (batch, tokens)
        fed.append(picks.shape[1])
        return picks, 4.0 + picks.shape[1]  # a fixed 4 ms plus 1 ms per token

    model = MeasuredLatencyModel(warmup=1, verify_rounds=3, timer=fake_timer)
    costs = model.verification_costs(TINY["qwen2"], Workload(2, 8, 4, "fp32"), 3)
    assert costs == pytest.approx((6 / 5, 7 / 5, 8 / 5))
    rounds = [fed[i : i + 4] for i in range(0, len(fed), 4)]  # the prefill is not timed
    assert len(rounds) == 1 + 3 and all(sorted(r) == [1, 2, 3, 4] for r in rounds)
    assert [r[0] for r in rounds] == [1, 2, 3, 4]  # the order rotates, so no q always runs first


class RecordingModel(torch.nn.Module):
    """Forwards to `inner`, recording the tokens fed and the cache length each forward starts from."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(self, ids, cache=None, **kwargs):
        self.calls.append((ids.shape[1], None if cache is None else cache.get_seq_length()))
        return self.inner(ids, cache=cache, **kwargs)


def _sliding_mistral():
    return build_model(TINY["mistral"] | {"sliding_window": 8}, None, "fp32", "cpu")  # the prompt outgrows it


@pytest.mark.parametrize("make", [lambda: tiny_model("llama"), _sliding_mistral], ids=["llama", "sliding-window"])
def test_every_verification_step_reads_the_prompt_cache(make):
    model = RecordingModel(make())
    stats = measure_verification(model, Workload(2, 12, 4, "fp32"), 4, warmup=1, repeats=2)
    assert model.calls[0] == (12, None)  # the prefill
    steps = model.calls[1:]
    assert len(steps) == (1 + 2) * 4 and {length for _, length in steps} == {12}
    assert sorted(q for q, _ in steps) == sorted([1, 2, 3, 4] * 3)
    assert len(stats) == 4 and all(len(s.samples) == 2 and 0 < s.median < math.inf for s in stats)


def test_measured_verification_costs_of_a_tiny_model_are_finite():
    measured = MeasuredLatencyModel(warmup=0, verify_rounds=2)
    costs = measured.verification_costs(TINY["llama"], Workload(1, 8, 2, "fp32"), 3)
    assert len(costs) == 3 and all(0 < v < math.inf for v in costs)
    with pytest.raises(HardwareError, match="eager"):
        MeasuredLatencyModel().verification_costs(TINY["llama"], Workload(1, 8, 2, "fp32", Engine.GRAPHS), 3)


def test_cuda_timer_records_events_and_synchronises():
    log = []

    class FakeEvent:
        def record(self):
            log.append("record")

        def elapsed_time(self, other):
            return 7.5

    timer = CudaTimer(event_factory=FakeEvent, synchronize=lambda: log.append("sync"))
    result, ms = timer(lambda: log.append("work") or 42)
    assert (result, ms) == (42, 7.5)
    assert log == ["sync", "record", "work", "record", "sync"]


def test_stats_percentiles():
    stats = Stats.of([float(x) for x in range(1, 12)])
    assert (stats.p10, stats.median, stats.p90) == (2.0, 6.0, 10.0)


def test_measured_estimate_records_device_facts():
    estimate = MeasuredLatencyModel(warmup=0, repeats=1).estimate(TINY["qwen3"], None, Workload(1, 8, 2, "fp32"))
    assert estimate.details["device"]["kind"] == "cpu"
    assert estimate.details["device"]["threads"] == torch.get_num_threads()
    assert estimate.method.startswith("measured:")
    assert set(estimate.details["prefill"]) == {"median_ms", "p10_ms", "p90_ms", "spread_pct", "repeats"}


def test_cpu_facts_and_device_key():
    facts = cpu_facts(threads=2)
    assert facts["kind"] == "cpu" and facts["cores"] >= 1 and facts["name"]
    assert device_key(facts).endswith("-2t")
    assert device_facts("cpu", threads=2) == facts


def _fake_nvml(fail: bool = False) -> SimpleNamespace:
    def init():
        if fail:
            raise RuntimeError("NVML Shared Library Not Found")

    return SimpleNamespace(
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlSystemGetDriverVersion=lambda: "570.86",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 * 2**30, used=2**30),
        nvmlDeviceGetClockInfo=lambda h, kind: {0: 1980, 2: 2619}[kind],
        NVML_CLOCK_SM=0,
        NVML_CLOCK_MEM=2,
        nvmlDeviceGetPowerUsage=lambda h: 123_000,
        nvmlDeviceGetTemperature=lambda h, kind: 41,
        NVML_TEMPERATURE_GPU=0,
    )


def test_gpu_facts_through_nvml():
    facts = device_facts("cuda:0", nvml=_fake_nvml())
    assert facts["name"] == "NVIDIA H100 80GB HBM3" and facts["driver"] == "570.86"
    assert facts["memory_total_mib"] == 80 * 1024 and facts["power_w"] == 123.0
    assert (facts["sm_clock_mhz"], facts["memory_clock_mhz"], facts["temperature_c"]) == (1980, 2619, 41)
    assert device_key(facts) == "nvidia-h100-80gb-hbm3"


def test_gpu_facts_fall_back_cleanly_without_nvml(monkeypatch):
    assert "NVML Shared Library" in gpu_facts(0, nvml=_fake_nvml(fail=True))["nvml_error"]
    monkeypatch.setattr("prunesearch.profilers.device._load_nvml", lambda: None)
    assert gpu_facts(0)["nvml_error"] == "pynvml is not installed"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measured_on_gpu_uses_cuda_events():
    model = MeasuredLatencyModel(device="cuda", warmup=1, repeats=3)
    estimate = model.estimate(TINY["llama"], None, Workload(2, 64, 8, "bf16"))
    assert estimate.prefill_ms > 0 and estimate.details["device"]["kind"] == "gpu"
