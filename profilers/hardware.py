"""Hardware profiles: the peak rates a roofline latency model needs, one frozen record per device.

Pure logic: no torch. Built-in profiles come from NVIDIA datasheets (dense figures, never the "with sparsity"
ones); users add their own as JSON files with the same field names.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunesearch.choices import DTYPE_BYTES, DType
from prunesearch.home import home_dir

__all__ = ["DTYPE_BYTES", "HardwareError", "HardwareProfile"]


class HardwareError(ValueError):
    """An unknown profile name or a malformed profile file."""


@dataclass(frozen=True)
class HardwareProfile:
    """Peak rates of one device and the fraction of them real kernels reach (efficiency factors)."""

    name: str
    bf16_tflops: float  # dense tensor-core peak; fp16 is the same on every profile here unless set
    fp16_tflops: float
    fp32_tflops: float  # non-tensor-core FP32 peak (what an fp32 GEMM gets without TF32)
    memory_bandwidth_gbs: float
    memory_gib: float
    launch_overhead_us: float = 5.0  # per kernel: launch plus framework dispatch in eager PyTorch
    compute_efficiency: float = 0.7
    bandwidth_efficiency: float = 0.8
    step_overhead_us: float = 0.0  # per forward pass: fixed framework cost (masks, rotary tables, sampling)

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for `dtype` (a `DType`: "bf16", "fp16" or "fp32")."""
        table = {DType.BF16: self.bf16_tflops, DType.FP16: self.fp16_tflops, DType.FP32: self.fp32_tflops}
        if dtype not in table:
            raise HardwareError(f"unknown dtype {dtype!r}; known: {', '.join(table)}")
        return table[dtype] * 1e12

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_gbs * 1e9

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareProfile:
        """Build a profile from a dict, with a clear error for missing or unknown fields."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if unknown or missing:
            raise HardwareError(f"hardware profile: unknown fields {unknown}, missing fields {missing}")
        return cls(**data)


# Memory capacities are the datasheet's "GB" figure; the driver reports about that many GiB.
BUILTIN_PROFILES: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        # NVIDIA H100 Tensor Core GPU datasheet (SXM5 column): BF16/FP16 1,979 TFLOPS with sparsity -> 989.4
        # dense; FP32 67 TFLOPS; 80 GB HBM3 at 3.35 TB/s.
        HardwareProfile("h100-sxm", 989.4, 989.4, 67.0, 3350.0, 80.0),
        # NVIDIA H200 Tensor Core GPU datasheet (SXM column): BF16/FP16 1,979 TFLOPS sparse -> 989.4 dense;
        # FP32 67 TFLOPS; 141 GB HBM3e at 4.8 TB/s.
        HardwareProfile("h200", 989.4, 989.4, 67.0, 4800.0, 141.0),
        # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM column): BF16/FP16 312 TFLOPS dense (624 sparse);
        # FP32 19.5 TFLOPS; 80 GB HBM2e at 2,039 GB/s.
        HardwareProfile("a100-80g", 312.0, 312.0, 19.5, 2039.0, 80.0),
        # NVIDIA L4 Tensor Core GPU datasheet: BF16/FP16 242 TFLOPS with sparsity -> 121 dense; FP32 30.3
        # TFLOPS; 24 GB GDDR6 at 300 GB/s.
        HardwareProfile("l4", 121.0, 121.0, 30.3, 300.0, 24.0),
        # NVIDIA Ada GPU Architecture whitepaper (GeForce RTX 4090): BF16/FP16 tensor with FP32 accumulate
        # 165.2 TFLOPS dense (330.4 sparse; PyTorch accumulates in FP32); FP32 82.6 TFLOPS; 24 GB GDDR6X at
        # 1,008 GB/s.
        HardwareProfile("rtx4090", 165.2, 165.2, 82.6, 1008.0, 24.0),
    )
}


def data_dir() -> Path:
    """Where prunesearch keeps per-machine data (see `prunesearch.home`)."""
    return home_dir()


def user_profile_dir() -> Path:
    """Users' own profiles, one JSON file each, found by name like the built-in ones."""
    return data_dir() / "hardware"


def load_profile(path: str | Path) -> HardwareProfile:
    """Read one profile from a JSON file (the fields of `HardwareProfile`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HardwareError(f"hardware profile file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HardwareError(f"hardware profile file {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HardwareError(f"hardware profile file {path} must hold a JSON object")
    try:
        return HardwareProfile.from_dict(data)
    except (HardwareError, TypeError) as exc:
        raise HardwareError(f"{path}: {exc}") from exc


def load_profile_dir(directory: str | Path) -> dict[str, HardwareProfile]:
    """Every `*.json` profile in `directory`, by name."""
    profiles = (load_profile(p) for p in sorted(Path(directory).glob("*.json")))
    return {p.name: p for p in profiles}


def known_profiles(extra_dir: str | Path | None = None) -> dict[str, HardwareProfile]:
    """Built-in profiles plus, if given, the JSON profiles in `extra_dir` (which override by name)."""
    profiles = dict(BUILTIN_PROFILES)
    if extra_dir is not None and Path(extra_dir).is_dir():
        profiles.update(load_profile_dir(extra_dir))
    return profiles


def get_profile(
    name_or_path: str, extra_dir: str | Path | None = None, also_known: tuple[str, ...] = ()
) -> HardwareProfile:
    """A profile by name (built-in, or a JSON file in `extra_dir`, default `user_profile_dir()`), or from a
    JSON file path; the error names every known profile (and `also_known`, names callers handle)."""
    profiles = known_profiles(user_profile_dir() if extra_dir is None else extra_dir)
    if name_or_path in profiles:
        return profiles[name_or_path]
    if name_or_path.endswith(".json") or Path(name_or_path).is_file():
        return load_profile(name_or_path)
    raise HardwareError(
        f"unknown hardware {name_or_path!r}; known: {', '.join([*sorted(profiles), *also_known])} "
        "(or a path to a profile .json)"
    )
