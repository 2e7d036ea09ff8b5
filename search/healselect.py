"""Heal-aware selection, the pure part: which front candidates to heal, where the heal stage keeps its state in
the study, and the healed Pareto front. No torch (the API reads the healed front).

Optuna refuses user attributes on finished trials, so the stage's state lives in the study's user attributes,
one key per trial: `heal:N` (the healed scores of trial N, written once, whole), `heal_claim:N` (which worker
heals it, a lease: {owner, at, attempts}) and `heal_progress:N` (step and loss of its heal while it runs, one key
per trial so that workers healing side by side do not overwrite each other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import pareto

RESULT_PREFIX = "heal:"
CLAIM_PREFIX = "heal_claim:"
PROGRESS_PREFIX = "heal_progress:"
CANDIDATES_ATTR = "heal_candidates"
# A dense model healed against itself stays dense: never a candidate.
SKIPPED_BASELINES = ("dense",)


def result_key(trial: int) -> str:
    return f"{RESULT_PREFIX}{trial}"


def claim_key(trial: int) -> str:
    return f"{CLAIM_PREFIX}{trial}"


def progress_key(trial: int) -> str:
    return f"{PROGRESS_PREFIX}{trial}"


def pick_candidates(
    front: Sequence[dict[str, Any]], top_k: int, quality: str, budgets_ms: Sequence[float] | None = None
) -> list[int]:
    """Up to `top_k` trial numbers of `front` (records with `trial`, `metrics`, `baseline`), fastest first.

    Without `budgets_ms`: spread over the front's latency range: always the fastest and the best `quality`, the
    rest the members nearest (by latency) to evenly spaced latency quantiles. With `budgets_ms`: the members
    just under each budget, taken in turns (`near_budgets`). Deterministic: ties go to the earlier trial."""
    members = sorted(
        (r for r in front if r.get("baseline") not in SKIPPED_BASELINES and quality in r["metrics"]),
        key=lambda r: (r["metrics"]["latency_ms"], r["trial"]),
    )
    if budgets_ms:
        return near_budgets(members, top_k, budgets_ms)
    if len(members) <= top_k:
        return [r["trial"] for r in members]
    latency = np.array([r["metrics"]["latency_ms"] for r in members], dtype=float)
    best = min(range(len(members)), key=lambda i: (members[i]["metrics"][quality], members[i]["trial"]))
    chosen = [0] if top_k == 1 or best == 0 else [0, best]
    for q in np.linspace(0.0, 1.0, top_k)[1:-1] if top_k > 2 else []:
        if len(chosen) >= top_k:
            break
        target = np.quantile(latency, q)
        free = [i for i in range(len(members)) if i not in chosen]
        chosen.append(min(free, key=lambda i: (abs(latency[i] - target), i)))
    # the best-quality member is the slowest on a plain 2-D front; fill any slot left (best was the fastest)
    for i in reversed(range(len(members))):
        if len(chosen) >= top_k:
            break
        if i not in chosen:
            chosen.append(i)
    return [members[i]["trial"] for i in sorted(chosen)]


def near_budgets(members: Sequence[dict[str, Any]], top_k: int, budgets_ms: Sequence[float]) -> list[int]:
    """Up to `top_k` of `members` (sorted by latency): for each budget in turn, the slowest member at or under it
    not yet taken. On a front, the slowest member under a budget is the proxy's pick there, and the next
    slowest are its closest rivals: the plans a heal may reorder, since healing changes quality by similar
    amounts for plans of similar latency. A budget no member meets adds nothing."""
    queues = [[r["trial"] for r in reversed(members) if r["metrics"]["latency_ms"] <= b] for b in budgets_ms]
    chosen: list[int] = []
    while len(chosen) < top_k and any(queues):
        for queue in queues:
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < top_k:
                chosen.append(queue.pop(0))
    order = {r["trial"]: i for i, r in enumerate(members)}
    return sorted(chosen, key=order.__getitem__)


def baseline_rivals(
    baselines: Sequence[dict[str, Any]], budgets_ms: Sequence[float], quality: str, taken: Sequence[int] = ()
) -> list[int]:
    """For each budget, the slowest enqueued baseline (records with `trial`, `metrics`, `baseline`) at or under
    it, unless already `taken`: the baseline with the most room at that budget, the one a healed plan must beat.
    One-shot KL ranks these below the front, yet they can heal as well or better (ShortGPT's whole-layer cuts
    keep more parameters at equal latency; docs/benchmarks.md, "Heal"), so they are healed beside the front's
    candidates and the healed front says which wins. Fastest first; a budget no baseline meets adds nothing."""
    usable = [r for r in baselines if r.get("baseline") not in SKIPPED_BASELINES and quality in r["metrics"]]
    chosen: list[int] = []
    for budget in budgets_ms:
        under = [r for r in usable if r["metrics"]["latency_ms"] <= budget]
        if under:
            rival = max(under, key=lambda r: (r["metrics"]["latency_ms"], -r["trial"]))["trial"]
            if rival not in chosen and rival not in taken:
                chosen.append(rival)
    latency = {r["trial"]: r["metrics"]["latency_ms"] for r in usable}
    return sorted(chosen, key=lambda t: (latency[t], t))


def healed_records(user_attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """The healed scores the stage stored in a study's user attributes, by trial number."""
    records = [v for k, v in user_attrs.items() if k.startswith(RESULT_PREFIX) and isinstance(v, dict)]
    return sorted(records, key=lambda r: r["trial"])


def healed_front(front_by_trial: dict[int, dict[str, Any]], healed: Sequence[dict[str, Any]], quality: str):
    """The non-dominated healed trials by (healed quality, latency), fastest first: each the trial's record
    (`front_by_trial`: {trial, plan, metrics, baseline}) plus `healed` (its heal record)."""
    key = f"healed_{quality}"
    rows = [
        (front_by_trial[h["trial"]], h)
        for h in healed
        if h["trial"] in front_by_trial and isinstance(h.get(key), int | float) and math.isfinite(h[key])
    ]  # a score that is not finite (NaN: no ordering) is no healed point
    if not rows:
        return []
    values = np.array([[h[key], record["metrics"]["latency_ms"]] for record, h in rows], dtype=float)
    keep = pareto.non_dominated(values)
    kept = [record | {"healed": h} for (record, h), k in zip(rows, keep, strict=True) if k]
    return sorted(kept, key=lambda r: (r["metrics"]["latency_ms"], r["trial"]))
