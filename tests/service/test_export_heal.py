"""Healed exports through the worker's exporter, in one process: a fake search whose trials export the bundled
tiny Llama pruned by a fixed plan, healed by distillation from the job's model. The archive holds the healed
checkpoint and its provenance, the progress is stored, a failure leaves no files, and an attempt that a later
one took over stops."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from prunesearch.pruning import heal as heal_module
from prunesearch.pruning import healio
from prunesearch.pruning.healsettings import HealProgress
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import PrunePlan
from prunesearch.service import crud
from prunesearch.service.api.main import create_app
from prunesearch.service.db import session_scope
from prunesearch.service.settings import BUNDLED_EXAMPLES
from prunesearch.service.worker.claims import claim_export
from prunesearch.service.worker.exportprogress import ExportProgress, ExportTakenOver
from prunesearch.service.worker.loop import Worker

from ..fake_backend import FakeBackend
from .conftest import job_body

PLAN = PrunePlan.from_dict({"version": 1, "layers": [{"heads": 2, "ffn": 128}] * 4, "vocab": None})
HEAL = {"steps": 6, "seq_len": 64, "batch": 4, "lr": 1e-3}


class PrunesTinyLlama(FakeBackend):
    """Made-up trials, but each exports a real pruned checkpoint of the bundled model (as the engine would)."""

    def export_trial(self, study_name: str, trial: int, out_dir: Path, *, dtype: str = "fp32") -> dict:
        calibration = ImportanceCalibration(path=BUNDLED_EXAMPLES / "calib.txt", seq_len=64, max_tokens=1024)
        return prune_checkpoint(BUNDLED_EXAMPLES, PLAN, out_dir, calibration=calibration, dtype=dtype) | {
            "trial": trial
        }


@pytest.fixture
def backend() -> PrunesTinyLlama:
    return PrunesTinyLlama()


@pytest.fixture
def service(settings, backend, prunesearch_home):
    with TestClient(create_app(settings, backend=backend)) as client:
        yield client


def _export_and_run(service, settings, backend, heal: dict, dtype: str = "fp32") -> dict:
    job = service.post("/v1/jobs", json=job_body(n_trials=2)).json()
    Worker(settings, max_idle_s=0.0, backend=backend).run()
    body = {"trial": 1, "heal": heal, "dtype": dtype}
    export = service.post(f"/v1/jobs/{job['id']}/exports", json=body).json()
    Worker(settings, max_idle_s=0.0, backend=backend).run()
    return service.get(f"/v1/exports/{export['id']}").json()


def test_a_healed_export_archives_the_healed_checkpoint_and_its_provenance(service, settings, backend, tmp_path):
    done = _export_and_run(service, settings, backend, HEAL)
    assert done["status"] == "succeeded", done["error"]
    progress = done["progress"]
    assert (progress["phase"], progress["step"], progress["total"]) == ("archiving", 6, 6)
    assert progress["loss"] > 0 and progress["tokens_per_s"] > 0
    heal = done["summary"]["heal"]
    assert (heal["steps"], heal["tokens"], heal["resumed_from"]) == (6, 6 * 4 * 64, 0)
    (scores,) = heal["eval"].values()  # the job's calibration text, by default
    assert scores["before"]["token_ppl"] != scores["after"]["token_ppl"]
    # Only the attempt's checkpoint and archive are left: no unhealed trial, healed folder or heal state.
    root = settings.export_root
    assert sorted(p.name for p in root.iterdir()) == [f"{done['id']}-1", f"{done['id']}-1.tar"]
    with tarfile.open(root / f"{done['id']}-1.tar") as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    provenance = json.loads((tmp_path / "ckpt" / "provenance.json").read_text())
    (record,) = provenance["heals"]
    assert record["settings"]["steps"] == 6 and record["settings"]["method"] == "full"
    assert record["teacher"] == str(BUNDLED_EXAMPLES.resolve()) and record["eval"] == heal["eval"]
    unhealed = backend.export_trial("s", 1, tmp_path / "unhealed")
    assert unhealed["parameters"]["after"] == done["summary"]["parameters"]["after"]
    healed, before = (
        load_file(tmp_path / "ckpt" / "model.safetensors"),
        load_file(tmp_path / "unhealed" / "model.safetensors"),
    )
    assert {k: v.shape for k, v in healed.items()} == {k: v.shape for k, v in before.items()}
    assert any(not (healed[k] == before[k]).all() for k in healed)


def test_a_lora_heal_in_bf16(service, settings, backend):
    """The student trains in fp32 whatever the export's dtype; the healed checkpoint is written in that dtype."""
    done = _export_and_run(service, settings, backend, {**HEAL, "method": "lora", "eval": []}, dtype="bf16")
    assert done["status"] == "succeeded", done["error"]
    assert done["summary"]["heal"]["method"] == "lora" and done["summary"]["heal"]["eval"] == {}
    assert done["summary"]["dtype"] == "bf16"
    with tarfile.open(settings.export_root / f"{done['id']}-1.tar") as tar:
        config = json.load(tar.extractfile("config.json"))
    assert config["dtype"] == "bfloat16"


def _fail_writing(*_args, **_kwargs):
    raise OSError("disk full")


