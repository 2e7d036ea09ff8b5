"""API schemas: `XCreate` for input, `XPublic` for output; the tables live in `models`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from prunesearch.choices import DType, EvaluationStatus, ExportStatus, HealMethod, JobStatus
from prunesearch.pruning.healsettings import HealSettings
from prunesearch.search.spec import SearchSpec

from .models import Dataset, Evaluation, Export, Job

# The most training tokens one export, or one job's heal stage (all its candidates together), may heal on: a
# bound on the worker time one request can take.
MAX_HEAL_TOKENS = 1_000_000_000
# The most tokens in one heal step (batch x seq_len): a bound on the memory one step takes.
MAX_STEP_TOKENS = 1_048_576
MAX_EVAL_FILES = 4


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (every stored one is UTC): responses always carry the offset."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UTCDateTime = Annotated[datetime, AfterValidator(as_utc)]


def check_heal_size(tokens: int, step_tokens: int, what: str) -> None:
    """Raise a ValueError (a 422 with its message) when a heal exceeds the service's bounds."""
    if step_tokens > MAX_STEP_TOKENS:
        raise ValueError(
            f"a heal step may hold at most {MAX_STEP_TOKENS:,} tokens (batch x seq_len), not {step_tokens:,}"
        )
    if tokens > MAX_HEAL_TOKENS:
        raise ValueError(f"{what} may train on at most {MAX_HEAL_TOKENS:,} tokens, not {tokens:,}")


class JobCreate(SearchSpec):
    """A search spec plus how many workers may share it. `model` is a directory under an allowed root (or a
    hub id where allowed); `calibration` a dataset id from `POST /v1/datasets` or a file under an allowed
    root."""

    parallelism: StrictInt = Field(1, ge=1, le=64, description="how many workers may run trials of this job at once")
    owner: str | None = Field(None, max_length=200, description="default: the caller; only an admin may name another")

    @model_validator(mode="after")
    def _bounded_heal(self) -> JobCreate:
        if self.heal is not None:
            heal = self.heal
            check_heal_size(heal.top_k * heal.tokens, heal.batch * heal.seq_len, "a job's heal stage (top_k x tokens)")
        return self

    def search_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"parallelism", "owner"})


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    owner: str
    n_trials: int
    trials_done: int
    parallelism: int
    active_workers: int
    front_size: int
    hypervolume: float | None
    cancel_requested: bool
    error: str | None
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    eta_s: float | None = Field(
        description="seconds of trials left at the rate so far (running jobs only; None once every trial is done, "
        "while the heal stage runs: see `heal`)"
    )
    spec: dict[str, Any]
    heal: dict[str, Any] | None = Field(
        None,
        description="jobs that heal: {candidates, healed, current: {trial, step, total_steps, loss}, errors}",
        exclude_if=lambda value: value is None,  # a job that does not heal reads exactly as before
    )
    draft: dict[str, Any] | None = Field(
        None,
        description="draft jobs (objectives.speculative): {target (the job's model), lookahead, temperature, goal, "
        "max_draft_mib}; their trials' metrics add acceptance, lookahead, speedup, draft_ms, target_ms, coverage",
        exclude_if=lambda value: value is None,  # a job that searches no draft reads exactly as before
    )

    @classmethod
    def of(cls, job: Job, heal: dict[str, Any] | None = None) -> JobPublic:
        computed = ("eta_s", "heal", "draft")
        fields = {name: getattr(job, name) for name in cls.model_fields if name not in computed}
        return cls(**fields, eta_s=eta_seconds(job), heal=heal, draft=draft_view(job.spec))


def draft_view(spec: dict[str, Any]) -> dict[str, Any] | None:
    """What a job view says of a draft job: its target and its speculative objective; None for other jobs."""
    speculative = (spec.get("objectives") or {}).get("speculative")
    return None if speculative is None else {"target": spec.get("model"), **speculative}


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int | None = None
    offset: int
    limit: int


class ParetoPublic(BaseModel):
    job_id: str
    trials_done: int
    hypervolume: float | None
    front: list[dict[str, Any]]
    healed_front: list[dict[str, Any]] = Field(
        default_factory=list,
        description="jobs that heal: the healed trials not dominated by (healed quality, latency); pick from here",
    )


