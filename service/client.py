"""A small synchronous HTTP client for the service (used by the CLI and the end-to-end tests)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from httpx_sse import SSEError, connect_sse

DEFAULT_SERVER = "http://127.0.0.1:8000"
# The server sends a keep-alive comment every 15 s: a stream silent for longer than this has broken off.
EVENTS_READ_TIMEOUT_S = 60.0


class JobEvent(NamedTuple):
    """One Server-Sent Event of a job: its number (the SSE id), kind (`EventKind`) and data."""

    id: int
    kind: str
    data: dict[str, Any]


class ServiceError(RuntimeError):
    """The server refused a request; the message is the server's, `status` its HTTP code (None: unreachable)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def default_server() -> str:
    return os.environ.get("PRUNESEARCH_SERVER", DEFAULT_SERVER)


def default_token() -> str | None:
    return os.environ.get("PRUNESEARCH_TOKEN") or None


class Client:
    """One method per endpoint the CLI uses; `token`: an API token, sent as `Authorization: Bearer` (None: no
    token, which a server on loopback accepts as its local admin)."""

    def __init__(self, server: str | None = None, timeout: float = 30.0, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server or default_server(), timeout=timeout, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {self.http.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ServiceError(f"{response.status_code}: {_message(response)}", response.status_code)
        return response.json() if response.content else None

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def pareto(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/pareto")

    def export(self, job_id: str, trial: int, dtype: str, heal: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue an export of `trial`; `heal`: heal options (`HealOptions` fields), None for no heal."""
        body = {"trial": trial, "dtype": dtype} | ({"heal": heal} if heal is not None else {})
        return self._call("POST", f"/v1/jobs/{job_id}/exports", json=body)

    def export_status(self, export_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/exports/{export_id}")

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[JobEvent]:
        """The job's events as they happen (`GET /v1/jobs/{id}/events`), after `last_event_id` when given;
        ends when the job is done. Raises `ServiceError` when the stream cannot open or breaks off."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        timeout = httpx.Timeout(self.http.timeout.connect, read=EVENTS_READ_TIMEOUT_S)
        try:
            with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise ServiceError(f"{source.response.status_code}: {_message(source.response)}")
                for sse in source.iter_sse():
                    if sse.data:  # an empty one is what httpx-sse makes of a keep-alive comment
                        yield JobEvent(int(sse.id), sse.event, sse.json())
        except (httpx.HTTPError, SSEError, ValueError) as exc:
            raise ServiceError(f"event stream of job {job_id} broke off: {exc}") from None

    def upload(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as f:
            return self._call("POST", "/v1/datasets", files={"file": (path.name, f)})

    def download(self, export_id: str, out_dir: Path) -> dict[str, Any]:
        """Stream the archive, check its sha256 against the server's, and unpack it into `out_dir`."""
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = out_dir / f".{export_id}.tar"
        digest = hashlib.sha256()
        with self.http.stream("GET", f"/v1/exports/{export_id}/download") as response:
            if response.status_code >= 400:
                response.read()
                raise ServiceError(f"{response.status_code}: {_message(response)}")
            expected = response.headers.get("X-Checksum-SHA256", "")
            with archive.open("wb") as f:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    f.write(chunk)
        if digest.hexdigest() != expected:
            archive.unlink()
            raise ServiceError(f"sha256 mismatch: got {digest.hexdigest()}, server says {expected}")
        with tarfile.open(archive) as tar:
            tar.extractall(out_dir, filter="data")
        size = archive.stat().st_size
        archive.unlink()
        return {"export": export_id, "dir": str(out_dir), "size": size, "sha256": expected}


def _message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
    return str(detail)
