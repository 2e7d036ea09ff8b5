"""Accounts and API tokens: `prunesearch token`, 401s with a challenge, tokens required beyond loopback and
optional on it, and the client sending its token."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from prunesearch.cli import main
from prunesearch.cliutil import CLIError
from prunesearch.service.api.main import create_app
from prunesearch.service.auth import LOCAL_OWNER, authenticate, create_token, hash_token, is_loopback
from prunesearch.service.cli import guard_listen
from prunesearch.service.db import get_engine, session_scope

from ..fake_backend import FakeBackend
from .conftest import job_body
from .livehttp import live_server


def _token(settings, name: str, admin: bool = False) -> str:
    with session_scope(settings.db_url) as session:
        return create_token(session, name=name, admin=admin)[1]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_create_list_revoke(settings, capsys):
    db = ("--database-url", settings.db_url)
    code, out, err = _cli(capsys, "token", "create", "--name", "alice", *db)
    created = json.loads(out)
    assert code == 0 and created["token"].startswith("ps_") and len(created["token"]) > 40 and "only its hash" in err
    assert (created["name"], created["admin"]) == ("alice", False)
    admin = json.loads(_cli(capsys, "token", "create", "--name", "root", "--admin", *db)[1])
    with get_engine(settings.db_url).connect() as conn:
        stored = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM ps_tokens"))]
    assert created["token"] not in repr(stored) and hash_token(created["token"]) in repr(stored)  # hash only
    listed = json.loads(_cli(capsys, "token", "list", *db)[1])
    assert [(t["name"], t["admin"]) for t in listed] == [("alice", False), ("root", True)]
    assert all("token" not in t for t in listed)
    assert _cli(capsys, "token", "revoke", created["id"], *db)[0] == 0
    assert [t["name"] for t in json.loads(_cli(capsys, "token", "list", *db)[1])] == ["root"]
    assert len(json.loads(_cli(capsys, "token", "list", "--all", *db)[1])) == 2
    with session_scope(settings.db_url) as session:
        assert authenticate(session, created["token"]) is None
        assert authenticate(session, admin["token"]).admin
    assert _cli(capsys, "token", "revoke", "--name", "root", *db)[0] == 0
    assert json.loads(_cli(capsys, "token", "list", *db)[1]) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--name", "local"], "without a token"),
        (["create", "--name", "a b"], "account name"),
        (["create", "--name=-x"], "account name"),
        (["revoke", "no-such-id"], "no live token"),
        (["revoke", "--name", "nobody"], "no live token"),
        (["revoke"], "a token id or --name"),
    ],
)
def test_token_mistakes_are_one_line_errors(settings, capsys, argv, message):
    code, _, err = _cli(capsys, "token", *argv, "--database-url", settings.db_url)
    assert code == 2 and message in err


def test_token_needs_a_migrated_database(tmp_path, capsys):
    code, _, err = _cli(capsys, "token", "list", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}")
    assert code == 2 and "db upgrade" in err


def test_bad_revoked_or_malformed_tokens_get_401_with_a_challenge(settings):
    alice = _token(settings, "alice")
    api = TestClient(create_app(settings, backend=FakeBackend()))
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    with session_scope(settings.db_url) as session:
        from prunesearch.service.auth import revoke_tokens

        revoke_tokens(session, name="alice")
    for header, error in [
        (f"Bearer {alice}", "invalid_token"),  # revoked
        ("Bearer ps_not-a-token", "invalid_token"),
        ("Basic YWxpY2U6eA==", "invalid_request"),
        ("Bearer", "invalid_request"),
    ]:
        response = api.get("/v1/jobs", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert (
            response.headers["www-authenticate"].startswith("Bearer") and error in response.headers["www-authenticate"]
        )
        assert response.json()["detail"]


def test_where_tokens_are_required_only_health_and_docs_are_open(settings):
    token = _token(settings, "alice")
    strict = settings.model_copy(update={"require_token": True})
    api = TestClient(create_app(strict, backend=FakeBackend()))
    for path in ("/v1/jobs", "/v1/hardware", "/v1/exports/00000000-0000-0000-0000-000000000000"):
        response = api.get(path)
        assert response.status_code == 401 and "requires an API token" in response.json()["detail"], path
        assert response.headers["www-authenticate"] == 'Bearer realm="prunesearch"'
    assert api.post("/v1/jobs", json=job_body()).status_code == 401
    assert api.post("/v1/datasets", files={"file": ("a.txt", b"text")}).status_code == 401
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert api.get(path).status_code == 200, path
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert "token" in api.get("/openapi.json").json()["components"]["securitySchemes"]


def test_on_loopback_no_token_is_the_local_admin(settings):
    alice = _token(settings, "alice")
    api = TestClient(create_app(settings, backend=FakeBackend()))
    theirs = api.post("/v1/jobs", json=job_body(), headers={"Authorization": f"Bearer {alice}"}).json()
    mine = api.post("/v1/jobs", json=job_body()).json()
    assert (theirs["owner"], mine["owner"]) == ("alice", LOCAL_OWNER)
    assert {j["id"] for j in api.get("/v1/jobs").json()["items"]} == {theirs["id"], mine["id"]}
    assert api.get(f"/v1/jobs/{theirs['id']}").json()["spec"]["model"].startswith("/")  # an admin's view


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_beyond_loopback_needs_a_token_and_then_requires_them(settings, capsys):
    with pytest.raises(CLIError, match="token create"):
        guard_listen("0.0.0.0", settings)
    assert guard_listen("127.0.0.1", settings).require_token is False
    _token(settings, "root", admin=True)
    assert guard_listen("0.0.0.0", settings).require_token is True
    # The command refuses before it binds anything (a fresh data dir has no tokens).
    fresh = str(settings.data_dir.parent / "fresh")
    code, _, err = _cli(capsys, "serve", "--host", "0.0.0.0", "--port", "1", "--no-worker", "--data-dir", fresh)
    assert code == 2 and "refusing to listen on 0.0.0.0" in err


def test_client_commands_send_the_token_from_the_flag_or_the_environment(settings, tmp_path, capsys, monkeypatch):
    token = _token(settings, "alice")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job_body()))
    strict = settings.model_copy(update={"require_token": True})
    with live_server(create_app(strict, backend=FakeBackend())) as url:
        code, _, err = _cli(capsys, "submit", str(spec), "--server", url)
        assert code == 2 and "401" in err and "requires an API token" in err
        code, out, _ = _cli(capsys, "submit", str(spec), "--server", url, "--token", token)
        assert code == 0
        job_id = json.loads(out)["id"]
        monkeypatch.setenv("PRUNESEARCH_TOKEN", token)
        code, out, _ = _cli(capsys, "status", job_id, "--server", url)
        assert code == 0 and json.loads(out)["owner"] == "alice"