class HealOptions(BaseModel):
    """How an export heals the trial's checkpoint by distillation from the job's dense model (`prunesearch
    heal`). The upper bounds are the service's; every other rule is `HealSettings.validate`'s, so the API and the
    CLI accept the same settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tokens: StrictInt | None = Field(None, le=MAX_HEAL_TOKENS, description="training tokens (default 1,000,000)")
    steps: StrictInt | None = Field(None, le=1_000_000, description="optimizer steps, instead of tokens")
    method: HealMethod = HealMethod.FULL
    lr: StrictFloat | None = Field(None, le=1.0, description="peak learning rate (default 1e-4 full, 1e-3 LoRA)")
    lora_rank: StrictInt = Field(16, le=1024)
    seq_len: StrictInt = Field(256, le=32_768)
    batch: StrictInt = Field(8, le=4096)
    ce_weight: StrictFloat = Field(0.0, description="cross-entropy share of the loss, in [0, 1]")
    temperature: StrictFloat = Field(1.0, le=100.0)
    data: str | None = Field(
        None, max_length=4096, description="training text: a dataset id or an allowed file; default the job's"
    )
    eval: list[str] | None = Field(
        None,
        max_length=MAX_EVAL_FILES,
        description="perplexity before and after on these (dataset ids or allowed files); default the job's text",
    )

    @model_validator(mode="after")
    def _valid(self) -> HealOptions:
        settings = self.settings()
        settings.validate()  # a HealError is a ValueError: pydantic reports it as a 422 with its message
        tokens = settings.total_steps * settings.tokens_per_step
        check_heal_size(tokens, settings.tokens_per_step, "a heal (steps x batch x seq_len)")
        return self

    def settings(self, **runtime) -> HealSettings:
        """The library's settings for these options; `runtime` adds what the worker decides (device, dtype,
        checkpoint_every)."""
        fields = self.model_dump(exclude={"data", "eval"})
        return HealSettings(**fields, **runtime)


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trial: StrictInt = Field(ge=0)
    dtype: DType = DType.FP32
    heal: HealOptions | None = Field(None, description="heal the checkpoint before archiving it (default: no)")


class ExportPublic(BaseModel):
    id: str
    job_id: str
    owner: str
    trial: int
    dtype: str
    status: ExportStatus
    heal: dict[str, Any] | None = Field(description="the heal asked for (paths resolved), or null")
    progress: dict[str, Any] | None = Field(
        description="phase (exporting, healing, archiving); while healing: step, total, loss, tokens_per_s"
    )
    size: int | None
    sha256: str | None
    summary: dict[str, Any] | None
    error: str | None
    created_at: UTCDateTime
    finished_at: UTCDateTime | None
    download_url: str | None

    @classmethod
    def of(cls, export: Export) -> ExportPublic:
        fields = {name: getattr(export, name) for name in cls.model_fields if name != "download_url"}
        url = f"/v1/exports/{export.id}/download" if export.status == ExportStatus.SUCCEEDED else None
        return cls(**fields, download_url=url)


MAX_EVALUATION_FILES = 8
EvaluationInput = Annotated[str, Field(min_length=1, max_length=4096)]


class EvaluationCreate(BaseModel):
    """What `prunesearch evaluate` runs on the export's checkpoint (docs/evaluate.md)."""

    model_config = ConfigDict(extra="forbid")

    data: list[EvaluationInput] = Field(
        default_factory=list,
        max_length=MAX_EVALUATION_FILES,
        description="text to score by rolling log-likelihood (.txt or .jsonl): dataset ids or allowed files",
    )
    tasks: list[EvaluationInput] = Field(
        default_factory=list,
        max_length=MAX_EVALUATION_FILES,
        description="multiple-choice .jsonl files ({question, choices, answer}: dataset ids or allowed files) "
        "or lm-eval task names (their data must be in the workers' datasets cache: they run offline)",
    )
    batch_size: int = Field(8, ge=1, le=512)
    max_length: int | None = Field(None, ge=2, le=131_072, description="tokens per window (default: the model's)")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="at most this many documents per task")

    @model_validator(mode="after")
    def _something(self) -> EvaluationCreate:
        if not self.data and not self.tasks:
            raise ValueError("nothing to evaluate: name text (data) or tasks")
        return self


class EvaluationPublic(BaseModel):
    id: str
    export_id: str
    status: EvaluationStatus
    request: dict[str, Any] = Field(description="the evaluation asked for (files as resolved paths)")
    results: dict[str, Any] | None = Field(
        description="once succeeded: per task its metrics (results), the model, lm-eval's version and settings"
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, evaluation: Evaluation) -> EvaluationPublic:
        return cls(**{name: getattr(evaluation, name) for name in cls.model_fields})


class DatasetPublic(BaseModel):
    id: str
    owner: str
    filename: str
    size: int
    sha256: str
    created_at: UTCDateTime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetPublic:
        return cls(**{name: getattr(dataset, name) for name in cls.model_fields})


def eta_seconds(job: Job) -> float | None:
    """Remaining seconds at the average pace so far, for running jobs with at least one finished trial and some
    left (after the last trial a job that heals is still running, and its progress is the heal stage's)."""
    if job.status != JobStatus.RUNNING or not job.started_at or not 0 < job.trials_done < job.n_trials:
        return None
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return max(0.0, elapsed / job.trials_done * (job.n_trials - job.trials_done))
