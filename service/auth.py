"""Accounts and API tokens: who a request acts as (`Principal`), and the tokens that say so.

A token is `ps_` plus 43 URL-safe characters of `secrets.token_urlsafe(32)` (256 random bits); the database keeps
only its SHA-256 (a fast hash is enough for a random secret of that size: there is nothing to guess from it), so a
token is shown once, when it is created. An account is the token's `name`: every token of one name acts as the
same owner (create a second one to rotate, then revoke the first). `admin` tokens see and manage every owner's
objects and the server's paths; the others only their own.

Requests without a token act as `LOCAL_OWNER`, an admin, but only on a server that does not require tokens: one
listening on loopback (`prunesearch serve` requires them on any other address, `Settings.require_token`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import LOCAL_OWNER, ApiToken, utcnow

TOKEN_PREFIX = "ps_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AuthError(ValueError):
    """A token operation the caller asked for is not possible (bad name, unknown token)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an owner name, and whether it may see every owner's objects."""

    owner: str
    admin: bool = False

    def may_access(self, owner: str | None) -> bool:
        return self.admin or owner == self.owner

    @property
    def scope(self) -> str | None:
        """The owner a query is limited to; None: every owner (an admin)."""
        return None if self.admin else self.owner


LOCAL = Principal(LOCAL_OWNER, admin=True)


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the API on this machine (`localhost`, 127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any address


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AuthError(f"account name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with one")
    if name == LOCAL_OWNER:
        raise AuthError(f"{LOCAL_OWNER!r} is the owner of requests without a token; pick another name")
    return name


def create_token(session: Session, *, name: str, admin: bool) -> tuple[ApiToken, str]:
    """Store a new token for account `name`; the row and the plain token (shown once, never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=check_name(name), admin=admin, token_hash=hash_token(token))
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session, *, include_revoked: bool = False) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.name, ApiToken.created_at)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return list(session.scalars(query).all())


def revoke_tokens(session: Session, *, token_id: str | None = None, name: str | None = None) -> list[ApiToken]:
    """Revoke one token by id, or every live token of account `name`; the tokens revoked (an AuthError if none)."""
    query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    query = query.where(ApiToken.id == token_id) if token_id else query.where(ApiToken.name == name)
    rows = list(session.scalars(query).all())
    if not rows:
        raise AuthError(f"no live token {'with id ' + repr(token_id) if token_id else 'of account ' + repr(name)}")
    for row in rows:
        row.revoked_at = utcnow()
    return rows


def has_live_tokens(session: Session) -> bool:
    return session.scalar(select(ApiToken.id).where(ApiToken.revoked_at.is_(None)).limit(1)) is not None


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal a live token acts as; None for an unknown or revoked one."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.name, admin=row.admin)
