"""Where the service finds the search engine: `prunesearch.search.engine`, or the module named by
`PRUNESEARCH_SEARCH_ENGINE` (tests point it at a fake with the same functions). Imported lazily, so the API
process never loads torch just to start."""

from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType

DEFAULT_ENGINE = "prunesearch.search.engine"


def search_engine() -> ModuleType:
    """The module providing run_search, pareto_front, list_trials, trial_page and export_trial."""
    return importlib.import_module(os.environ.get("PRUNESEARCH_SEARCH_ENGINE") or DEFAULT_ENGINE)


def delete_study(storage: str, study_name: str) -> None:
    """Remove a job's Optuna study, if it was ever created."""
    import optuna

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=study_name, storage=storage)