@pytest.mark.parametrize("failure", ["write", "data"])
def test_a_failed_heal_leaves_no_files(service, settings, backend, monkeypatch, failure):
    heal = dict(HEAL)
    if failure == "write":  # after every step's state was saved
        monkeypatch.setattr(healio, "write_healed", _fail_writing)
    else:
        dataset = service.post("/v1/datasets", files={"file": ("short.txt", b"far too short")}).json()
        heal["data"] = dataset["id"]
    done = _export_and_run(service, settings, backend, heal)
    assert done["status"] == "failed"
    assert ("OSError: disk full" if failure == "write" else "HealDataError") in done["error"]
    assert list(settings.export_root.iterdir()) == []


def test_deleting_the_job_while_its_export_heals_leaves_no_files(service, settings, backend, monkeypatch):
    """The API removes the files at once; the worker, which may write on until its next progress write finds
    the export gone, removes what it wrote after."""
    seen: dict[str, bool] = {}

    def slow_heal(student, _teacher, _data, out_dir, settings_, *, eval_files=(), progress):
        work = Path(f"{out_dir}.heal-work")
        work.mkdir()
        (work / "state.pt").write_bytes(b"state")
        response = service.delete(f"/v1/jobs/{job['id']}")
        assert response.status_code == 204, response.text
        seen["student removed"] = not Path(student).exists() and not work.exists()
        work.mkdir()  # the heal saves its state once more before it reports progress
        (work / "state.pt").write_bytes(b"state")
        progress(
            HealProgress(step=settings_.total_steps, total_steps=settings_.total_steps, loss=1.0, tokens_per_second=1.0)
        )
        raise AssertionError("the progress write should have stopped the heal")

    monkeypatch.setattr(heal_module, "heal", slow_heal)
    job = service.post("/v1/jobs", json=job_body(n_trials=2)).json()
    Worker(settings, max_idle_s=0.0, backend=backend).run()
    service.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 1, "heal": HEAL})
    Worker(settings, max_idle_s=0.0, backend=backend).run()
    assert seen == {"student removed": True}
    assert list(settings.export_root.iterdir()) == []


def test_an_export_that_fails_for_good_leaves_no_files(settings):
    job = crud_job(settings)
    with session_scope(settings.db_url) as session:
        export_id = crud.create_export(session, job_id=job, trial=0, dtype="fp32", heal=dict(HEAL)).id
    root = settings.export_root
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, crud.MAX_EXPORT_ATTEMPTS + 1):
        assert claim_export(settings.db_url, lease_s=60, export_root=root) == (export_id, attempt)
        with session_scope(settings.db_url) as session:
            crud.get_export(session, export_id=export_id).heartbeat_at = None  # its worker died
        (root / f"{export_id}-{attempt}").mkdir()
    for name in (".student", ".healed.heal-work"):
        (root / f"{export_id}{name}").mkdir()
    assert claim_export(settings.db_url, lease_s=60, export_root=root) is None
    with session_scope(settings.db_url) as session:
        assert crud.get_export(session, export_id=export_id).status == "failed"
    assert list(root.iterdir()) == []


def test_a_worker_between_trials_takes_only_exports_without_a_heal(settings):
    job = crud_job(settings)
    with session_scope(settings.db_url) as session:
        healed = crud.create_export(session, job_id=job, trial=0, dtype="fp32", heal=dict(HEAL)).id
    assert not Worker(settings, backend=FakeBackend()).run_one_export()  # as the runner calls it between trials
    with session_scope(settings.db_url) as session:
        plain = crud.create_export(session, job_id=job, trial=1, dtype="fp32", heal=None).id
    assert claim_export(settings.db_url, lease_s=60, healed=False) == (plain, 1)
    assert claim_export(settings.db_url, lease_s=60, healed=False) is None
    assert claim_export(settings.db_url, lease_s=60) == (healed, 1)


def test_progress_of_an_attempt_taken_over_stops_it(settings):
    job = crud_job(settings)
    with session_scope(settings.db_url) as session:
        export_id = crud.create_export(session, job_id=job, trial=0, dtype="fp32", heal=None).id
    assert claim_export(settings.db_url, lease_s=60) == (export_id, 1)
    first = ExportProgress(settings.db_url, export_id, 1, interval_s=0.0)
    first.phase("healing", step=0, total=4)
    first.heal_step(HealProgress(step=1, total_steps=4, loss=float("nan"), tokens_per_second=10.0))
    with session_scope(settings.db_url) as session:
        export = crud.get_export(session, export_id=export_id)
        assert export.progress == {"phase": "healing", "step": 1, "total": 4, "loss": None, "tokens_per_s": 10.0}
        export.heartbeat_at = None  # the worker looks dead: the next claim takes the export over
    assert claim_export(settings.db_url, lease_s=60) == (export_id, 2)
    with pytest.raises(ExportTakenOver):
        first.heal_step(HealProgress(step=2, total_steps=4, loss=1.0, tokens_per_second=10.0))
    throttled = ExportProgress(settings.db_url, export_id, 2, interval_s=3600)
    throttled.phase("healing", step=0, total=4)
    throttled.heal_step(HealProgress(step=1, total_steps=4, loss=2.0, tokens_per_second=5.0))  # not written
    throttled.heal_step(HealProgress(step=4, total_steps=4, loss=1.5, tokens_per_second=5.0))  # the last: written
    with session_scope(settings.db_url) as session:
        assert crud.get_export(session, export_id=export_id).progress["step"] == 4


def crud_job(settings) -> str:
    with session_scope(settings.db_url) as session:
        spec = job_body()
        return crud.create_job(session, spec=spec, parallelism=1, owner=None, idempotency_key=None).id
