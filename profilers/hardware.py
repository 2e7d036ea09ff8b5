"""Hardware profiles: the peak rates a roofline latency model needs, one frozen record per device.

Pure logic: no torch. Built-in profiles are the JSON files in `profilers/hardware/` (datasheet peaks, dense
figures, never the "with sparsity" ones), each citing its sources in `source` fields. A profile carries one set
of efficiencies per serving engine (`engines`: eager transformers, or a CUDA-graph engine); users add their own
profiles as JSON files with the same field names (a profile without `engines` prices its top-level fields as
the eager engine).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunesearch.choices import DTYPE_BYTES, DType, Engine
from prunesearch.home import home_dir

__all__ = ["DTYPE_BYTES", "EngineEfficiency", "HardwareError", "HardwareProfile"]

BUILTIN_DIR = Path(__file__).parent / "hardware"
EFFICIENCY_FIELDS = ("compute_efficiency", "bandwidth_efficiency", "launch_overhead_us", "step_overhead_us")


class HardwareError(ValueError):
    """An unknown profile name or a malformed profile file."""


@dataclass(frozen=True)
class EngineEfficiency:
    """What one serving engine reaches on one device: shares of the peaks, and its fixed costs.

    `launch_overhead_us` is paid per kernel (eager: host launch and dispatch, serial with GPU work at batch 1;
    graphs: the in-graph kernel boundary), `step_overhead_us` per forward; `source` says where the numbers come
    from."""

    compute_efficiency: float
    bandwidth_efficiency: float
    launch_overhead_us: float
    step_overhead_us: float
    source: str = ""


@dataclass(frozen=True)
class HardwareProfile:
    """Peak rates of one device, the fraction of them real kernels reach, and its GEMM tile.

    The top-level efficiency fields are the ones priced; `for_engine` returns the profile with an engine's
    efficiencies in them (a fitted calibration stores its fitted values there)."""

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
    engines: dict[str, EngineEfficiency] = field(default_factory=dict)
    default_engine: Engine | None = None  # None: graphs when the profile has it, else eager
    sm_count: int = 0  # streaming multiprocessors (0: no wave quantisation, e.g. a CPU)
    gemm_tile: tuple[int, int, int] | None = None  # (tokens M, outputs N, inputs K) a GEMM is padded to
    memory_headroom: float = 0.0  # share of memory kept free (allocator, activations, fragmentation)
    source: str = ""
    gemm_tile_source: str = ""
    memory_headroom_source: str = ""

    def __post_init__(self) -> None:
        engines = {
            Engine(k): v if isinstance(v, EngineEfficiency) else _efficiency(k, v) for k, v in self.engines.items()
        }
        object.__setattr__(self, "engines", engines)
        if self.gemm_tile is not None:
            if len(self.gemm_tile) != 3 or min(self.gemm_tile) < 1:
                raise HardwareError(f"gemm_tile must be three positive sizes (M, N, K), got {self.gemm_tile}")
            object.__setattr__(self, "gemm_tile", tuple(int(x) for x in self.gemm_tile))
        if self.default_engine is not None:
            object.__setattr__(self, "default_engine", _engine(self.default_engine))
        if not 0 <= self.memory_headroom < 1:
            raise HardwareError(f"memory_headroom must be in [0, 1), got {self.memory_headroom}")

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

    @property
    def usable_memory_bytes(self) -> int:
        """Memory a deployment may fill: the total less the headroom."""
        return int(self.memory_bytes * (1 - self.memory_headroom))

    @property
    def engine(self) -> Engine:
        """The engine this profile prices by default."""
        if self.default_engine is not None:
            return self.default_engine
        return Engine.GRAPHS if Engine.GRAPHS in self.engines else Engine.EAGER

    @property
    def recommended_ffn_step(self) -> int | None:
        """The MLP width granularity that tiles exactly (the GEMM tile's output width), or None without a tile."""
        return self.gemm_tile[1] if self.gemm_tile else None

    def for_engine(self, engine: Engine | str | None) -> HardwareProfile:
        """This profile with `engine`'s efficiencies in the priced fields (None: the default engine). A profile
        without that engine's section prices its top-level fields for eager (or its own default engine, as a
        fitted calibration does) and refuses the other."""
        engine = self.engine if engine is None else _engine(engine)
        if engine in self.engines:
            values = {name: getattr(self.engines[engine], name) for name in EFFICIENCY_FIELDS}
            return dataclasses.replace(self, default_engine=engine, **values)
        if engine in (Engine.EAGER, self.default_engine):  # the top-level fields are this engine's
            return dataclasses.replace(self, default_engine=engine)
        raise HardwareError(
            f"hardware profile {self.name!r} has no efficiencies for the {engine.value!r} engine; "
            f"known: {', '.join(e.value for e in self.engines) or 'eager'} (add an engines.{engine.value} section)"
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["engines"] = {str(k): dataclasses.asdict(v) for k, v in self.engines.items()}
        data["gemm_tile"] = list(self.gemm_tile) if self.gemm_tile else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareProfile:
        """Build a profile from a dict, with a clear error for missing or unknown fields."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        required = [
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if unknown or missing:
            raise HardwareError(f"hardware profile: unknown fields {unknown}, missing fields {missing}")
        return cls(**data)


def _engine(value: Any) -> Engine:
    try:
        return Engine(value)
    except ValueError:
        known = ", ".join(e.value for e in Engine)
        raise HardwareError(f"unknown engine {value!r}; known: {known}") from None


def _efficiency(engine: str, data: Any) -> EngineEfficiency:
    _engine(engine)
    if not isinstance(data, dict):
        raise HardwareError(f"engines.{engine} must be an object with {', '.join(EFFICIENCY_FIELDS)}")
    try:
        return EngineEfficiency(**data)
    except TypeError as exc:
        raise HardwareError(f"engines.{engine}: {exc}") from None


def _builtin_profiles() -> dict[str, HardwareProfile]:
    profiles = (HardwareProfile.from_dict(json.loads(p.read_text())) for p in sorted(BUILTIN_DIR.glob("*.json")))
    return {p.name: p for p in profiles}


# Memory capacities are the datasheet's "GB" figure; the driver reports about that many GiB.
BUILTIN_PROFILES: dict[str, HardwareProfile] = _builtin_profiles()


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
