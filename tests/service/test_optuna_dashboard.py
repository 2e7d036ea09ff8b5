"""optuna-dashboard reads the service's Optuna storage as it is: started on a finished job's SQLite database (the
service's own file, its tables beside Optuna's), its HTTP API lists the job's study and serves its trials."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import wait_for
from .finished_job import seed_finished_job, trial_plans

pytestmark = pytest.mark.slow  # optuna-dashboard takes seconds to import


def _dashboard_command() -> str:
    beside_python = Path(sys.executable).with_name("optuna-dashboard")
    found = str(beside_python) if beside_python.is_file() else shutil.which("optuna-dashboard")
    if found is None:
        pytest.fail("optuna-dashboard is not installed (it is a dev dependency: pip install -e '.[dev]')")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_optuna_dashboard_reads_a_finished_jobs_study(settings, processes, tmp_path):
    job_id = seed_finished_job(settings)
    port = _free_port()
    cmd = [_dashboard_command(), settings.db_url, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"]
    dashboard = processes.start(cmd, env=dict(os.environ), log=tmp_path / "dashboard.log")
    base = f"http://127.0.0.1:{port}"

    def studies():
        if dashboard.poll() is not None:
            pytest.fail(f"optuna-dashboard exited: {(tmp_path / 'dashboard.log').read_text()[-2000:]}")
        return _get(f"{base}/api/studies")

    listed = wait_for(studies, timeout=60)["study_summaries"]
    assert [s["study_name"] for s in listed] == [f"job-{job_id}"]
    assert listed[0]["directions"] == ["minimize", "minimize"]

    detail = _get(f"{base}/api/studies/{listed[0]['study_id']}")
    trials = detail["trials"]
    plans = trial_plans()
    assert len(trials) == len(plans) + 1
    assert [t["state"] for t in trials] == ["Complete"] * len(plans) + ["Fail"]
    attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
    assert attrs["baseline"] == "dense" and json.loads(attrs["plan"]) == plans[0][1].to_dict()
    assert len(detail["best_trials"]) >= 2  # the dashboard computes the same kind of two-objective front
    study_attrs = {a["key"] for a in detail["user_attrs"]}
    assert "heal_candidates" in study_attrs
