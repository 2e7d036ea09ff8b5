"""End to end with real worker processes and the real search engine on the bundled tiny model: submit,
poll, Pareto, export, download, untar, load with transformers, generate; on SQLite and PostgreSQL; two
workers on one PostgreSQL job stop at exactly n_trials."""

from __future__ import annotations

import signal

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from transformers import AutoModelForCausalLM, AutoTokenizer

from prunesearch.service.api.main import create_app
from prunesearch.service.client import Client
from prunesearch.service.db import session_scope
from prunesearch.service.models import Job

from .conftest import job_body, wait_for

pytestmark = pytest.mark.slow
FINAL = ("succeeded", "failed", "cancelled")


def _client(settings) -> tuple[TestClient, Client]:
    api = TestClient(create_app(settings))
    client = Client("http://testserver")
    client.http = api
    return api, client


def _finished(api: TestClient, job_id: str, timeout: float = 180) -> dict:
    return wait_for(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["status"] in FINAL and j, timeout)


def _search_export_download(settings, processes, tmp_path, n_trials: int = 5) -> dict:
    api, client = _client(settings)
    with api:
        processes.worker(settings, "--max-idle", "60", log=tmp_path / "worker.log")
        job = client.submit(job_body(n_trials=n_trials))
        running = wait_for(lambda: (j := client.job(job["id"]))["trials_done"] > 0 and j)
        assert running["status"] in ("running", "succeeded")
        done = _finished(api, job["id"])
        assert done["status"] == "succeeded", (done, (tmp_path / "worker.log").read_text()[-3000:])
        assert done["trials_done"] == n_trials and done["front_size"] >= 1
        front = client.pareto(job["id"])["front"]
        assert front and {"kl", "latency_ms"} <= set(front[0]["metrics"])
        page = api.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 100}).json()
        trials = page["items"]
        finished_trials = [t for t in trials if t["state"] in ("complete", "fail")]
        assert len(finished_trials) == n_trials  # enqueued baselines not reached stay "waiting"
        assert page["total"] == len(trials)
        second = api.get(f"/v1/jobs/{job['id']}/trials", params={"offset": 1, "limit": 2}).json()
        assert second["items"] == trials[1:3] and second["total"] == page["total"]
        smallest = min(front, key=lambda r: r["metrics"]["latency_ms"])
        export = client.export(job["id"], smallest["trial"], "fp32")
        final = ("succeeded", "failed")
        finished = wait_for(lambda: (e := client.export_status(export["id"]))["status"] in final and e)
        assert finished["status"] == "succeeded", finished
        result = client.download(export["id"], tmp_path / "ckpt")
        assert result["sha256"] == finished["sha256"] and result["size"] == finished["size"]
        _load_and_generate(tmp_path / "ckpt")
        return done


def _load_and_generate(path) -> None:
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("The module", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8


def test_end_to_end_on_sqlite(settings, processes, tmp_path):
    _search_export_download(settings, processes, tmp_path)


def test_end_to_end_on_postgresql(pg_settings, processes, tmp_path):
    _search_export_download(pg_settings, processes, tmp_path)


def test_two_workers_share_one_job_and_stop_at_n_trials(pg_settings, processes, tmp_path):
    n_trials = 12
    api, client = _client(pg_settings)
    with api:
        job = client.submit(job_body(n_trials=n_trials, parallelism=2))
        for i in range(2):
            processes.worker(pg_settings, "--max-idle", "60", log=tmp_path / f"worker{i}.log")
        wait_for(lambda: client.job(job["id"])["active_workers"] == 2, timeout=60)
        done = _finished(api, job["id"])
        assert done["status"] == "succeeded"
        trials = api.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 100}).json()["items"]
        finished_trials = [t for t in trials if t["state"] in ("complete", "fail")]
        assert len(finished_trials) == n_trials == done["trials_done"]
        assert not [t for t in trials if t["state"] == "running"]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all(f"claimed job {job['id']}" in log for log in logs)


def test_cancel_stops_a_running_job_between_trials(settings, processes, tmp_path):
    api, client = _client(settings)
    with api:
        processes.worker(settings, "--max-idle", "60", log=tmp_path / "worker.log")
        job = client.submit(job_body(n_trials=200))
        wait_for(lambda: client.job(job["id"])["trials_done"] > 0)
        assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        done = _finished(api, job["id"], timeout=60)
        assert done["status"] == "cancelled" and done["trials_done"] < 200
        assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204


