"""Every allowed value the system names, defined once.

A leaf module: it imports nothing from prunesearch, so every layer (pruning, profilers, search, service, the CLIs)
may read it. argparse `choices`, pydantic fields and SQLAlchemy columns all take their values from here.
`StrEnum` members compare equal to their strings, so stored rows and JSON stay plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class DType(StrEnum):
    """Weight and compute precision of a model."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


# Bytes per element, for memory and roofline arithmetic.
DTYPE_BYTES: dict[DType, int] = {DType.FP32: 4, DType.BF16: 2, DType.FP16: 2}

# The `torch` attribute of each dtype (`getattr(torch, TORCH_DTYPE_NAMES[d])`): named here so this module needs no
# torch, and every torch-backed module maps dtypes the same way.
TORCH_DTYPE_NAMES: dict[DType, str] = {DType.FP32: "float32", DType.BF16: "bfloat16", DType.FP16: "float16"}


class Engine(StrEnum):
    """How a model is run when its latency is priced: transformers' eager `generate`, or a CUDA-graph serving
    engine (vLLM, SGLang, TensorRT-LLM: fused kernels, paged KV cache, no per-kernel host cost)."""

    EAGER = "eager"
    GRAPHS = "graphs"


class JobStatus(StrEnum):
    """Lifecycle of a search job in the service."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in one of these states never changes again.
FINAL_JOB_STATUSES: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class ExportStatus(StrEnum):
    """Lifecycle of an export (a trial materialised as a checkpoint archive)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventKind(StrEnum):
    """What a job's event (`GET /v1/jobs/{id}/events`, one Server-Sent Event each) reports."""

    STATUS = "status"  # the job's state changed
    TRIAL = "trial"  # a trial finished (counts and hypervolume after it)
    FRONT = "front"  # the Pareto front changed (its trials and metrics)
    EXPORT = "export"  # an export of the job changed state or progress (phase; heal step and loss)
    HEAL = "heal"  # the job's heal stage: a candidate's step and loss, or its outcome


class LogFormat(StrEnum):
    """How `serve` and `worker` write their logs."""

    TEXT = "text"
    JSON = "json"  # one JSON object a line, with job, trial and export ids as fields


class EvaluationStatus(StrEnum):
    """Lifecycle of an evaluation of an export (lm-evaluation-harness, run by a worker)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Sampler(StrEnum):
    """Optuna samplers a search may use."""

    TPE = "tpe"
    NSGA2 = "nsga2"
    RANDOM = "random"


class CriterionName(StrEnum):
    """Importance criteria for width pruning (their implementations: `pruning.importance.CRITERIA`)."""

    FLAP = "flap"
    WANDA = "wanda"
    MAGNITUDE = "magnitude"


class Repair(StrEnum):
    """Training-free repair applied to a pruned model after surgery (`pruning/refit.py`)."""

    NONE = "none"
    REFIT = "refit"  # a least-squares map of the final hidden state onto the dense model's, folded into the LM head


class TextFormat(StrEnum):
    """File formats of calibration and training text, by extension."""

    TXT = ".txt"
    JSONL = ".jsonl"


class HealMethod(StrEnum):
    """How `prunesearch heal` trains a pruned model: every weight, or LoRA adapters merged at the end."""

    FULL = "full"
    LORA = "lora"


class DeployTarget(StrEnum):
    """Which runtimes a search's plans must export for: any (per-layer shapes allowed) or the stock classes
    (uniform widths, whole layers removed: stock transformers and serving engines load them)."""

    ANY = "any"
    STOCK = "stock"


# Speculative decoding: the most tokens a draft proposes per round (`pruning/speculative.py`, the job spec's
# `objectives.speculative.lookahead`); here so that the torch-free job spec can validate it.
MAX_LOOKAHEAD = 8


def values(choice: type[StrEnum]) -> list[str]:
    """The plain string values of an enum, in definition order (for argparse `choices` and messages)."""
    return [member.value for member in choice]
