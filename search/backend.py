"""The search as the service sees it: one interface, and its Optuna implementation on one database URL.

The service imports this module at start-up, so it loads no torch: the Optuna backend imports the engine (and
with it torch and transformers) only when it runs a search or exports a trial."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import optuna

from prunesearch.choices import DType

from .callbacks import SearchCallbacks
from .results import (
    SearchProgress,
    export_trial,
    heal_status,
    healed_front,
    pareto_front,
    started_trial,
    trial_page,
)
from .spec import SearchSpec
from .storage import rdb_storage

__all__ = ["OptunaBackend", "SearchBackend", "SearchCallbacks", "SearchProgress"]


@runtime_checkable
class SearchBackend(Protocol):
    """Runs searches and reads them back, by study name. Reads raise LookupError for an unknown study."""

    def run(
        self,
        spec: SearchSpec,
        study_name: str,
        callbacks: SearchCallbacks,
        *,
        shared: bool,
        recover: bool | None,
        sampler_seed: int | None = None,
    ) -> SearchProgress:
        """Run the study's trials (see `run_search`); the progress returned carries the Pareto front.
        `sampler_seed`: this worker's sampler seed (default: the spec's)."""
        ...

    def trial(self, study_name: str, number: int) -> dict[str, Any] | None:
        """Trial `number` as `trial_page` lists it; None when the study has no started trial of that number."""
        ...

    def front(self, study_name: str) -> list[dict[str, Any]]:
        """The feasible non-dominated trials as {trial, plan, metrics, baseline}, fastest first."""
        ...

    def healed_front(self, study_name: str) -> list[dict[str, Any]]:
        """The heal stage's front: non-dominated healed trials by (healed quality, latency), fastest first, as
        {trial, plan, metrics, baseline, healed}; empty when nothing is healed."""
        ...

    def heal_status(self, study_name: str) -> dict[str, Any] | None:
        """{candidates, healed, current} of the heal stage; None before it picked its candidates."""
        ...

    def trial_page(self, study_name: str, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """Started trials (by number) from `offset`, at most `limit`, and how many there are in all."""
        ...

    def export_trial(self, study_name: str, trial: int, out_dir: Path, *, dtype: str = DType.FP32) -> dict[str, Any]:
        """Write a finished trial's pruned checkpoint to `out_dir`; a summary of what was written."""
        ...

    def delete_study(self, study_name: str) -> None:
        """Remove the study if there is one (deleting an unknown study does nothing)."""
        ...

    def warm_up(self) -> None:
        """Load what `run` needs now, so that the first job does not wait for it."""
        ...


class OptunaBackend:
    """The search engine on an Optuna study per job, stored in the database at `url` (one storage per URL per
    process, shared by all threads; built on first use, so constructing the backend touches no database)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        return rdb_storage(self.url)

    def run(
        self,
        spec: SearchSpec,
        study_name: str,
        callbacks: SearchCallbacks,
        *,
        shared: bool = False,
        recover: bool | None = None,
        sampler_seed: int | None = None,
    ) -> SearchProgress:
        from .engine import run_search  # torch and transformers: only where searches run

        options = dict(callbacks=callbacks, shared=shared, recover=recover, sampler_seed=sampler_seed)
        return run_search(spec, storage=self.storage, study_name=study_name, **options)

    def trial(self, study_name: str, number: int) -> dict[str, Any] | None:
        return started_trial(self.storage, study_name, number)

    def front(self, study_name: str) -> list[dict[str, Any]]:
        return pareto_front(self.storage, study_name)

    def healed_front(self, study_name: str) -> list[dict[str, Any]]:
        return healed_front(self.storage, study_name)

    def heal_status(self, study_name: str) -> dict[str, Any] | None:
        return heal_status(self.storage, study_name)

    def trial_page(self, study_name: str, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        return trial_page(self.storage, study_name, offset, limit)

    def export_trial(self, study_name: str, trial: int, out_dir: Path, *, dtype: str = DType.FP32) -> dict[str, Any]:
        return export_trial(self.storage, study_name, trial, out_dir, dtype=dtype)

    def delete_study(self, study_name: str) -> None:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study_name, storage=self.storage)

    def warm_up(self) -> None:
        from . import engine  # noqa: F401  (imports torch and transformers)
