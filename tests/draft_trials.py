"""Draft trials without a draft search: a study whose spec has `objectives.speculative`, and complete trials with
the metrics a draft search records (`acceptance`, `lookahead`, `speedup`, `draft_ms`, `target_ms`, `coverage`,
beside the usual `kl` and `latency_ms`), written through Optuna's public API. The export and service tests read
them, so they do not depend on how the search scores drafts."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import create_trial

from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.search.results import SPEC_ATTR
from prunesearch.search.spec import SearchSpec

from .service.conftest import job_body

LAYERS, HEADS, FFN, VOCAB = 4, 4, 256, 1024  # the bundled tiny-llama's shape
DRAFT_METRICS: dict[str, Any] = {
    "acceptance": 0.62,
    "lookahead": 4,
    "speedup": 1.87,
    "draft_ms": 0.41,
    "target_ms": 2.05,
    "coverage": 0.97,
}


def draft_spec_dict(**speculative: Any) -> dict[str, Any]:
    """The service tests' tiny job on the bundled model, searching a draft (`speculative` overrides the objective's
    fields)."""
    speculative = {"lookahead": "search", "temperature": 0.0} | speculative
    return job_body(space={"vocab": True}, objectives={"speculative": speculative})


def draft_plan(*, kept_layers: int = 2, vocab: int | None = 512) -> PrunePlan:
    """The first `kept_layers` layers whole, the rest removed; the vocabulary cut to `vocab` (None: whole)."""
    layers = [LayerPlan(heads=HEADS, ffn=FFN)] * kept_layers + [LayerPlan(heads=0, ffn=0)] * (LAYERS - kept_layers)
    return PrunePlan(layers=tuple(layers), vocab=vocab)


def create_draft_study(storage: str, study_name: str, spec: dict[str, Any] | None = None) -> optuna.Study:
    """A study as the engine creates it: two minimised values and the spec in its user attributes."""
    study = optuna.create_study(storage=storage, study_name=study_name, directions=["minimize", "minimize"])
    study.set_user_attr(SPEC_ATTR, SearchSpec.model_validate(spec or draft_spec_dict()).model_dump(mode="json"))
    return study


def add_draft_trial(
    study: optuna.Study, plan: PrunePlan, metrics: dict[str, Any] | None = None, *, kl: float = 0.5
) -> int:
    """A complete, feasible trial with `metrics` (default `DRAFT_METRICS`) beside `kl` and `latency_ms`, and as
    many objective values as the study has directions; its number."""
    values = dict(DRAFT_METRICS if metrics is None else metrics)
    all_metrics = {"kl": kl, "latency_ms": values.get("draft_ms") or 1.0} | values
    attrs = {"plan": plan.to_dict(), "metrics": all_metrics, "feasible": True}
    objectives = [kl, all_metrics["latency_ms"], *[0.0] * len(study.directions)][: len(study.directions)]
    study.add_trial(create_trial(values=objectives, user_attrs=attrs, constraints={"c": -1.0}))
    return study.trials[-1].number
