"""API schemas: `XCreate` for input, `XPublic` for output; the tables live in `models`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from prunesearch.choices import DType, ExportStatus, JobStatus
from prunesearch.search.spec import SearchSpec

from .models import Dataset, Export, Job


class JobCreate(SearchSpec):
    """A search spec plus how many workers may share it. `model` is a directory under an allowed root (or a
    hub id where allowed); `calibration` a dataset id from `POST /v1/datasets` or a file under an allowed
    root."""

    parallelism: int = Field(1, ge=1, le=64, description="how many workers may run trials of this job at once")
    owner: str | None = Field(None, max_length=200)

    def search_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"parallelism", "owner"})


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    owner: str | None
    n_trials: int
    trials_done: int
    parallelism: int
    active_workers: int
    front_size: int
    hypervolume: float | None
    cancel_requested: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    eta_s: float | None = Field(description="seconds left at the rate so far (running jobs only)")
    spec: dict[str, Any]
    heal: dict[str, Any] | None = Field(
        None,
        description="jobs that heal: {candidates, healed, current: {trial, step, total_steps, loss}, errors}",
        exclude_if=lambda value: value is None,  # a job that does not heal reads exactly as before
    )

    @classmethod
    def of(cls, job: Job, heal: dict[str, Any] | None = None) -> JobPublic:
        fields = {name: getattr(job, name) for name in cls.model_fields if name not in ("eta_s", "heal")}
        return cls(**fields, eta_s=eta_seconds(job), heal=heal)


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


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trial: int = Field(ge=0)
    dtype: DType = DType.FP32


class ExportPublic(BaseModel):
    id: str
    job_id: str
    trial: int
    dtype: str
    status: ExportStatus
    size: int | None
    sha256: str | None
    summary: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    download_url: str | None

    @classmethod
    def of(cls, export: Export) -> ExportPublic:
        fields = {name: getattr(export, name) for name in cls.model_fields if name != "download_url"}
        url = f"/v1/exports/{export.id}/download" if export.status == ExportStatus.SUCCEEDED else None
        return cls(**fields, download_url=url)


class DatasetPublic(BaseModel):
    id: str
    filename: str
    size: int
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetPublic:
        return cls(**{name: getattr(dataset, name) for name in cls.model_fields})


def eta_seconds(job: Job) -> float | None:
    """Remaining seconds at the average pace so far, for running jobs with at least one finished trial."""
    if job.status != JobStatus.RUNNING or not job.started_at or job.trials_done <= 0:
        return None
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return max(0.0, elapsed / job.trials_done * (job.n_trials - job.trials_done))
