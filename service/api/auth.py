"""Who a request acts as, from its `Authorization: Bearer` token (FastAPI's `HTTPBearer`), and what of a response
a non-admin may see. The dependency routes take is `deps.CurrentOwner`."""

from __future__ import annotations

from typing import TypeVar

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from prunesearch.service.auth import LOCAL, Principal, authenticate
from prunesearch.service.db import session_scope
from prunesearch.service.redact import redactor_for
from prunesearch.service.settings import Settings

# auto_error=False: a request without a token is the local owner's where tokens are optional.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="an API token from `prunesearch token create`; optional on a server listening on loopback only",
)
M = TypeVar("M", bound=BaseModel)
# For the OpenAPI schema of routers whose routes depend on `deps.current_owner`.
UNAUTHORIZED: dict[int | str, dict] = {401: {"description": "a bad or revoked token, or none where one is required"}}


def unauthorized(message: str, error: str | None = None) -> HTTPException:
    """A 401 whose `WWW-Authenticate` names the scheme (and RFC 6750's error code for a bad token)."""
    challenge = f'Bearer realm="prunesearch", error="{error}"' if error else 'Bearer realm="prunesearch"'
    return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


async def principal_of(
    request: Request, credentials: HTTPAuthorizationCredentials | None, settings: Settings
) -> Principal:
    if credentials is None:
        if request.headers.get("authorization"):
            raise unauthorized("the Authorization header must be `Bearer <token>`", "invalid_request")
        if settings.require_token:
            raise unauthorized("this server requires an API token: send `Authorization: Bearer <token>`")
        return LOCAL
    principal = await run_in_threadpool(_lookup, settings.db_url, credentials.credentials)
    if principal is None:
        raise unauthorized("invalid or revoked API token", "invalid_token")
    return principal


def _lookup(url: str, token: str) -> Principal | None:
    with session_scope(url) as session:
        return authenticate(session, token)


def for_caller(view: M, principal: Principal, settings: Settings) -> M:
    """`view` as `principal` may see it: whole for an admin; for anyone else with the server's paths rewritten
    (`service/redact.py`)."""
    if principal.admin:
        return view
    return type(view).model_validate(redactor_for(settings)(view.model_dump(mode="json")))
