"""Evaluations: run lm-evaluation-harness on an export's checkpoint (a worker runs it), and read the results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response

from prunesearch.choices import ExportStatus
from prunesearch.service import crud
from prunesearch.service.api.auth import UNAUTHORIZED, for_caller
from prunesearch.service.api.deps import CurrentOwner, ExportDep, SessionDep, SettingsDep, current_owner
from prunesearch.service.api.errors import responses
from prunesearch.service.evaluations import evaluation_request
from prunesearch.service.models import Evaluation, is_id
from prunesearch.service.schemas import EvaluationCreate, EvaluationPublic

router = APIRouter(tags=["evaluations"], dependencies=[Depends(current_owner)], responses=UNAUTHORIZED)

_ERRORS = responses(404)


def get_evaluation(export: ExportDep, evaluation_id: str, session: SessionDep) -> Evaluation:
    evaluation = crud.get_evaluation(session, evaluation_id=evaluation_id) if is_id(evaluation_id) else None
    if evaluation is None or evaluation.export_id != export.id:
        raise HTTPException(404, f"evaluation {evaluation_id} of export {export.id} not found")
    return evaluation


EvaluationDep = Annotated[Evaluation, Depends(get_evaluation)]


@router.post(
    "/v1/exports/{export_id}/evaluations",
    status_code=202,
    response_model=EvaluationPublic,
    responses=responses(400, 404, 409, 413, 422),
)
def create_evaluation(
    export: ExportDep,
    body: EvaluationCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentOwner,
    response: Response,
) -> EvaluationPublic:
    """Queue an lm-evaluation-harness run on the export's checkpoint: perplexity and bits per byte of `data`,
    scores of `tasks`. A worker runs it; follow it at the `Location` returned."""
    if export.status != ExportStatus.SUCCEEDED:
        raise HTTPException(409, f"export {export.id} is {export.status}; evaluate it once it has succeeded")
    request = evaluation_request(body, settings, session, principal)
    evaluation = crud.create_evaluation(session, export_id=export.id, request=request)
    response.headers["Location"] = f"/v1/exports/{export.id}/evaluations/{evaluation.id}"
    return for_caller(EvaluationPublic.of(evaluation), principal, settings)


@router.get("/v1/exports/{export_id}/evaluations/{evaluation_id}", response_model=EvaluationPublic, responses=_ERRORS)
def get_evaluation_route(evaluation: EvaluationDep, settings: SettingsDep, principal: CurrentOwner) -> EvaluationPublic:
    """Status and, once succeeded, results (per task its metrics) of one evaluation (paths redacted for
    non-admins)."""
    return for_caller(EvaluationPublic.of(evaluation), principal, settings)
