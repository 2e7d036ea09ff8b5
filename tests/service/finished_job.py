"""A finished search job without running a search: the job's row, its Optuna study in the service's database
(trials written through Optuna's public API with the values, constraints and user attributes the engine
writes), a heal stage's results, and the Pareto snapshot the workers record. The web page's browser test, the
optuna-dashboard test and `bench/web_first_paint.py` read it."""

from __future__ import annotations

import random
from datetime import timedelta

import optuna
from optuna.trial import TrialState, create_trial

from prunesearch.choices import JobStatus
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.search.backend import OptunaBackend
from prunesearch.search.healselect import CANDIDATES_ATTR, result_key
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import utcnow
from prunesearch.service.schemas import JobCreate
from prunesearch.service.settings import BUNDLED_EXAMPLES, Settings

LAYERS, HEADS, GROUP, FFN = 4, 4, 2, 256  # the bundled tiny-llama's shape (2 KV heads of 2 query heads each)
DENSE_MS = 2.0
N_SAMPLED = 24
HEALED = (0.5, 0.4)  # healed KL as a share of the unhealed, of the two heal candidates


def _plan(heads: list[int], ffn: list[int]) -> PrunePlan:
    return PrunePlan(layers=tuple(LayerPlan(heads=h, ffn=f) for h, f in zip(heads, ffn, strict=True)))


def _metrics(plan: PrunePlan, noise: float) -> dict[str, float]:
    """Made-up but plausible: latency grows with what a plan keeps (MLP width costs more), KL with what it removes
    (heads hurt more), so plans trade off and many are dominated."""
    heads = sum(x.heads for x in plan.layers) / (HEADS * LAYERS)
    ffn = sum(x.ffn for x in plan.layers) / (FFN * LAYERS)
    latency = DENSE_MS * (0.15 + 0.3 * heads + 0.55 * ffn)
    kl = 0.0 if heads == ffn == 1 else (0.05 + 2.0 * (1 - heads) ** 1.5 + 1.2 * (1 - ffn) ** 2) * noise
    return {"kl": kl, "ppl": 18.0 * (1 + kl), "latency_ms": latency, "latency_fraction": latency / DENSE_MS}


def trial_plans(seed: int = 0) -> list[tuple[str | None, PrunePlan]]:
    """(baseline name or None, plan): three baselines first, as the engine enqueues them, then sampled plans."""
    plans: list[tuple[str | None, PrunePlan]] = [
        ("dense", _plan([HEADS] * LAYERS, [FFN] * LAYERS)),
        ("uniform-0.5", _plan([HEADS // 2] * LAYERS, [FFN // 2] * LAYERS)),
        ("shortgpt-1", _plan([HEADS] * (LAYERS - 1) + [0], [FFN] * (LAYERS - 1) + [0])),
    ]
    rng = random.Random(seed)
    for _ in range(N_SAMPLED):
        heads = [rng.randint(0, HEADS // GROUP) * GROUP for _ in range(LAYERS)]
        plans.append((None, _plan(heads, [rng.randint(16, FFN) for _ in range(LAYERS)])))
    return plans


def seed_finished_job(settings: Settings, *, seed: int = 0) -> str:
    """Write a succeeded job that healed its two fastest front members; its id. The schema must exist."""
    plans = trial_plans(seed)
    body = {
        "model": str(BUNDLED_EXAMPLES),
        "calibration": str(BUNDLED_EXAMPLES / "calib.txt"),
        "n_trials": len(plans) + 1,  # one trial failed
        "hardware": "h100-sxm",
        "calibration_settings": {"tokens": 512, "seq_len": 64},
        "heal": {"top_k": 2, "tokens": 4096, "seq_len": 64, "batch": 4},
    }
    spec = JobCreate(**body).search_spec()
    with session_scope(settings.db_url) as session:
        job = crud.create_job(session, spec=spec, parallelism=1, owner="tests", idempotency_key=None)
        job_id, study_name = job.id, job.study_name
    backend = OptunaBackend(settings.db_url)
    study = optuna.create_study(storage=backend.storage, study_name=study_name, directions=["minimize"] * 2)
    rng = random.Random(seed)
    for baseline, plan in plans:
        metrics = _metrics(plan, noise=rng.uniform(0.8, 1.25))
        feasible = metrics["latency_fraction"] <= 0.75 or baseline == "dense"
        attrs = {"plan": plan.to_dict(), "metrics": metrics, "feasible": feasible}
        attrs |= {"baseline": baseline} if baseline else {}
        constraints = {"latency": -1.0 if feasible else 1.0}
        values = [metrics["kl"], metrics["latency_ms"]]
        study.add_trial(create_trial(values=values, user_attrs=attrs, constraints=constraints))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"feasible": False, "error": "out of memory"}))
    front = backend.front(study_name)
    _seed_heals(study, front)
    _finish(settings, job_id, front)
    return job_id


def _seed_heals(study: optuna.Study, front: list[dict]) -> None:
    candidates = [record for record in front if record["baseline"] != "dense"][: len(HEALED)]
    study.set_user_attr(CANDIDATES_ATTR, [record["trial"] for record in candidates])
    for record, share in zip(candidates, HEALED, strict=True):
        kl = record["metrics"]["kl"] * share
        study.set_user_attr(
            result_key(record["trial"]), {"trial": record["trial"], "healed_kl": kl, "healed_ppl": 18.0 * (1 + kl)}
        )


def _finish(settings: Settings, job_id: str, front: list[dict]) -> None:
    with session_scope(settings.db_url) as session:
        job = crud.get_job(session, job_id=job_id)
        hypervolume = 0.5
        crud.add_snapshot(session, job_id=job_id, trials_done=job.n_trials, hypervolume=hypervolume, front=front)
        now = utcnow()
        job.status = JobStatus.SUCCEEDED.value
        job.trials_claimed = job.trials_done = job.n_trials
        job.front_size, job.hypervolume = len(front), hypervolume
        job.started_at, job.finished_at = now - timedelta(seconds=42), now
