"""Reading a search back: progress, Pareto front, trials, hypervolume, and exporting any trial."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from prunesearch.choices import DType
from prunesearch.profilers.registry import default_engine, describe_latency_model
from prunesearch.pruning.plan import PrunePlan

from . import healselect, pareto
from .spec import SearchSpec
from .storage import resolve

SPEC_ATTR = "prunesearch_spec"
# User attribute of a trial failed because its worker died while running it; such trials do not count.
ABANDONED_ATTR = "abandoned"
# What a draft trial (a job with `objectives.speculative`) records beside the other metrics (docs/drafts.md).
DRAFT_METRICS = ("acceptance", "lookahead", "speedup", "draft_ms", "target_ms", "coverage")
HV_MARGIN = 1.1  # reference point = worst baseline quality x this, at the dense latency


@dataclass(frozen=True)
class SearchProgress:
    """Where a search stands after a trial: counts, hypervolume, and the Pareto front it computed (the records
    `pareto_front` returns), so that no caller has to read the study again for it."""

    trials_done: int
    n_trials: int
    hypervolume: float | None
    front: tuple[dict[str, Any], ...] = ()
    last_trial: int | None = None  # the number of the trial just finished (None: not after a trial)

    @property
    def front_size(self) -> int:
        return len(self.front)

    def to_dict(self) -> dict[str, Any]:
        """The counts and the hypervolume (the front is large; callers print it on its own)."""
        keys = ("trials_done", "n_trials", "front_size", "hypervolume")
        return {key: getattr(self, key) for key in keys}


class UnknownStudyError(LookupError):
    """The storage has no study of that name."""


class UnknownTrialError(LookupError):
    """The study has no finished trial of that number."""


def load_study(storage: str | optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    """The study (a URL reads through the process's shared storage); LookupError if there is none."""
    try:
        return optuna.load_study(study_name=study_name, storage=resolve(storage))
    except KeyError:
        where = storage if isinstance(storage, str) else getattr(storage, "url", type(storage).__name__)
        raise UnknownStudyError(f"no study named {study_name!r} in {where}") from None


def study_spec(study: optuna.Study) -> SearchSpec:
    return SearchSpec.model_validate(study.user_attrs[SPEC_ATTR])


def _feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and bool(trial.user_attrs.get("feasible"))


def _within_constraints(trial: FrozenTrial) -> bool:
    """Every constraint <= 0 (as Optuna's `best_trials` counts feasibility)."""
    return all(c <= 0.0 for c in trial.constraints.values())


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated trials, fastest first.

    The trials `study.best_trials` returns (complete, every constraint <= 0, not dominated), without its deep
    copy of every trial: this runs after each trial."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _within_constraints(t)]
    if not trials:
        return []
    signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    on_front = pareto.non_dominated(np.array([t.values for t in trials]) * signs)
    return sorted((t for t, keep in zip(trials, on_front, strict=True) if keep), key=lambda t: t.values[1])


def hypervolume(study: optuna.Study, first: int | None = None) -> float | None:
    """Hypervolume of the feasible (quality, latency / dense latency) points (of the first `first` trials).

    The reference point is fixed per job once its baselines are done: the worst feasible baseline quality
    times 1.1, at the dense latency. Without baselines it follows the worst feasible quality seen so far."""
    all_feasible = [t for t in study.get_trials(deepcopy=False) if _feasible(t)]
    dense = study.user_attrs.get("dense_latency_ms")
    if not all_feasible or not dense:
        return None
    baselines = [t for t in all_feasible if "baseline" in t.user_attrs]
    q_ref = max(t.values[0] for t in (baselines or all_feasible)) * HV_MARGIN or 1.0
    trials = [t for t in all_feasible if first is None or t.number < first]
    points = np.array([[t.values[0] / q_ref, t.values[1] / dense] for t in trials]).reshape(-1, 2)
    return pareto.hypervolume(points, np.ones(2))  # points outside the unit box add nothing


def hypervolume_history(study: optuna.Study, every: int = 10) -> list[dict[str, Any]]:
    """Hypervolume after every `every` trials (one reference point throughout), for convergence plots."""
    total = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))  # enqueued: not yet trials
    marks = sorted({*range(every, total + 1, every), total})
    return [{"trials": n, "hypervolume": hypervolume(study, first=n)} for n in marks if n > 0]