def test_sigterm_leaves_the_job_queued_for_another_worker(settings, processes, tmp_path):
    api, client = _client(settings)
    with api:
        worker = processes.worker(settings, log=tmp_path / "worker.log")
        job = client.submit(job_body(n_trials=200))
        wait_for(lambda: client.job(job["id"])["trials_done"] > 0)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        after = client.job(job["id"])
        assert (after["status"], after["active_workers"]) == ("queued", 0)
        assert 0 < after["trials_done"] < 200 and after["error"] is None
        assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_a_dead_workers_running_trial_is_failed_and_run_again(settings, processes, tmp_path):
    """A worker killed mid-trial leaves its Optuna trial RUNNING; the worker that recovers the job fails it
    (marked abandoned, not counted) and still finishes exactly n_trials."""
    api, client = _client(settings)
    with api:
        first = processes.worker(settings, log=tmp_path / "first.log")
        job = client.submit(job_body(n_trials=12))
        wait_for(lambda: client.job(job["id"])["trials_done"] > 0)
        first.kill()
        first.wait(timeout=30)
        with session_scope(settings.db_url) as session:
            study_name = session.get(Job, job["id"]).study_name
        optuna.load_study(study_name=study_name, storage=settings.db_url).ask()  # the trial it was running
        lease = {"PRUNESEARCH_LEASE_S": "2"}
        processes.worker(settings, "--max-idle", "60", log=tmp_path / "second.log", env=lease)
        done = _finished(api, job["id"])
        assert done["status"] == "succeeded" and done["trials_done"] == 12, (tmp_path / "second.log").read_text()
    trials = optuna.load_study(study_name=study_name, storage=settings.db_url).get_trials(deepcopy=False)
    abandoned = [t for t in trials if t.user_attrs.get("abandoned")]
    assert abandoned and all(t.state == TrialState.FAIL for t in abandoned)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.state.is_finished() and not t.user_attrs.get("abandoned") for t in trials) == 12


def _search_and_heal(settings, processes, tmp_path) -> None:
    api, client = _client(settings)
    heal = {"top_k": 2, "tokens": 128, "seq_len": 32, "batch": 2}
    with api:
        processes.worker(settings, "--max-idle", "60", log=tmp_path / "worker.log")
        job = client.submit(job_body(n_trials=6, heal=heal))
        done = _finished(api, job["id"])
        assert done["status"] == "succeeded", (done, (tmp_path / "worker.log").read_text()[-3000:])
        status = done["heal"]
        assert len(status["candidates"]) == 2 and status["healed"] == status["candidates"]
        assert status["current"] is None
        pareto = client.pareto(job["id"])
        healed = pareto["healed_front"]
        assert healed and {r["trial"] for r in healed} <= set(status["candidates"])
        front = {r["trial"]: r for r in pareto["front"]}
        for record in healed:
            assert record["metrics"] == front[record["trial"]]["metrics"]  # joined to its proxy point
            assert record["healed"]["healed_kl"] >= 0 and record["healed"]["steps"] == 2  # 128 tokens, 2 x 32 a step
        plain = client.submit(job_body(n_trials=2))
        finished = _finished(api, plain["id"])
        assert "heal" not in finished and client.pareto(plain["id"])["healed_front"] == []


def test_heal_stage_end_to_end_on_sqlite(settings, processes, tmp_path):
    _search_and_heal(settings, processes, tmp_path)


def test_heal_stage_end_to_end_on_postgresql(pg_settings, processes, tmp_path):
    _search_and_heal(pg_settings, processes, tmp_path)


def test_two_workers_heal_each_candidate_once(pg_settings, processes, tmp_path):
    """With parallelism 2 the stage runs after every trial has finished, each candidate is healed once, and
    the job succeeds only once they are all healed."""
    api, client = _client(pg_settings)
    heal = {"top_k": 3, "tokens": 128, "seq_len": 32, "batch": 2}
    with api:
        job = client.submit(job_body(n_trials=10, parallelism=2, heal=heal))
        for i in range(2):
            processes.worker(pg_settings, "--max-idle", "60", log=tmp_path / f"worker{i}.log")
        done = _finished(api, job["id"])
        assert done["status"] == "succeeded" and done["trials_done"] == 10
        assert len(done["heal"]["candidates"]) == 3 and done["heal"]["healed"] == done["heal"]["candidates"]
        assert client.pareto(job["id"])["healed_front"]
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    for trial in done["heal"]["candidates"]:
        assert logs.count(f"healed trial {trial} of ") == 1, logs[-3000:]
