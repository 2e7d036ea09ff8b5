"""Heal through the service end to end, with real worker processes and the real search on the bundled tiny model:
search, export with a heal, follow its progress, download the healed checkpoint, load it and generate; on SQLite
and PostgreSQL. A worker killed mid-heal: the next attempt resumes at the dead worker's last saved step."""

from __future__ import annotations

import json

import pytest

from .conftest import job_body, wait_for
from .test_e2e import _client, _finished, _load_and_generate

pytestmark = pytest.mark.slow
FINAL = ("succeeded", "failed")


def _searched_trial(api, client, settings, processes, tmp_path) -> tuple[dict, int]:
    processes.worker(settings, "--max-idle", "120", "--threads", "1", log=tmp_path / "worker.log")
    job = client.submit(job_body(n_trials=3))
    done = _finished(api, job["id"])
    assert done["status"] == "succeeded", (tmp_path / "worker.log").read_text()[-3000:]
    front = client.pareto(job["id"])["front"]
    return job, min(front, key=lambda r: r["metrics"]["latency_ms"])["trial"]


def _heal_download_load(settings, processes, tmp_path) -> None:
    api, client = _client(settings)
    with api:
        job, trial = _searched_trial(api, client, settings, processes, tmp_path)
        heal = {"tokens": 4096, "seq_len": 64, "batch": 8, "method": "lora"}
        export = client.export(job["id"], trial, "fp32", heal=heal)
        assert export["heal"]["tokens"] == 4096 and export["heal"]["data"] == job["spec"]["calibration"]
        done = wait_for(lambda: (e := client.export_status(export["id"]))["status"] in FINAL and e)
        assert done["status"] == "succeeded", (done["error"], (tmp_path / "worker.log").read_text()[-3000:])
        assert done["progress"] | {"loss": 0} == {
            "phase": "archiving",
            "step": 8,
            "total": 8,
            "loss": 0,
            "tokens_per_s": done["progress"]["tokens_per_s"],
        }
        (scores,) = done["summary"]["heal"]["eval"].values()
        assert set(scores) == {"before", "after"}
        client.download(export["id"], tmp_path / "healed")
        provenance = json.loads((tmp_path / "healed" / "provenance.json").read_text())
        assert provenance["heals"][0]["settings"]["method"] == "lora" and provenance["heals"][0]["steps"] == 8
        _load_and_generate(tmp_path / "healed")
        names = sorted(p.name for p in settings.export_root.iterdir())
        assert names == [f"{export['id']}-1", f"{export['id']}-1.tar"]


def test_heal_through_the_service_on_sqlite(settings, processes, tmp_path):
    _heal_download_load(settings, processes, tmp_path)


def test_heal_through_the_service_on_postgresql(pg_settings, processes, tmp_path):
    _heal_download_load(pg_settings, processes, tmp_path)


def test_a_heal_whose_worker_died_resumes_in_the_next_attempt(settings, processes, tmp_path):
    api, client = _client(settings)
    with api:
        job, trial = _searched_trial(api, client, settings, processes, tmp_path)
        processes.stop_all()
        first = processes.worker(settings, "--threads", "1", log=tmp_path / "first.log")
        export = client.export(job["id"], trial, "fp32", heal={"steps": 100, "seq_len": 64, "batch": 4})
        # Progress shows while it heals; it saves its state every 5 steps (100 / HEAL_CHECKPOINTS).
        seen = wait_for(lambda: ((client.export_status(export["id"])["progress"] or {}).get("step") or 0) >= 10)
        assert seen
        first.kill()
        first.wait(timeout=30)
        killed_at = client.export_status(export["id"])["progress"]
        assert killed_at["phase"] == "healing" and 10 <= killed_at["step"] < 100, killed_at
        lease = {"PRUNESEARCH_LEASE_S": "2"}
        processes.worker(settings, "--max-idle", "60", "--threads", "1", log=tmp_path / "second.log", env=lease)
        done = wait_for(lambda: (e := client.export_status(export["id"]))["status"] in FINAL and e)
        assert done["status"] == "succeeded", (done["error"], (tmp_path / "second.log").read_text()[-3000:])
        heal = done["summary"]["heal"]
        assert heal["steps"] == 100 and heal["resumed_from"] >= 5 and heal["resumed_from"] % 5 == 0
        names = sorted(p.name for p in settings.export_root.iterdir())
        assert names == [f"{export['id']}-2", f"{export['id']}-2.tar"]  # attempt 1's files and the state: gone