def counts_as_done(trial: FrozenTrial) -> bool:
    """Finished, and not a trial a dead worker abandoned (those are run again)."""
    return trial.state.is_finished() and not trial.user_attrs.get(ABANDONED_ATTR)


def progress_of(study: optuna.Study, n_trials: int) -> SearchProgress:
    finished = [t for t in study.get_trials(deepcopy=False) if counts_as_done(t)]
    return SearchProgress(
        trials_done=len(finished),
        n_trials=n_trials,
        hypervolume=hypervolume(study),
        front=tuple(front_record(t) for t in front_trials(study)),
    )


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "baseline": trial.user_attrs.get("baseline"),
        "feasible": bool(trial.user_attrs.get("feasible")),
        "plan": trial.user_attrs.get("plan"),
        "metrics": trial.user_attrs.get("metrics", {}),
        "error": trial.user_attrs.get("error"),
    }


def feasible_baselines(study: optuna.Study, attr: str = "baseline") -> list[FrozenTrial]:
    """The enqueued baselines and starting points scored in full within every constraint (on the front or not);
    with `attr`, the trials carrying that user attribute instead (`filled_from`: the filled plans)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if attr in t.user_attrs and "plan" in t.user_attrs and _within_constraints(t)]


def front_record(trial: FrozenTrial) -> dict[str, Any]:
    """A Pareto front member as callers see it: {trial, plan, metrics, baseline}."""
    record = {
        "trial": trial.number,
        "plan": trial.user_attrs["plan"],
        "metrics": trial.user_attrs["metrics"],
        "baseline": trial.user_attrs.get("baseline"),
    }
    return copy.deepcopy(record)  # the trial's user_attrs are the storage's cached dicts (read without a copy)


def pareto_front(storage: str | optuna.storages.BaseStorage, study_name: str) -> list[dict[str, Any]]:
    """[{trial, plan, metrics, baseline}] of the feasible non-dominated trials, fastest first."""
    return [front_record(t) for t in front_trials(load_study(storage, study_name))]


def list_trials(
    storage: str | optuna.storages.BaseStorage, study_name: str, offset: int = 0, limit: int = 50
) -> list[dict[str, Any]]:
    """Trials that have started, in order; enqueued ones that never ran are not trials yet."""
    return trial_page(storage, study_name, offset, limit)[0]


def trial_page(
    storage: str | optuna.storages.BaseStorage, study_name: str, offset: int = 0, limit: int = 50
) -> tuple[list[dict[str, Any]], int]:
    """One page of `list_trials`, and how many trials there are in all; each record has `healed`: the heal
    stage's record of the trial (healed scores or the heal's error), None for trials it did not heal."""
    study = load_study(storage, study_name)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    attrs = study.user_attrs if trials[offset : offset + limit] else {}
    page = [
        trial_record(t) | {"healed": attrs.get(healselect.result_key(t.number))}
        for t in trials[offset : offset + limit]
    ]
    return page, len(trials)


def started_trial(storage: str | optuna.storages.BaseStorage, study_name: str, number: int) -> dict[str, Any] | None:
    """Trial `number` as `trial_page` lists it (one trial read, not the study's); None when the study has no
    started trial of that number (LookupError when there is no such study)."""
    storage = resolve(storage)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise UnknownStudyError(f"no study named {study_name!r}") from None
    try:
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    except KeyError:
        return None
    if trial.state == TrialState.WAITING:
        return None
    healed = storage.get_study_user_attrs(study_id).get(healselect.result_key(number))
    return trial_record(trial) | {"healed": healed}


def trial_plan(study: optuna.Study, number: int) -> PrunePlan:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(number)
    if trial is None or trial.state != TrialState.COMPLETE or "plan" not in trial.user_attrs:
        raise UnknownTrialError(f"trial {number} is not a finished trial of study {study.study_name!r}")
    return PrunePlan.from_dict(trial.user_attrs["plan"])


def export_trial(
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    trial: int,
    out_dir: str | Path,
    *,
    dtype: str = DType.FP32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Materialise a trial's plan as a checkpoint, with the importance settings the search used."""
    study = load_study(storage, study_name)
    plan = trial_plan(study, trial)
    from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint  # torch: only to export

    spec = study_spec(study)
    settings = spec.calibration_settings
    calibration = ImportanceCalibration(
        path=Path(spec.calibration), seq_len=settings.seq_len, max_tokens=settings.tokens
    )
    summary = prune_checkpoint(
        spec.model,
        plan,
        out_dir,
        criterion=settings.criterion,
        calibration=calibration,
        dtype=dtype,
        device=device,
        stock_only=spec.stock_only,
        search=search_record(study, spec, trial),
        repair=spec.repair,
        draft_temperature=spec.objectives.speculative.temperature if spec.objectives.speculative else None,
    )
    return summary | {"trial": trial, "study": study_name}


def search_record(study: optuna.Study, spec: SearchSpec, number: int) -> dict[str, Any]:
    """What the export's provenance and model card say of the search: the trial's metrics and how it was priced."""
    trial = {t.number: t for t in study.get_trials(deepcopy=False)}[number]
    return {
        "study": study.study_name,
        "trial": number,
        "baseline": trial.user_attrs.get("baseline"),
        "metrics": copy.deepcopy(trial.user_attrs.get("metrics", {})),
        "hardware": spec.hardware,
        "latency_model": describe_latency_model(spec.hardware),
        "latency_objective": spec.objectives.latency,
        "workload": spec.model_dump(mode="json")["workload"],
        "dense_latency_ms": study.user_attrs.get("dense_latency_ms"),
        "deploy": spec.constraints.deploy.value,
    } | ({"speculative": draft} if (draft := draft_record(trial, spec)) is not None else {})


def draft_record(trial: FrozenTrial, spec: SearchSpec) -> dict[str, Any] | None:
    """What an export's `speculative.json` says of a draft trial: its acceptance, lookahead and predicted speedup
    against the target (the job's model), and where they were priced; None for a job that searches no draft.
    A metric the trial lacks is None; a fixed lookahead falls back to the spec's."""
    speculative = spec.objectives.speculative
    if speculative is None:
        return None
    metrics = trial.user_attrs.get("metrics") or {}
    value = {name: metrics.get(name, trial.user_attrs.get(name)) for name in DRAFT_METRICS}
    if value["lookahead"] is None and isinstance(speculative.lookahead, int):
        value["lookahead"] = speculative.lookahead
    return {
        "acceptance": value["acceptance"],
        "lookahead": value["lookahead"],
        "temperature": speculative.temperature,
        "predicted_speedup": value["speedup"],
        "draft_ms": value["draft_ms"],
        "target_ms": value["target_ms"],
        "coverage": value["coverage"],
        "hardware": spec.hardware,
        "engine": str(spec.workload.engine or default_engine(spec.hardware)),
    }


def healed_front_of(study: optuna.Study) -> list[dict[str, Any]]:
    """The heal stage's front: the non-dominated healed trials by (healed quality, latency), fastest first, as
    {trial, plan, metrics, baseline, healed} (`healed`: the heal's record: healed_kl, healed_ppl, settings)."""
    attrs = study.user_attrs
    healed = healselect.healed_records(attrs)
    if not healed:
        return []
    quality = study_spec(study).objectives.quality if SPEC_ATTR in attrs else "kl"
    numbers = {h["trial"] for h in healed}
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number in numbers]
    records = {t.number: front_record(t) for t in trials if "plan" in t.user_attrs}
    return healselect.healed_front(records, healed, quality)


