"""What a caller hooks into a running search (the service's worker: its job quota, cancel check, progress)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .results import SearchProgress


def _always() -> bool:
    return True


def _never() -> bool:
    return False


def _ignore(progress: SearchProgress) -> None:
    return None


def _ignore_heal(update: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class SearchCallbacks:
    """Hooks the search calls between trials; each defaults to doing nothing (a lone search from the CLI).

    `claim`: may one more trial start? (the service's per-job quota, shared by its workers; checked after the
    study's own count). `should_stop`: stop before the next trial (cancel, shutdown). `on_trial`: the progress,
    Pareto front included, after each trial. `on_heal`: the heal stage's progress on a candidate (`trial`,
    `step`, `total_steps`, `loss`, as often as the study records it) and each candidate's outcome (`trial`,
    `healed`: its record, an `error` in it when the heal failed)."""

    claim: Callable[[], bool] = _always
    should_stop: Callable[[], bool] = _never
    on_trial: Callable[[SearchProgress], None] = _ignore
    on_heal: Callable[[dict[str, Any]], None] = _ignore_heal
