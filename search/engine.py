"""The search loop: an Optuna study over prune plans, with baselines first and constraints per trial.

Ask/tell rather than `study.optimize`, so that a caller (the service's worker) can claim each trial against a
job quota (several workers on one study stop at exactly n_trials) and stop between trials on cancel.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from prunesearch.choices import Sampler

from .callbacks import SearchCallbacks
from .context import SearchContext
from .draft import objective_names as draft_objective_names
from .fidelity import FrontMember
from .fill import FILLED_FROM_ATTR
from .results import (
    ABANDONED_ATTR,
    SPEC_ATTR,
    SearchProgress,
    counts_as_done,
    export_trial,
    front_trials,
    list_trials,
    pareto_front,
    progress_of,
    trial_page,
)
from .spec import SearchSpec
from .storage import resolve, trial_id

__all__ = [
    "SearchCallbacks",
    "SearchProgress",
    "export_trial",
    "list_trials",
    "open_study",
    "pareto_front",
    "run_search",
    "trial_page",
]

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# User attribute of an enqueued baseline: its parameters, to enqueue it again should its trial be abandoned.
BASELINE_PARAMS_ATTR = "baseline_params"
# User attribute of a trial scored in full: its per-block quality values, which early stopping pairs with.
BLOCKS_ATTR = "quality_blocks"
# Study attribute: the filled plans enqueued, once per study ({budget_ms, from, moves}).
FILLS_ATTR = "fills"


def make_sampler(spec: SearchSpec, *, shared: bool = False, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """TPE (multi-objective, constraint-aware), NSGA-II or random, seeded by `seed` (default: the spec's; each
    of the service's workers on one job has its own, see `seeds.worker_seed`).

    `shared`: other workers may run trials of the same study at the same time. Only then does TPE need its
    constant liar (running trials count as bad, so workers spread out), which re-reads the storage for every
    parameter; a lone worker reads it once per trial."""
    seed = spec.seed if seed is None else seed
    if spec.sampler == Sampler.TPE:  # multivariate goes with the informed starts, as measured (docs/benchmarks.md)
        multivariate = spec.efficiency.informed_starts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=10, multivariate=multivariate, constant_liar=shared
            )
    if spec.sampler == Sampler.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    return optuna.samplers.RandomSampler(seed=seed)


def objective_names(spec: SearchSpec) -> list[str]:
    """The minimised values of each trial: quality and latency, or a draft's two (`search/draft.py`); extras."""
    speculative = spec.objectives.speculative
    first = draft_objective_names(speculative) if speculative is not None else [spec.objectives.quality, "latency_ms"]
    return [*first, *spec.objectives.extra]


def open_study(
    spec: SearchSpec,
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    *,
    shared: bool = False,
    sampler_seed: int | None = None,
) -> optuna.Study:
    """Create the study or join the existing one of the same name (other workers share it)."""
    study = optuna.create_study(
        storage=resolve(storage),
        study_name=study_name,
        directions=["minimize"] * len(objective_names(spec)),
        sampler=make_sampler(spec, shared=shared, seed=sampler_seed),
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objective_names(spec))
    return study


def _prepare(study: optuna.Study, context: SearchContext) -> None:
    """Record the dense latency (the hypervolume's unit) and enqueue the baselines, once per study."""
    if "dense_latency_ms" not in study.user_attrs:
        study.set_user_attr("dense_latency_ms", context.dense_latency)
    if not context.spec.baselines or study.user_attrs.get("baselines"):
        return
    names = []
    for name, params in context.starting_points():
        study.enqueue_trial(params, user_attrs={"baseline": name, BASELINE_PARAMS_ATTR: params}, skip_if_exists=True)
        names.append(name)
    study.set_user_attr("baselines", names)


def _below_n_trials(study: optuna.Study, n_trials: int) -> Callable[[], bool]:
    """A trial may start while fewer than n_trials have started (enqueued, still waiting ones and abandoned ones
    do not count)."""
    started = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)

    def claim() -> bool:
        trials = study.get_trials(deepcopy=False, states=started)
        return sum(not t.user_attrs.get(ABANDONED_ATTR) for t in trials) < n_trials

    return claim


