"""Heal-aware selection, the stage: after a search's trials, heal the chosen front candidates for a short budget
and score each again with the search's own proxy (`CandidateEvaluator.evaluate_model`), so that healed and
one-shot scores compare. One-shot and post-heal rankings disagree (Liu et al., "Rethinking the Value of Network
Pruning"; NIRVANA), which is why winners are picked on the healed front.

Each candidate is exported as `prunesearch export` writes it, healed by `prunesearch heal` (teacher: the job's
dense model, data: its calibration text), in a temporary folder removed whatever happens. The result goes to
the study in one write (`heal:N`), so a stage killed part-way resumes with the candidates not yet healed, and a
duplicate heal (two workers racing for one claim) writes the same record again rather than a mix.

Claims are leases: `heal_claim:N = {owner, at, attempts}`, renewed with every progress write. Another worker
takes a claim over only once it is `CLAIM_LEASE_S` old (its worker died: killed, out of memory).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from prunesearch.pruning.export import read_token_map
from prunesearch.pruning.healsettings import HealProgress
from prunesearch.pruning.modeling import load_pruned

from .callbacks import SearchCallbacks
from .context import SearchContext
from .fill import FILLED_FROM_ATTR
from .healselect import CANDIDATES_ATTR, baseline_rivals, claim_key, pick_candidates, progress_key, result_key
from .results import counts_as_done, export_trial, feasible_baselines, front_record, front_trials

log = logging.getLogger(__name__)
# Seconds between the stage's progress writes (and cancel checks) while a candidate heals.
PROGRESS_EVERY_S = 2.0
# Seconds a claim holds without renewal. Renewed every PROGRESS_EVERY_S while healing and between the stage's
# phases; generous because the export (pruning with calibration) and the scoring do not report progress.
CLAIM_LEASE_S = 120.0
# A candidate whose heal stopped its worker this many times (killed, out of memory) is recorded as an error.
MAX_HEAL_ATTEMPTS = 3


class _Stopped(Exception):
    """Raised from the heal's progress hook when the search is told to stop."""


def run_heal_stage(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    context: SearchContext,
    callbacks: SearchCallbacks,
    *,
    search_over: bool = False,
) -> list[int]:
    """Heal the study's candidates that no one has healed yet; the trial numbers this call healed.

    Runs only once the front is final: no trial is running (other workers' trials still running: the last of
    them heals) and n_trials have finished, or `search_over` (the search timed out: fewer will). Every worker
    that gets here splits the candidates with the others through claims (see `_claim`)."""
    heal = context.spec.heal
    if heal is None or study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return []
    # another worker may have claimed a trial it has not asked for yet: its result could join the front
    if not search_over and sum(map(counts_as_done, study.get_trials(deepcopy=False))) < context.spec.n_trials:
        return []
    candidates = study.user_attrs.get(CANDIDATES_ATTR)
    if candidates is None:
        candidates = _candidates(study, context)
        study.set_user_attr(CANDIDATES_ATTR, candidates)
    owner, healed = uuid.uuid4().hex, []
    for number in candidates:
        if callbacks.should_stop():
            break
        if result_key(number) in study.user_attrs:
            continue
        claim = _claim(study, number, owner)
        if claim is None:
            continue
        if claim["attempts"] > MAX_HEAL_ATTEMPTS:
            why = f"its worker stopped {MAX_HEAL_ATTEMPTS} times while healing it"
            study.set_user_attr(result_key(number), {"trial": number, "error": why})
            log.warning("gave up healing trial %d of %s: %s", number, study.study_name, why)
            continue
        try:
            record = heal_candidate(storage, study, context, number, _Reporter(study, number, callbacks, claim))
        except BaseException:  # stopped, interrupted: this process is alive to let go of its claim
            study.set_user_attr(
                claim_key(number), claim | {"owner": None, "at": 0.0, "attempts": claim["attempts"] - 1}
            )
            raise
        finally:
            study.set_user_attr(progress_key(number), None)
        study.set_user_attr(result_key(number), record)
        callbacks.on_heal({"trial": number, "healed": record})
        log.info("healed trial %d of %s: %s", number, study.study_name, record.get("error") or "ok")
        healed.append(number)
    return healed


