"""An in-memory `SearchBackend`: no model, no Optuna. Its trials are made up from the trial number, and it
honours the callbacks as the real search does; `tests/search/test_backend_contract.py` holds it to the same
contract as `OptunaBackend`."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from prunesearch.choices import DType
from prunesearch.search.backend import SearchCallbacks, SearchProgress
from prunesearch.search.healselect import healed_front
from prunesearch.search.pareto import non_dominated
from prunesearch.search.spec import SearchSpec


class FakeBackend:
    """Studies as lists of trial records (those `trial_page` returns, plus the objective values)."""

    def __init__(self) -> None:
        self.studies: dict[str, list[dict[str, Any]]] = {}
        self.heals: dict[str, dict[int, dict[str, Any]]] = {}  # study -> trial -> heal record
        self.heal_candidates: dict[str, list[int]] = {}
        self.lock = threading.Lock()  # the API reads from its thread pool
        self.sampler_seeds: list[int | None] = []  # each run's, in order

    def add_trial(
        self,
        study_name: str,
        *,
        kl: float = 0.0,
        latency_ms: float = 1.0,
        feasible: bool = True,
        baseline: str | None = None,
        state: str = "complete",
    ) -> int:
        """Record one trial (state: complete, fail, running or waiting); its number."""
        with self.lock:
            trials = self.studies.setdefault(study_name, [])
            number = len(trials)
            metrics = {"kl": kl, "latency_ms": latency_ms} if state == "complete" else {}
            plan = {"trial": number} if state == "complete" else None
            record = {"trial": number, "state": state, "baseline": baseline, "feasible": feasible and bool(metrics)}
            trials.append(record | {"plan": plan, "metrics": metrics, "error": None})
            return number

    def add_heal(self, study_name: str, trial: int, *, healed_kl: float) -> None:
        """Record a healed score for `trial` (making it a candidate of the study's heal stage)."""
        with self.lock:
            self.heal_candidates.setdefault(study_name, []).append(trial)
            self.heals.setdefault(study_name, {})[trial] = {"trial": trial, "healed_kl": healed_kl}

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
        self.sampler_seeds.append(sampler_seed)
        progress = self._progress(study_name, spec.n_trials)
        for _ in range(spec.n_trials):
            if callbacks.should_stop() or progress.trials_done >= spec.n_trials or not callbacks.claim():
                break
            n = len(self.studies.get(study_name, []))
            self.add_trial(study_name, kl=1.0 / (n + 1), latency_ms=1.0 + n, feasible=n % 3 != 2)
            progress = self._progress(study_name, spec.n_trials)
            callbacks.on_trial(progress)
        return progress

    def _progress(self, study_name: str, n_trials: int) -> SearchProgress:
        trials = self.studies.get(study_name, [])
        done = sum(t["state"] in ("complete", "fail") for t in trials)
        front = tuple(self.front(study_name)) if trials else ()
        return SearchProgress(trials_done=done, n_trials=n_trials, hypervolume=float(len(front)), front=front)

    def _study(self, study_name: str) -> list[dict[str, Any]]:
        if study_name not in self.studies:
            raise LookupError(f"no study named {study_name!r}")
        return self.studies[study_name]

    def front(self, study_name: str) -> list[dict[str, Any]]:
        with self.lock:
            candidates = [t for t in self._study(study_name) if t["state"] == "complete" and t["feasible"]]
        if not candidates:
            return []
        values = np.array([[t["metrics"]["kl"], t["metrics"]["latency_ms"]] for t in candidates])
        front = [t for t, keep in zip(candidates, non_dominated(values), strict=True) if keep]
        front.sort(key=lambda t: t["metrics"]["latency_ms"])
        return [{key: t[key] for key in ("trial", "plan", "metrics", "baseline")} for t in front]

    def _records(self, study_name: str) -> dict[int, dict[str, Any]]:
        with self.lock:
            trials = [t for t in self._study(study_name) if t["state"] == "complete"]
        return {t["trial"]: {key: t[key] for key in ("trial", "plan", "metrics", "baseline")} for t in trials}

    def healed_front(self, study_name: str) -> list[dict[str, Any]]:
        records = self._records(study_name)
        return healed_front(records, list(self.heals.get(study_name, {}).values()), "kl")

    def heal_status(self, study_name: str) -> dict[str, Any] | None:
        self._study(study_name)
        if study_name not in self.heal_candidates:
            return None
        candidates = self.heal_candidates[study_name]
        healed = [n for n in candidates if n in self.heals.get(study_name, {})]
        return {"candidates": candidates, "healed": healed, "current": None, "errors": {}}

    def trial_page(self, study_name: str, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            started = [dict(t) for t in self._study(study_name) if t["state"] != "waiting"]
            heals = self.heals.get(study_name, {})
        page = [t | {"healed": heals.get(t["trial"])} for t in started[offset : offset + limit]]
        return page, len(started)

    def trial(self, study_name: str, number: int) -> dict[str, Any] | None:
        with self.lock:
            started = {t["trial"]: dict(t) for t in self._study(study_name) if t["state"] != "waiting"}
        record = started.get(number)
        return None if record is None else record | {"healed": self.heals.get(study_name, {}).get(number)}

    def export_trial(self, study_name: str, trial: int, out_dir: Path, *, dtype: str = DType.FP32) -> dict[str, Any]:
        with self.lock:
            trials = {t["trial"]: t for t in self._study(study_name)}
        if trials.get(trial, {}).get("state") != "complete":
            raise LookupError(f"trial {trial} is not a finished trial of study {study_name!r}")
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "plan.json").write_text(json.dumps(trials[trial]["plan"]))
        return {"trial": trial, "study": study_name, "dtype": dtype}

    def delete_study(self, study_name: str) -> None:
        with self.lock:
            self.studies.pop(study_name, None)

    def warm_up(self) -> None:
        return None
