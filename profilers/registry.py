"""Pick a `LatencyModel` by name: a roofline profile, `local`, `local-calibrated`, or `measured`.

Torch-backed models are imported only when asked for, so pricing a datasheet profile needs no torch.
"""

from __future__ import annotations

from prunesearch.choices import DType

from .analytical import RooflineModel
from .hardware import get_profile
from .latency import LatencyModel

LOCAL_NAMES = ("local", "local-calibrated", "measured")


def default_dtype(hardware: str) -> DType:
    """fp32 on this machine's CPU (half-precision matmuls are ~100x slower there), bf16 on GPU profiles."""
    if hardware in LOCAL_NAMES:
        import torch

        return DType.BF16 if torch.cuda.is_available() else DType.FP32
    return DType.BF16


def describe_latency_model(hardware: str) -> str:
    """How a `--hardware` value prices latency, in words (for model cards and provenance)."""
    return {
        "local": "roofline with this machine's measured peak rates, dynamic KV cache",
        "local-calibrated": "per-op model fitted to timings on the worker's CPU",
        "measured": "timed with PyTorch eager (transformers modeling) on the worker's device",
    }.get(hardware, f"roofline from the {hardware} datasheet profile (dense peaks x efficiency factors)")


def latency_model_for(hardware: str) -> LatencyModel:
    """The latency model behind a `--hardware` value; unknown names raise `HardwareError`."""
    if hardware == "local":
        from .local import local_profile

        return RooflineModel(local_profile(), dynamic_cache=True)
    if hardware == "local-calibrated":
        import torch

        from .calibrate import CalibratedLatencyModel, load_latency_fit
        from .device import cpu_facts, device_key

        return CalibratedLatencyModel(load_latency_fit(device_key(cpu_facts(torch.get_num_threads()))))
    if hardware == "measured":
        import torch

        from .measured import MeasuredLatencyModel

        return MeasuredLatencyModel(device="cuda" if torch.cuda.is_available() else "cpu")
    return RooflineModel(get_profile(hardware, also_known=LOCAL_NAMES))