def healed_front(storage: str | optuna.storages.BaseStorage, study_name: str) -> list[dict[str, Any]]:
    """`healed_front_of` the named study (LookupError if there is none)."""
    return healed_front_of(load_study(storage, study_name))


def heal_status(storage: str | optuna.storages.BaseStorage, study_name: str) -> dict[str, Any] | None:
    """Where the heal stage stands: {candidates, healed (trial numbers done), current (trial, step, total_steps,
    loss of the heal that reported last, when workers heal side by side) or None, errors ({trial: why} for heals
    that could not run)}; None before the stage picked its candidates (or for a search that does not heal)."""
    attrs = load_study(storage, study_name).user_attrs
    candidates = attrs.get(healselect.CANDIDATES_ATTR)
    if candidates is None:
        return None
    done = [n for n in candidates if healselect.result_key(n) in attrs]
    errors = {
        str(n): attrs[healselect.result_key(n)]["error"] for n in done if "error" in attrs[healselect.result_key(n)]
    }
    running = [p for n in candidates if isinstance(p := attrs.get(healselect.progress_key(n)), dict)]
    newest = max(running, key=lambda p: p.get("at", 0.0), default=None)  # several workers may heal at once
    current = None if newest is None else {k: v for k, v in newest.items() if k != "at"}
    return {"candidates": candidates, "healed": done, "current": current, "errors": errors}
