"""`prunesearch token create|list|revoke`: API tokens, managed on the server's database (like `db`, not over
HTTP: whoever can reach the database is its administrator)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from prunesearch import migrations
from prunesearch.cliutil import CLIError, print_json

from .auth import AuthError, create_token, list_tokens, revoke_tokens
from .db import session_scope
from .models import ApiToken
from .settings import Settings


def register(
    subparsers: argparse._SubParsersAction,
    server_options: Callable[[argparse.ArgumentParser], None],
    settings_from: Callable[[argparse.Namespace], Settings],
) -> None:
    """Add `token` with its actions; `server_options` adds `--database-url`/`--data-dir`, which `settings_from`
    reads."""
    token = subparsers.add_parser("token", help="create, list and revoke the API's tokens (accounts)")
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new token for account NAME, printed once")
    create.add_argument("--name", required=True, help="the account (owner) the token acts as")
    create.add_argument("--admin", action="store_true", help="may see and manage every owner's jobs")
    listing = actions.add_parser("list", help="the live tokens (never the tokens themselves)")
    listing.add_argument("--all", action="store_true", help="revoked ones too")
    revoke = actions.add_parser("revoke", help="revoke one token by id, or every token of --name")
    revoke.add_argument("token_id", nargs="?", help="a token id from `token list`")
    revoke.add_argument("--name", default=None, help="revoke every live token of this account")
    for parser in (create, listing, revoke):
        server_options(parser)
        parser.set_defaults(handler=lambda args: _token(args, settings_from(args).db_url))


def _token(args: argparse.Namespace, url: str) -> None:
    if migrations.current(url) is None:
        raise CLIError(f"database {url} has no prunesearch schema: run `prunesearch db upgrade`")
    try:
        with session_scope(url, immediate=True) as session:
            {"create": _create, "list": _list, "revoke": _revoke}[args.action](session, args)
    except AuthError as exc:
        raise CLIError(str(exc)) from None


def _create(session, args: argparse.Namespace) -> None:
    row, token = create_token(session, name=args.name, admin=args.admin)
    session.commit()
    print_json(_public(row) | {"token": token})
    note = "Keep the token now: only its hash is stored. Clients send it as `--token` or $PRUNESEARCH_TOKEN."
    print(note, file=sys.stderr)


def _list(session, args: argparse.Namespace) -> None:
    print_json([_public(row) for row in list_tokens(session, include_revoked=args.all)])


def _revoke(session, args: argparse.Namespace) -> None:
    if bool(args.token_id) == bool(args.name):
        raise CLIError("give a token id or --name (one of them)")
    print_json([_public(row) for row in revoke_tokens(session, token_id=args.token_id, name=args.name)])


def _public(row: ApiToken) -> dict:
    revoked = row.revoked_at.isoformat() if row.revoked_at else None
    return {
        "id": row.id,
        "name": row.name,
        "admin": row.admin,
        "created_at": row.created_at.isoformat(),
        "revoked_at": revoked,
    }
