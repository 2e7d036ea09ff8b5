"""Facts about the device a measurement ran on: pynvml on NVIDIA GPUs, the CPU model otherwise.

No GPU, no NVIDIA driver or no pynvml is a normal case: the facts then say why they are partial, never raise.
Imports no torch; callers pass the thread count they run with.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from types import ModuleType
from typing import Any


def cpu_facts(threads: int | None = None) -> dict[str, Any]:
    """CPU model name, logical cores, and the threads the framework uses."""
    return {
        "kind": "cpu",
        "name": _cpu_model() or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
    }


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def gpu_facts(index: int = 0, nvml: ModuleType | None = None) -> dict[str, Any]:
    """Name, memory, clocks, power, temperature and driver of NVIDIA GPU `index`, through pynvml.

    `nvml` replaces the pynvml module (tests inject a fake). Failures give a record with `nvml_error`.
    """
    nvml = nvml or _load_nvml()
    if nvml is None:
        return {"kind": "gpu", "index": index, "nvml_error": "pynvml is not installed"}
    try:
        nvml.nvmlInit()
        try:
            return {
                "kind": "gpu",
                "index": index,
                **_nvml_record(nvml, nvml.nvmlDeviceGetHandleByIndex(index)),
            }
        finally:
            nvml.nvmlShutdown()
    except Exception as exc:  # NVMLError subclasses, missing library, no device: all mean "no facts"
        return {"kind": "gpu", "index": index, "nvml_error": f"{type(exc).__name__}: {exc}"}


def _nvml_record(nvml: ModuleType, handle: Any) -> dict[str, Any]:
    name = nvml.nvmlDeviceGetName(handle)
    driver = nvml.nvmlSystemGetDriverVersion()
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        "name": name.decode() if isinstance(name, bytes) else name,
        "driver": driver.decode() if isinstance(driver, bytes) else driver,
        "memory_total_mib": memory.total // 2**20,
        "memory_used_mib": memory.used // 2**20,
        "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "memory_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
        "power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
    }


def device_facts(device: str = "cpu", threads: int | None = None, nvml: ModuleType | None = None) -> dict[str, Any]:
    """Facts for a torch-style device string ("cpu", "cuda", "cuda:1")."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return gpu_facts(index, nvml)
    return cpu_facts(threads)


def device_key(facts: dict[str, Any]) -> str:
    """A filesystem-safe identifier of a device (name + threads for CPUs), used to key calibrations."""
    parts = [facts.get("name") or facts.get("kind", "device")]
    if facts.get("kind") == "cpu":
        parts.append(f"{facts.get('threads') or facts.get('cores')}t")
    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(p) for p in parts)).strip("-").lower()
