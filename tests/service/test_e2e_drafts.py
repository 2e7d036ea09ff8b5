"""A draft job end to end with a real worker process on the bundled tiny model, on SQLite and PostgreSQL:
`POST /v1/jobs` with `objectives.speculative`, the search, the trials and front, then exports through the
service's staged export: each carries `speculative.json` with its target's fingerprint, and a draft trial's
export (its draft metrics written here, as a draft search records them) carries exactly those metrics.
A draft exported with its vocabulary whole runs as `assistant_model` of its target and reproduces the target's
greedy output."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prunesearch.pruning.export import SPECULATIVE_FILE, TOKEN_MAP_FILE
from prunesearch.pruning.stats import model_fingerprint
from prunesearch.service.db import session_scope
from prunesearch.service.models import Job
from prunesearch.service.settings import BUNDLED_EXAMPLES

from ..draft_trials import DRAFT_METRICS, add_draft_trial, draft_plan, draft_spec_dict
from .conftest import wait_for
from .test_e2e import _client, _finished

pytestmark = pytest.mark.slow
DRAFT_FIELDS = ("acceptance", "lookahead", "draft_ms", "target_ms", "coverage")


def _export(client, job_id: str, trial: int, out) -> dict:
    """Export trial `trial` through the service, download and untar it; its speculative.json."""
    export = client.export(job_id, trial, "fp32")
    done = wait_for(lambda: (e := client.export_status(export["id"]))["status"] in ("succeeded", "failed") and e)
    assert done["status"] == "succeeded", done
    client.download(export["id"], out)
    return json.loads((out / SPECULATIVE_FILE).read_text())


def _draft_job_end_to_end(settings, processes, tmp_path) -> None:
    api, client = _client(settings)
    with api:
        processes.worker(settings, "--max-idle", "60", log=tmp_path / "worker.log")
        job = client.submit(draft_spec_dict(lookahead="search", temperature=0.0))
        done = _finished(api, job["id"])
        assert done["status"] == "succeeded", (done, (tmp_path / "worker.log").read_text()[-3000:])
        assert done["trials_done"] == 4 and done["front_size"] >= 1
        assert done["draft"]["lookahead"] == "search" and done["draft"]["target"] == done["spec"]["model"]
        front = client.pareto(job["id"])["front"]
        trials = {t["trial"]: t for t in api.get(f"/v1/jobs/{job['id']}/trials").json()["items"]}

        # A trial the search found: its speculative.json says what the search recorded of it (null where the
        # trial has no draft metrics).
        found = front[0]
        draft = _export(client, job["id"], found["trial"], tmp_path / "found")
        metrics = trials[found["trial"]]["metrics"]
        assert draft["target"]["path"] == str(BUNDLED_EXAMPLES.resolve()) and len(draft["target"]["fingerprint"]) == 64
        assert all(draft[k] == metrics.get(k) for k in DRAFT_FIELDS)  # lookahead "search": no fixed fallback
        assert draft["predicted_speedup"] == metrics.get("speedup") and draft["format"] == 1
        assert (draft["temperature"], draft["hardware"], draft["engine"]) == (0.0, "h100-sxm", "graphs")
        assert (draft["token_map"] == TOKEN_MAP_FILE) == (tmp_path / "found" / TOKEN_MAP_FILE).is_file()

        # A draft trial with the metrics a draft search records, written into the job's study.
        with session_scope(settings.db_url) as session:
            study_name = session.get(Job, job["id"]).study_name
        study = optuna.load_study(study_name=study_name, storage=settings.db_url)
        number = add_draft_trial(study, draft_plan(kept_layers=2, vocab=None))
        fingerprint = draft["target"]["fingerprint"]
        draft = _export(client, job["id"], number, tmp_path / "draft")
        assert draft == {
            "target": {"path": str(BUNDLED_EXAMPLES.resolve()), "fingerprint": fingerprint},
            "acceptance": DRAFT_METRICS["acceptance"],
            "lookahead": DRAFT_METRICS["lookahead"],
            "temperature": 0.0,
            "predicted_speedup": DRAFT_METRICS["speedup"],
            "draft_ms": DRAFT_METRICS["draft_ms"],
            "target_ms": DRAFT_METRICS["target_ms"],
            "coverage": DRAFT_METRICS["coverage"],
            "hardware": "h100-sxm",
            "engine": "graphs",
            "token_map": None,
            "format": 1,
        }
        card = (tmp_path / "draft" / "README.md").read_text()
        assert "draft model for speculative decoding with the target `tiny-llama`" in card
    _assists_its_target(tmp_path / "draft")


def _assists_its_target(draft_dir) -> None:
    """The target loaded as a user would has the fingerprint `speculative.json` names; with the model card's
    snippet (shared vocabulary) assisted greedy decoding gives the target's own output."""
    target = AutoModelForCausalLM.from_pretrained(BUNDLED_EXAMPLES)
    speculative = json.loads((draft_dir / SPECULATIVE_FILE).read_text())
    assert model_fingerprint(target) == speculative["target"]["fingerprint"]  # a user can check the target
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_EXAMPLES)
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, trust_remote_code=True)
    draft.generation_config.num_assistant_tokens = 4
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    inputs = tokenizer("The module", return_tensors="pt")
    with torch.no_grad():
        plain = target.generate(**inputs, max_new_tokens=12, do_sample=False)
        assisted = target.generate(**inputs, assistant_model=draft, max_new_tokens=12, do_sample=False)
    assert assisted.tolist() == plain.tolist()


def test_a_draft_job_end_to_end_on_sqlite(settings, processes, tmp_path):
    _draft_job_end_to_end(settings, processes, tmp_path)


def test_a_draft_job_end_to_end_on_postgresql(pg_settings, processes, tmp_path):
    _draft_job_end_to_end(pg_settings, processes, tmp_path)
