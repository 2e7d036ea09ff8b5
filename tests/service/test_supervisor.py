"""`prunesearch serve` restarts its worker when it dies, and `/readyz` says so: 503 while it is down, then
{"worker": "restarted", "restarts": N}."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from prunesearch.service.api.main import create_app
from prunesearch.service.supervisor import WorkerSupervisor

from .conftest import wait_for
from .test_serve_cli import _free_port, _up


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_a_dead_worker_is_restarted_and_readyz_reports_it(settings):
    supervisor = WorkerSupervisor(_sleeper, poll_s=0.05).start()
    app = create_app(settings)
    app.state.worker_supervisor = supervisor
    try:
        with TestClient(app) as api:
            ready = api.get("/readyz").json()
            assert (ready["worker"], ready["restarts"]) == ("running", 0)
            first = supervisor.process
            first.kill()
            first.wait()
            down = api.get("/readyz")  # the restart waits a second after a quick death
            assert down.status_code == 503 and "worker down" in down.json()["detail"]
            ready = wait_for(lambda: (r := api.get("/readyz")).status_code == 200 and r.json(), timeout=20)
            assert (ready["worker"], ready["restarts"]) == ("restarted", 1)
            assert supervisor.process.pid != first.pid and supervisor.process.poll() is None
    finally:
        supervisor.stop(timeout=5)
    assert supervisor.process.poll() is not None  # stopping the supervisor stops its worker, for good
    assert supervisor.status() == {"worker": "down", "restarts": 1}


def test_readyz_without_a_supervised_worker_says_nothing_of_workers(api):
    assert set(api.get("/readyz").json()) == {"status", "schema"}


@pytest.mark.slow
def test_serve_restarts_its_killed_worker(tmp_path, processes):
    port, log = _free_port(), tmp_path / "serve.log"
    env = {**os.environ, "PRUNESEARCH_POLL_S": "0.2"}
    cmd = [sys.executable, "-m", "prunesearch.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    processes.start(cmd, env=env, log=log)
    server = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(server), timeout=60)
    assert httpx.get(f"{server}/readyz").json()["worker"] == "running"
    worker_pid = int(log.read_text().split("worker pid ")[1].split(")")[0])
    os.kill(worker_pid, signal.SIGKILL)
    ready = wait_for(lambda: _up(server) and httpx.get(f"{server}/readyz").json(), timeout=60)
    assert (ready["worker"], ready["restarts"]) == ("restarted", 1)
    restarted = int(
        wait_for(lambda: "restarted as pid " in log.read_text() and log.read_text(), 10)
        .split("restarted as pid ")[1]
        .split()[0]
    )
    assert restarted != worker_pid
    os.kill(restarted, 0)  # alive
    processes.stop_all()
    with pytest.raises(ProcessLookupError):
        os.kill(restarted, 0)
