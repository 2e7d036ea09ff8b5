"""Exception handlers: client mistakes get 4xx with a message, never a 500 or a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from prunesearch.profilers.hardware import HardwareError
from prunesearch.service.paths import PathRejected
from prunesearch.service.redact import redactor_for

log = logging.getLogger("prunesearch.service")


def field_error(status: int, field: str, message: str) -> JSONResponse:
    """The same shape as FastAPI's validation errors: a list of {loc, msg, type}."""
    detail = [{"loc": ["body", field], "msg": message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=status)


async def _path_rejected(request: Request, exc: PathRejected) -> JSONResponse:
    """The message may hold a server path a filesystem error named (the client's own input aside): rewritten."""
    return field_error(422, exc.field, redactor_for(request.app.state.settings).text(str(exc)))


async def _hardware(_request: Request, exc: HardwareError) -> JSONResponse:
    return field_error(422, "hardware", str(exc))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(PathRejected, _path_rejected)
    app.add_exception_handler(HardwareError, _hardware)
    app.add_exception_handler(Exception, _unexpected)
