"""Fuzz the HTTP API with schemathesis, every check enabled, against a live `uvicorn` on loopback; count every
request the server answered (from its access log) and the 5xx among them.

    python bench/fuzz_api.py [--max-examples 100] [--max-time 600] [--seed 12] [--timeout 3000] [--out FILE.json]

Starts its own server (the API only, no worker; SQLite in a temporary data dir) on a free port with tokens
required, as beyond loopback (schemathesis sends an admin token, and checks that requests without one get 401),
migrates the database, runs `st run URL/openapi.json --checks all` with `bench/schemathesis.toml` (one
documented allowance: schema-valid bodies may name files or trials that are not on the server, a 422; the event
stream, which does not end while its job runs, is left to tests/service/test_events.py), and stops the server.
Exit status 0 only when schemathesis found no failure and the server answered no 5xx.
tests/service/test_schemathesis.py runs it in a short form.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
APP = "prunesearch.service.api.main:app_from_env"
# uvicorn's access log: `127.0.0.1:PORT - "GET /v1/jobs HTTP/1.1" 200 OK`
_ACCESS = re.compile(r'"[A-Z]+ \S+ HTTP/[\d.]+" (\d{3})')


@dataclass
class FuzzResult:
    returncode: int
    output: str
    statuses: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def _migrate(url: str) -> None:
    """The service's tables (in this process: the CLI's `db upgrade` would first import torch)."""
    from prunesearch.service.db import dispose_all, upgrade_schema

    upgrade_schema(url)
    dispose_all()


def _admin_token(url: str) -> str:
    """An admin token: the server requires tokens, as it does beyond loopback (the schema's security scheme)."""
    from prunesearch.service.auth import create_token
    from prunesearch.service.db import dispose_all, session_scope

    with session_scope(url) as session:
        _, token = create_token(session, name="fuzz", admin=True)
    dispose_all()
    return token


def _seeded(url: str, db_url: str, data_dir: Path, token: str) -> str:
    """A job on the bundled model with one claimed trial and a finished export of it (rows written directly: no
    worker runs), so that fuzzed requests reach the routes behind real ids; the config lines that hand those ids
    to half the generated requests."""
    from prunesearch.choices import ExportStatus
    from prunesearch.service import crud
    from prunesearch.service.db import dispose_all, session_scope

    body = json.dumps({"model": "tiny-llama", "calibration": "tiny-llama/calib.txt", "n_trials": 1}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{url}/v1/jobs", body, headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        job_id = json.loads(response.read())["id"]
    archive = data_dir / "exports" / "seeded.tar"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        tar.add(CONFIG, arcname="config.toml")
    with session_scope(db_url) as session:
        crud.get_job(session, job_id=job_id).trials_claimed = 1
        export = crud.create_export(session, job_id=job_id, trial=0, dtype="fp32", heal=None)
        export.status, export.path, export.size = ExportStatus.SUCCEEDED, str(archive), archive.stat().st_size
        export.sha256 = "0" * 64
        export_id = export.id
    dispose_all()
    return f"""
[dictionaries.jobs]
values = ["{job_id}"]

[dictionaries.exports]
values = ["{export_id}"]

[dictionaries.trials]
values = [0]

[parameters."path.job_id"]
dictionary = "jobs"
probability = 0.5

[parameters."path.export_id"]
dictionary = "exports"
probability = 0.5

[parameters."body.trial"]
dictionary = "trials"
probability = 0.5
"""


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def fuzz_api(
    work: Path, *, max_examples: int, seed: int, timeout_s: float, workers: int = 1, max_time: int | None = None
) -> FuzzResult:
    """Run schemathesis against a fresh server whose data lives in `work` (its `.hypothesis` folder too);
    `max_time`: seconds over which fuzzing and stateful testing repeat (None: each runs its examples once)."""
    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{work / 'data' / 'prunesearch.db'}"
    env = {
        **os.environ,
        "PRUNESEARCH_HOME": str(work),
        "PRUNESEARCH_DATA_DIR": str(work / "data"),
        "PRUNESEARCH_DATABASE_URL": db_url,
        "PRUNESEARCH_REQUIRE_TOKEN": "true",
    }
    _migrate(db_url)
    token = _admin_token(db_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    serve = [sys.executable, "-m", "uvicorn", "--factory", APP, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(serve, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        config = work / "schemathesis.toml"
        config.write_text(CONFIG.read_text() + _seeded(url, db_url, work / "data", token))
        st = Path(sys.executable).with_name("st")
        cmd = [str(st), "--no-color", "--config-file", str(config), "run", f"{url}/openapi.json"]
        cmd += ["--checks", "all", "--max-examples", str(max_examples), "--seed", str(seed)]
        # an unfinished job's event stream never ends by design (tests/service/test_events.py covers the route)
        cmd += ["--exclude-path", "/v1/jobs/{job_id}/events"]
        cmd += ["--workers", str(workers), "--request-timeout", "30", "-H", f"Authorization: Bearer {token}"]
        cmd += ["--max-time", str(max_time)] if max_time else []
        started = time.monotonic()
        try:
            run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout_s)
            returncode, output = run.returncode, run.stdout + run.stderr
        except subprocess.TimeoutExpired as exc:
            returncode, output = 124, f"schemathesis ran past {timeout_s} s\n{exc.stdout or ''}"
        seconds = time.monotonic() - started
    finally:
        _stop(server)
    statuses = collections.Counter(int(m.group(1)) for m in _ACCESS.finditer(log.read_text(errors="replace")))
    return FuzzResult(returncode, output, statuses, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-time", type=int, help="seconds over which fuzzing and stateful testing repeat")
    parser.add_argument("--timeout", type=float, default=3000, help="seconds schemathesis may run")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as tmp:
        result = fuzz_api(
            Path(tmp),
            max_examples=args.max_examples,
            seed=args.seed,
            timeout_s=args.timeout,
            workers=args.workers,
            max_time=args.max_time,
        )
    print(result.output[-4000:])
    figures = {
        "requests": result.requests,
        "server_errors": result.server_errors,
        "statuses": dict(sorted(result.statuses.items())),
        "schemathesis_exit": result.returncode,
        "seconds": round(result.seconds, 1),
        "max_examples": args.max_examples,
        "max_time": args.max_time,
        "seed": args.seed,
        "cpu": _cpu(),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if result.returncode == 0 and result.server_errors == 0 else 1


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else ():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
