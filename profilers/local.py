"""The `local` pseudo-profile: this machine's peak rates from quick probes (a matmul, a copy, a tiny op).

Efficiency factors stay 1.0 because the probes already measure what kernels reach; calibration fits them.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from prunesearch.choices import DType

from .device import cpu_facts, device_key
from .hardware import HardwareProfile
from .measured import TORCH_DTYPES


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs after a warm-up: a peak probe wants the least-disturbed run."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e9)
    return float(np.min(samples))


def probe_matmul_flops(dtype: DType = DType.FP32, size: int = 768, repeats: int = 10) -> float:
    """FLOP/s of a square matmul in `dtype` (CPU half types are slow, so probe them small)."""
    size = size if dtype == DType.FP32 else min(size, 128)
    a = torch.randn(size, size, dtype=TORCH_DTYPES[dtype])
    b = torch.randn(size, size, dtype=TORCH_DTYPES[dtype])
    return 2 * size**3 / _best_seconds(lambda: a @ b, repeats)


def probe_copy_bandwidth(mib: int = 64, repeats: int = 10) -> float:
    """Bytes/s of a large copy, counting the read and the write."""
    source = torch.randn(mib * 2**20 // 4)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / _best_seconds(lambda: target.copy_(source), repeats)


def probe_launch_overhead(repeats: int = 200) -> float:
    """Seconds of dispatching one tiny op (framework overhead dominates)."""
    x = torch.ones(8)

    def many() -> None:
        for _ in range(repeats):
            torch.add(x, x)

    return _best_seconds(many, 5) / repeats


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@functools.cache
def local_profile() -> HardwareProfile:
    """This CPU as a `HardwareProfile` (probed once per process, about a second)."""
    facts = cpu_facts(torch.get_num_threads())
    return HardwareProfile(
        name=f"local:{device_key(facts)}",
        bf16_tflops=probe_matmul_flops(DType.BF16) / 1e12,
        fp16_tflops=probe_matmul_flops(DType.FP16) / 1e12,
        fp32_tflops=probe_matmul_flops(DType.FP32) / 1e12,
        memory_bandwidth_gbs=probe_copy_bandwidth() / 1e9,
        memory_gib=_memory_gib(),
        launch_overhead_us=probe_launch_overhead() * 1e6,
        compute_efficiency=1.0,
        bandwidth_efficiency=1.0,
    )