def fail_abandoned_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Fail the trials a dead worker left RUNNING (they would never finish, and TPE's constant liar would count
    them as bad points forever); they do not count towards n_trials. Only call this while no other worker runs
    trials of the study (`storage`: the study's, to look the trials up by number)."""
    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in abandoned:
        trial = optuna.Trial(study, trial_id(storage, study.study_name, frozen.number))
        _abandon(study, trial, "its worker stopped while running it")
    if abandoned:
        log.warning("failed %d trial(s) abandoned by a stopped worker", len(abandoned))
    return len(abandoned)


def _abandon(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Fail `trial` as abandoned (not counted); a baseline is enqueued again, so the front still starts from it."""
    trial.set_user_attr(ABANDONED_ATTR, True)
    trial.set_user_attr("error", f"abandoned: {reason}")
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    baseline = {key: trial.user_attrs[key] for key in ("baseline", BASELINE_PARAMS_ATTR) if key in trial.user_attrs}
    if len(baseline) == 2:
        study.enqueue_trial(baseline[BASELINE_PARAMS_ATTR], user_attrs=baseline)


def _enqueue_fills(study: optuna.Study, context: SearchContext) -> None:
    """Once as many trials are left as the job has budgets to fill, enqueue the filled plan of the best front
    member under each budget (search/fill.py), so the search's last trials score them. Once per study; a filled
    plan equal to a trial's plan is skipped and its trial left to the sampler."""
    budgets = context.spec.fill_budgets_ms(context.dense_latency)
    if not budgets or FILLS_ATTR in study.user_attrs:
        return
    started = sum(counts_as_done(t) or t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))
    if context.spec.n_trials - started > len(budgets):
        return
    front, fills = front_trials(study), []
    for budget in budgets:
        under = [t for t in front if t.values[1] <= budget]
        if not under:
            continue
        source = min(under, key=lambda t: (t.values[0], t.values[1], t.number))  # the best quality under it
        filled = context.fill(source.params, budget)
        if filled is None or filled.params == source.params:
            continue
        attrs = {FILLED_FROM_ATTR: source.number}
        study.enqueue_trial(filled.params, user_attrs=attrs, skip_if_exists=True)
        fills.append({"budget_ms": budget, "from": source.number, "moves": filled.moves})
    study.set_user_attr(FILLS_ATTR, fills)
    if fills:
        log.info("enqueued %d filled plan(s): %s", len(fills), fills)


def _run_trial(study: optuna.Study, context: SearchContext) -> int:
    """Ask, evaluate and tell one trial; its number."""
    trial = study.ask()
    # baselines and filled plans are scored in full; others may stop early when they cannot enter the front
    # (search/fidelity.py)
    full = "baseline" in trial.user_attrs or FILLED_FROM_ATTR in trial.user_attrs
    front = None if full else [_member(t) for t in front_trials(study)]
    try:
        outcome = context.evaluate(trial, front)
    except optuna.exceptions.UpdateFinishedTrialError:
        _lost_race(trial)
        return trial.number
    except Exception as exc:  # a broken candidate fails its trial, never the job
        log.exception("trial %d failed", trial.number)
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return trial.number
    except BaseException:  # interrupted (Ctrl-C): the trial is abandoned, not left running
        _abandon(study, trial, "interrupted while running")
        raise
    try:
        for name, value in outcome.constraints.items():
            trial.set_constraint(name, float(value))
        trial.set_user_attr("plan", outcome.plan.to_dict())
        if FILLED_FROM_ATTR in trial.user_attrs:
            outcome.metrics[FILLED_FROM_ATTR] = trial.user_attrs[FILLED_FROM_ATTR]
        trial.set_user_attr("metrics", outcome.metrics)
        trial.set_user_attr("feasible", outcome.feasible)
        if outcome.blocks is not None:
            trial.set_user_attr(BLOCKS_ATTR, [round(value, 9) for value in outcome.blocks])
    except optuna.exceptions.UpdateFinishedTrialError:
        _lost_race(trial)
        return trial.number
    study.tell(trial, outcome.values, skip_if_finished=True)
    return trial.number


def _member(trial: FrozenTrial) -> FrontMember:
    """A front trial as the early-stopping rule reads it (search/fidelity.py): values and per-block quality."""
    blocks = trial.user_attrs.get(BLOCKS_ATTR)
    return FrontMember(tuple(trial.values), tuple(blocks) if blocks else None)


def _lost_race(trial: optuna.Trial) -> None:
    """A worker starting up alone took this trial for abandoned and failed it: drop its result."""
    log.warning("trial %d was failed as abandoned by another worker; its result is dropped", trial.number)


def run_search(
    spec: SearchSpec,
    *,
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    callbacks: SearchCallbacks | None = None,
    context: SearchContext | None = None,
    shared: bool = False,
    recover: bool | None = None,
    progress_bar: bool = False,
    sampler_seed: int | None = None,
) -> SearchProgress:
    """Run trials until n_trials have started, the timeout passes, or a callback (quota, stop) ends the search.

    `shared`: other workers may run trials of this study concurrently (the service's workers).
    `recover`: no other worker is running trials now, so RUNNING ones were abandoned by a dead worker and are
    failed first (default: when not `shared`). `sampler_seed`: this worker's sampler seed (default: the spec's)."""
    callbacks = callbacks or SearchCallbacks()
    storage = resolve(storage)
    study = open_study(spec, storage, study_name, shared=shared, sampler_seed=sampler_seed)
    if recover if recover is not None else not shared:
        fail_abandoned_trials(study, storage)
    context = context or SearchContext(spec, progress=progress_bar)
    _prepare(study, context)
    below_n_trials = _below_n_trials(study, spec.n_trials)
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
    bar = tqdm(total=spec.n_trials, desc="trials", disable=not progress_bar)
    progress = progress_of(study, spec.n_trials)
    bar.update(progress.trials_done)
    stopped = False
    for _ in range(spec.n_trials):
        timed_out = deadline is not None and time.monotonic() > deadline
        # the study's own count is checked before the caller's quota: a caller's counter can lag it
        stopped = callbacks.should_stop()
        if stopped or timed_out or not (below_n_trials() and callbacks.claim()):
            break
        _enqueue_fills(study, context)
        number = _run_trial(study, context)
        progress = dataclasses.replace(progress_of(study, spec.n_trials), last_trial=number)
        bar.update(progress.trials_done - bar.n)
        bar.set_postfix(front=progress.front_size, hv=f"{progress.hypervolume or 0:.4g}")
        callbacks.on_trial(progress)
    bar.close()
    if spec.heal is not None and not stopped:
        from .healstage import run_heal_stage  # the heal's training code: only for jobs that heal

        timed_out = deadline is not None and time.monotonic() > deadline
        run_heal_stage(study, storage, context, callbacks, search_over=timed_out)
    return progress