def _candidates(study: optuna.Study, context: SearchContext) -> list[int]:
    """The front members to heal (`pick_candidates`), then, with budgets and `heal.rivals`, beyond `top_k`: the
    strongest enqueued baseline under each budget (`baseline_rivals`), and the filled plan under each
    (search/fill.py) that the proxy ranked a hair behind its source, since filling keeps capacity a heal uses."""
    heal, quality = context.spec.heal, context.spec.objectives.quality
    front = [front_record(t) for t in front_trials(study)]
    budgets = [b * context.dense_latency for b in heal.budgets] if heal.budgets else None
    candidates = pick_candidates(front, heal.top_k, quality, budgets)
    if budgets and heal.rivals:
        for attr in ("baseline", FILLED_FROM_ATTR):
            rivals = [front_record(t) for t in feasible_baselines(study, attr)]
            candidates += baseline_rivals(rivals, budgets, quality, taken=candidates)
    return candidates


def _claim(study: optuna.Study, number: int, owner: str) -> dict[str, Any] | None:
    """Take candidate `number` unless another worker holds a live claim on it (renewed within `CLAIM_LEASE_S`);
    the claim taken, or None. Not atomic (Optuna has no compare-and-set): two workers may both win a race, and
    both then write the same deterministic record."""
    key = claim_key(number)
    held = study.user_attrs.get(key)
    held = held if isinstance(held, dict) else {}  # no claim yet (or a bare owner from an older version)
    now = time.time()
    if held.get("owner") not in (None, owner) and now - float(held.get("at", 0.0)) < CLAIM_LEASE_S:
        return None
    attempts = int(held.get("attempts", 0)) + (held.get("owner") != owner)
    claim = {"owner": owner, "at": now, "attempts": attempts}
    study.set_user_attr(key, claim)
    return claim if (study.user_attrs.get(key) or {}).get("owner") == owner else None


class _Reporter:
    """The heal's progress hook: every `PROGRESS_EVERY_S`, the step and loss to the study and a cancel check."""

    def __init__(self, study: optuna.Study, number: int, callbacks: SearchCallbacks, claim: dict[str, Any]):
        self.study, self.number, self.callbacks, self.claim = study, number, callbacks, claim
        self.last = 0.0

    def renew(self) -> None:
        """Renew the claim's lease (the stage's phases that report no progress call this between them)."""
        self.study.set_user_attr(claim_key(self.number), self.claim | {"at": time.time()})

    def __call__(self, progress: HealProgress) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and progress.step < progress.total_steps:
            return
        self.last = now
        self.renew()
        current = {"trial": self.number, "step": progress.step, "total_steps": progress.total_steps}
        current |= {"loss": round(progress.loss, 6), "at": time.time()}  # `at`: the newest shows
        self.study.set_user_attr(progress_key(self.number), current)
        self.callbacks.on_heal(current)
        if self.callbacks.should_stop():
            raise _Stopped


def heal_candidate(
    storage: optuna.storages.BaseStorage, study: optuna.Study, context: SearchContext, number: int, progress=None
) -> dict[str, Any]:
    """Export trial `number`, heal it, score it with the proxy: the record the stage stores (`error` instead of
    scores when its export, heal or scoring fails, e.g. calibration text too small for one batch, out of memory,
    or the healed scores are not finite). Only a stop (`_Stopped`) and interrupts propagate."""
    from prunesearch.pruning.heal import heal  # torch training code: only where the stage runs

    spec = context.spec
    settings = spec.heal.settings(seed=spec.seed)
    record: dict[str, Any] = {"trial": number, "method": str(settings.method), "tokens_asked": settings.tokens}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prunesearch-heal-") as work:
        pruned, healed = Path(work) / "pruned", Path(work) / "healed"
        try:
            export_trial(storage, study.study_name, number, pruned)
            _renew(progress)
            result = heal(pruned, spec.model, spec.calibration, healed, settings, progress=progress)
            _renew(progress)
            token_map = read_token_map(healed)  # a draft reads trimmed tokens as it runs (`draft_inputs`)
            reads = context.draft_inputs(token_map)
            quality = context.evaluator.evaluate_model(load_pruned(healed), token_map, reads)
        except _Stopped:
            raise
        except Exception as exc:  # bad input (HealError, ...), out of memory, disk full: this candidate only
            log.warning("heal of trial %d failed: %s", number, exc, exc_info=not isinstance(exc, ValueError))
            return record | {"error": f"{type(exc).__name__}: {exc}"}
    if not (math.isfinite(quality.kl) and math.isfinite(quality.ppl)):
        return record | {"error": f"the healed model scored kl={quality.kl}, ppl={quality.ppl} (not finite)"}
    return record | {
        "healed_kl": quality.kl,
        "healed_ppl": quality.ppl,
        "steps": result.steps,
        "tokens": result.tokens,
        "lr": settings.learning_rate,
        "seq_len": settings.seq_len,
        "batch": settings.batch,
        "final_loss": result.final_loss,
        "heal_seconds": result.seconds,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _renew(progress) -> None:
    if isinstance(progress, _Reporter):
        progress.renew()
