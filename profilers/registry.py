"""Pick a `LatencyModel` by name: a roofline profile, `local`, `local-calibrated`, or `measured`.

Torch-backed models are imported only when asked for, so pricing a datasheet profile needs no torch.
"""

from __future__ import annotations

from prunesearch.choices import DType, Engine

from .analytical import RooflineModel
from .hardware import HardwareError, get_profile
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


def default_engine(hardware: str) -> Engine:
    """The engine a workload without one is priced for: the profile's (graphs on the datacenter GPU profiles),
    eager for `local`, `local-calibrated` and `measured` (transformers on this machine)."""
    if hardware in LOCAL_NAMES:
        return Engine.EAGER
    return get_profile(hardware, also_known=LOCAL_NAMES).engine


def recommended_ffn_step(hardware: str) -> int | None:
    """The MLP width granularity the hardware's GEMM tile rewards (None for `local` and profiles without one)."""
    if hardware in LOCAL_NAMES:
        return None
    return get_profile(hardware, also_known=LOCAL_NAMES).recommended_ffn_step


def check_engine(hardware: str, engine: Engine | None) -> None:
    """Refuse an engine the hardware cannot price: `local` and `measured` run transformers eager on this machine,
    and a profile needs that engine's efficiencies. Raises `HardwareError`."""
    if engine is None or engine == Engine.EAGER or hardware == "local-calibrated":
        return
    if hardware in ("local", "measured"):
        raise HardwareError(
            f"--hardware {hardware} runs transformers eager on this machine; the {engine.value} engine is priced "
            "with a GPU profile (e.g. h100-sxm) or a calibration fitted by bench/gpu_validate.py (local-calibrated)"
        )
    get_profile(hardware, also_known=LOCAL_NAMES).for_engine(engine)


def latency_model_for(hardware: str, engine: Engine | None = None) -> LatencyModel:
    """The latency model behind a `--hardware` value; unknown names raise `HardwareError`. `engine` picks which
    calibration `local-calibrated` loads (the workload's engine; default eager). An engine the hardware cannot
    price raises `HardwareError` (`check_engine`)."""
    check_engine(hardware, engine)
    if hardware == "local":
        from .local import local_profile

        return RooflineModel(local_profile(), dynamic_cache=True)
    if hardware == "local-calibrated":
        import torch

        from .calibrate import CalibratedLatencyModel, load_latency_fit
        from .device import cpu_facts, device_facts, device_key

        on_gpu = torch.cuda.is_available()
        facts = device_facts("cuda") if on_gpu else cpu_facts(torch.get_num_threads())
        return CalibratedLatencyModel(load_latency_fit(device_key(facts), engine or Engine.EAGER))
    if hardware == "measured":
        import torch

        from .measured import MeasuredLatencyModel

        return MeasuredLatencyModel(device="cuda" if torch.cuda.is_available() else "cpu")
    return RooflineModel(get_profile(hardware, also_known=LOCAL_NAMES))
