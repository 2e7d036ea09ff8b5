"""Run one evaluation: lm-evaluation-harness (`pruning.lmeval`) on the export's checkpoint folder, under a lease
renewed while it runs; only the evaluation's latest attempt may record the outcome."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from prunesearch.choices import EvaluationStatus
from prunesearch.service import crud
from prunesearch.service.db import is_sqlite, session_scope
from prunesearch.service.settings import Settings

from .exporter import finite
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


class EvaluationClaim(NamedTuple):
    evaluation_id: str
    attempt: int


def claim_evaluation(url: str, *, lease_s: float) -> EvaluationClaim | None:
    """Take the oldest queued evaluation, or one whose worker's lease expired (failing, on the way, those whose
    attempts are used up)."""
    sqlite = is_sqlite(url)
    with session_scope(url, immediate=sqlite) as session:
        for _ in range(100):
            evaluation = session.scalar(crud.claimable_evaluations(lease_s=lease_s, for_update=not sqlite))
            if evaluation is None:
                return None
            attempt = crud.start_evaluation(session, evaluation=evaluation)
            if attempt is not None:
                return EvaluationClaim(evaluation.id, attempt)
            session.flush()
        return None


def run_evaluation(claim: EvaluationClaim, settings: Settings) -> None:
    """Evaluate and record the report, or the error (one line) when it fails."""
    url = settings.db_url
    evaluation_id, attempt = claim

    def renew(session: Session) -> None:
        crud.evaluation_heartbeat(session, evaluation_id=evaluation_id, attempt=attempt)

    try:
        checkpoint, request = _read(url, evaluation_id)
        with Heartbeat(url, settings.heartbeat_s, renew, f"evaluation {evaluation_id}"):
            report = _evaluate(checkpoint, request)
        fields: dict[str, Any] = dict(status=EvaluationStatus.SUCCEEDED, results=finite(report))
    except Exception as exc:
        log.exception("evaluation %s failed", evaluation_id)
        fields = dict(status=EvaluationStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
    with session_scope(url) as session:
        if not crud.finish_evaluation(session, evaluation_id=evaluation_id, attempt=attempt, **fields):
            log.warning("evaluation %s: attempt %d lost it; its outcome is dropped", evaluation_id, attempt)


def _read(url: str, evaluation_id: str) -> tuple[Path, dict[str, Any]]:
    """The export's checkpoint folder (its archive's name without `.tar`) and the stored request."""
    with session_scope(url) as session:
        evaluation = crud.get_evaluation(session, evaluation_id=evaluation_id)
        export = crud.get_export(session, export_id=evaluation.export_id)
        if export is None or not export.path:
            raise FileNotFoundError(f"export {evaluation.export_id} has no checkpoint")
        checkpoint = Path(export.path).with_suffix("")
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"export {export.id}: its checkpoint folder is no longer on the server")
        return checkpoint, dict(evaluation.request)


def _evaluate(checkpoint: Path, request: dict[str, Any]) -> dict[str, Any]:
    from prunesearch.pruning.lmeval import EvalRequest, evaluate  # torch and lm-eval: only where one runs

    return evaluate(
        EvalRequest(
            model=checkpoint,
            data=tuple(Path(path) for path in request.get("data", [])),
            tasks=tuple(request.get("tasks", [])),
            batch_size=request.get("batch_size", 8),
            max_length=request.get("max_length"),
            limit=request.get("limit"),
        )
    )
