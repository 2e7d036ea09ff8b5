"""Exception handlers: client mistakes get 4xx with a message, never a 500 or a traceback; a full disk is a 507.
Every error body has one declared shape, `ErrorBody`, so the OpenAPI schema describes what clients receive."""

from __future__ import annotations

import errno
import logging
import math
import re
import reprlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from prunesearch.profilers.hardware import HardwareError
from prunesearch.service.paths import PathRejected
from prunesearch.service.redact import redactor_for

log = logging.getLogger("prunesearch.service")

# errno values that mean "no room to write": the server's volume (or the user's quota) is full.
FULL = (errno.ENOSPC, errno.EDQUOT)
_ECHO = reprlib.Repr()  # bounded: a preview of a huge list or dict costs no more than one of a small one
_ECHO.maxstring, _ECHO.maxother, _ECHO.maxlist, _ECHO.maxdict, _ECHO.maxlevel = 120, 120, 4, 4, 2
MAX_ERRORS = 20  # a huge body with a bad value in every item gets the first few back, not one per item


class FieldError(BaseModel):
    """One problem with one field of the request, in FastAPI's shape; `input` a short preview of the value."""

    loc: list[str | int]
    msg: str
    type: str
    input: str | None = None


class ErrorBody(BaseModel):
    """Every error response: a message, or (for bad fields) a list of field errors."""

    detail: str | list[FieldError]


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}
_DESCRIPTIONS = {
    400: "Bad request (a body that cannot be parsed)",
    403: "Forbidden: only an admin may act for another account",
    404: "Not found",
    409: "Conflict with the resource's state",
    410: "Gone from the server",
    413: "Request body too large",
    422: "Validation error: the body or a parameter is invalid",
    503: "Not ready",
    507: "Insufficient storage on the server",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each error status it may return, with the `ErrorBody` model."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def field_error(status: int, field: str, message: str) -> JSONResponse:
    """The same shape as FastAPI's validation errors: a list of {loc, msg, type} (a message quoting a huge value
    is cut short)."""
    detail = [{"loc": ["body", field], "msg": preview(message, 1000), "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=status)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or quota) is full: an OSError, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in FULL
    return isinstance(exc, OperationalError) and "disk is full" in str(exc.orig)


def insufficient_storage() -> JSONResponse:
    message = "insufficient storage: the server's disk is full; try again once space has been freed"
    return JSONResponse({"detail": message}, status_code=507)


def preview(value: Any, limit: int = 120) -> str:
    """A short, always-encodable echo of a client's value (never the whole of a huge one; NaN as text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    try:
        return _ECHO.repr(value)
    except ValueError:  # an int too long to print (Python's digit limit)
        return f"<{type(value).__name__}>"


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors()[:MAX_ERRORS]:
        loc = [part if isinstance(part, int) else str(part)[:200] for part in error.get("loc", ())]
        message = preview(str(error.get("msg", "")), 1000)
        item = {"loc": loc, "msg": message, "type": str(error.get("type", "value_error"))}
        if "input" in error:
            item["input"] = preview(error["input"])
        errors.append(item)
    return errors


async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own handler echoes each input whole, and fails on NaN; this one never fails."""
    try:
        return JSONResponse({"detail": _field_errors(exc)}, status_code=422)
    except Exception:  # a value no preview could encode: still a 422, without the echo
        log.exception("could not describe a validation error")
        return JSONResponse({"detail": "invalid request"}, status_code=422)


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's handler, except that a 405's `Allow` lists the methods of every operation on the path, as the
    OpenAPI schema declares them (Starlette names those of the first route it matched only)."""
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


def _allowed_methods(request: Request) -> list[str]:
    path = request.url.path
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"(\{[^/]+\})", template)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, path):
            methods = {method.upper() for method in operations if method.upper() in _METHODS}
            return sorted(methods | ({"HEAD"} if "GET" in methods else set()))
    return []


async def _path_rejected(request: Request, exc: PathRejected) -> JSONResponse:
    """The message may hold a server path a filesystem error named (the client's own input aside): rewritten."""
    return field_error(422, exc.field, redactor_for(request.app.state.settings).text(str(exc)))


async def _hardware(_request: Request, exc: HardwareError) -> JSONResponse:
    return field_error(422, "hardware", str(exc))


async def _storage(request: Request, exc: Exception) -> JSONResponse:
    """A full disk is a 507 (the request may succeed later); any other OSError is the server's fault."""
    if is_disk_full(exc):
        log.error("disk full: %s", exc)
        return insufficient_storage()
    return await _unexpected(request, exc)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(PathRejected, _path_rejected)
    app.add_exception_handler(HardwareError, _hardware)
    app.add_exception_handler(OSError, _storage)
    app.add_exception_handler(OperationalError, _storage)
    app.add_exception_handler(Exception, _unexpected)
