"""Fault injection against real worker and API processes: what a crash may lose (the goal: nothing).

    python bench/faults.py [--quick] [--databases sqlite,postgresql] [--kills 10] [--scenarios A,B] [--out FILE]

Scenarios (each on a fresh database: a SQLite file in a temporary folder, or a PostgreSQL database made for the
run at 127.0.0.1:5432 and dropped after it):

- `worker-kill`: one job; `--kills` times, a worker is killed with SIGKILL while a trial runs and a new one is
  started; then the job must succeed with exactly n_trials counted trials, none left running, every abandoned
  trial failed and run again (lost: n_trials minus the trials counted; duplicated: the trials counted beyond).
- `export-kill`: a healed export's worker is killed with SIGKILL mid-heal; the next worker must finish it, with
  an archive whose sha256 is the recorded one and no file of the dead attempt left.
- `api-kill`: clients submit jobs to `prunesearch serve --no-worker`, which is killed with SIGKILL mid-stream
  and started again; every job acknowledged with a 202 must be there.
- `serve-worker-kill`: `prunesearch serve`'s own worker is killed with SIGKILL; serve must start a new one,
  `/readyz` must say so, and a job submitted next must succeed.
- `fresh-postgresql`: `prunesearch db upgrade` on a fresh PostgreSQL database, then three workers started at
  once on a job with parallelism 3: none may fail, and the job must end with exactly n_trials.

`--quick` (what CI runs, through tests/test_faults_quick.py): `worker-kill` once on SQLite. The script exits 1
when anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from prunesearch.search.results import ABANDONED_ATTR, counts_as_done
from prunesearch.service import crud
from prunesearch.service.db import dispose_all, session_scope, upgrade_schema
from prunesearch.service.exportfiles import ExportFiles
from prunesearch.service.settings import Settings
from prunesearch.service.worker.exporter import file_sha256

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "tiny-llama"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
# Short leases, so a killed worker's job is taken over within seconds (a worker takes longer than that to start).
WORKER_ENV = {"PRUNESEARCH_LEASE_S": "3", "PRUNESEARCH_HEARTBEAT_S": "0.5", "PRUNESEARCH_POLL_S": "0.2"}
FINAL = ("succeeded", "failed", "cancelled")
SCENARIOS = ("worker-kill", "export-kill", "api-kill", "serve-worker-kill", "fresh-postgresql")


def job_spec(n_trials: int, **extra: Any) -> dict[str, Any]:
    """A tiny, fast search on the bundled model."""
    spec = {
        "model": str(MODEL),
        "calibration": str(MODEL / "calib.txt"),
        "n_trials": n_trials,
        "sampler": "random",
        "hardware": "h100-sxm",
        "calibration_settings": {"tokens": 512, "seq_len": 64},
        # every trial scored in full: trials stopped early are short enough to finish between two polls
        "efficiency": {"low_fidelity": 1.0},
    }
    return spec | extra


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A URL of an empty database of `kind`, removed afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'faults-{uuid.uuid4().hex[:8]}.db'}"
        dispose_all()
        return
    import psycopg

    admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    name = f"prunesearch_faults_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        dispose_all()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Procs:
    """Processes started by a scenario; all stopped (SIGKILL if SIGTERM does not do) when it ends."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs, self.procs = settings, logs, []
        self.env = {
            **os.environ,
            **WORKER_ENV,
            "PRUNESEARCH_DATABASE_URL": settings.db_url,
            "PRUNESEARCH_DATA_DIR": str(settings.data_dir),
        }

    def start(self, *argv: str, name: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        cmd = [sys.executable, "-m", "prunesearch.cli", *argv]
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen:
        return self.start("worker", name="worker")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def service(kind: str, tmp: Path) -> Iterator[tuple[Settings, Procs]]:
    with fresh_database(kind, tmp) as url:
        data = tmp / f"data-{uuid.uuid4().hex[:6]}"
        data.mkdir()
        settings = Settings(data_dir=data, database_url=url)
        upgrade_schema(url)  # what `prunesearch db upgrade` does: the service's tables and Optuna's
        procs = Procs(settings, data)
        try:
            yield settings, procs
        finally:
            procs.stop_all()


def submit(settings: Settings, spec: dict[str, Any], parallelism: int = 1) -> str:
    with session_scope(settings.db_url) as session:
        job = crud.create_job(session, spec=spec, parallelism=parallelism, owner=None, idempotency_key=None)
        return job.id


def job_row(settings: Settings, job_id: str):
    with session_scope(settings.db_url) as session:
        return crud.get_job(session, job_id=job_id)


def study_trials(settings: Settings, job_id: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=f"job-{job_id}", storage=settings.db_url)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def trial_accounting(settings: Settings, job_id: str, n_trials: int) -> dict[str, int]:
    """What the job's study holds once the job is over: lost and duplicated trials are the goal's zeros."""
    trials = study_trials(settings, job_id)
    counted = sum(counts_as_done(t) for t in trials)
    abandoned = [t for t in trials if t.user_attrs.get(ABANDONED_ATTR)]
    job = job_row(settings, job_id)
    return {
        "n_trials": n_trials,
        "trials_done": job.trials_done,
        "counted": counted,
        "lost": max(0, n_trials - counted),
        "duplicated": max(0, counted - n_trials),
        "left_running": sum(t.state == TrialState.RUNNING for t in trials),
        "abandoned_not_failed": sum(t.state != TrialState.FAIL for t in abandoned),
        "abandoned": len(abandoned),
    }


def finished(settings: Settings, job_id: str) -> bool:
    return job_row(settings, job_id).status in FINAL


def running_trial(settings: Settings, job_id: str) -> bool:
    return any(t.state == TrialState.RUNNING for t in study_trials(settings, job_id))


def worker_kill(kind: str, tmp: Path, kills: int) -> dict[str, Any]:
    """Kill the job's worker with SIGKILL `kills` times while a trial runs; a new worker takes over each time."""
    n_trials = 5 * kills + 3  # room for the kills that are tried again
    with service(kind, tmp) as (settings, procs):
        job_id = submit(settings, job_spec(n_trials))
        mid_trial, done_at_kill = 0, 0
        # a trial seen running may finish before the signal lands: a kill that caught none is tried again, within
        # a bound (short trials on a fast machine), so `killed_mid_trial` counts kills that really hit a trial
        for _ in range(4 * kills):
            if mid_trial == kills:
                break
            worker = procs.worker()
            # the new worker ran at least one trial of its own, and is in the middle of the next
            wait_for(lambda n=done_at_kill: job_row(settings, job_id).trials_done > n, 180, "a trial to finish")
            wait_for(lambda: running_trial(settings, job_id) or finished(settings, job_id), 60, "a trial to start")
            if finished(settings, job_id):
                break
            worker.kill()
            worker.wait()
            trials = study_trials(settings, job_id)
            mid_trial += any(t.state == TrialState.RUNNING for t in trials)
            done_at_kill = job_row(settings, job_id).trials_done
        procs.worker()
        job = wait_for(lambda: (j := job_row(settings, job_id)).status in FINAL and j, 300, "the job to finish")
        result = trial_accounting(settings, job_id, n_trials)
    return {"database": kind, "kills": kills, "killed_mid_trial": mid_trial, "status": job.status, **result}


def export_kill(kind: str, tmp: Path) -> dict[str, Any]:
    """Kill a worker mid-heal of an export; the next one resumes it and writes it once."""
    with service(kind, tmp) as (settings, procs):
        job_id = submit(settings, job_spec(4))
        worker = procs.worker()
        wait_for(lambda: job_row(settings, job_id).status in FINAL, 180, "the search to finish", 0.2)
        front = [t for t in study_trials(settings, job_id) if t.state == TrialState.COMPLETE]
        heal = {
            "tokens": 4096,
            "seq_len": 64,
            "batch": 8,
            "method": "lora",
            "data": str(MODEL / "calib.txt"),
            "eval": [str(MODEL / "calib.txt")],
        }
        with session_scope(settings.db_url) as session:
            export_id = crud.create_export(session, job_id=job_id, trial=front[0].number, dtype="fp32", heal=heal).id

        def export():
            with session_scope(settings.db_url) as session:
                return crud.get_export(session, export_id=export_id)

        wait_for(lambda: ((export().progress or {}).get("step") or 0) >= 2, 180, "the heal to make progress")
        worker.kill()
        worker.wait()
        killed_at = export().progress
        procs.worker()
        done = wait_for(lambda: (e := export()).status in ("succeeded", "failed") and e, 300, "the export", 0.2)
        files = ExportFiles(settings.export_root, export_id, done.attempts)
        recorded_ok = done.status == "succeeded" and file_sha256(Path(done.path)) == done.sha256
        expected = {files.out_dir.name, files.archive.name}
        debris = sorted(p.name for p in settings.export_root.iterdir() if p.name not in expected)
    return {
        "database": kind,
        "status": done.status,
        "attempts": done.attempts,
        "killed_at_step": killed_at.get("step"),
        "archive_matches_sha256": recorded_ok,
        "debris": debris,
        "lost": int(not recorded_ok),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready(server: str) -> dict | None:
    try:
        response = httpx.get(f"{server}/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def start_serve(procs: Procs, settings: Settings, port: int, *extra: str) -> subprocess.Popen:
    argv = ["serve", "--port", str(port), "--data-dir", str(settings.data_dir), *extra]
    return procs.start(*argv, name="serve")


def api_kill(kind: str, tmp: Path, kills: int, clients: int = 4) -> dict[str, Any]:
    """Clients submit jobs while the API is killed with SIGKILL and started again; count acknowledged jobs
    missing afterwards."""
    acked: list[str] = []
    errors = 0
    with service(kind, tmp) as (settings, procs):
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        spec = job_spec(1)
        for _ in range(kills):
            api = start_serve(procs, settings, port, "--no-worker")
            wait_for(lambda: ready(server), 60, "the API", 0.2)
            stop = threading.Event()

            def client(stop: threading.Event) -> None:
                nonlocal errors
                with httpx.Client(timeout=5) as http:
                    while not stop.is_set():
                        try:
                            response = http.post(f"{server}/v1/jobs", json=spec)
                        except httpx.HTTPError:
                            errors += 1
                            continue
                        if response.status_code == 202:
                            acked.append(response.json()["id"])

            threads = [threading.Thread(target=client, args=(stop,)) for _ in range(clients)]
            for thread in threads:
                thread.start()
            before = len(acked)
            wait_for(lambda n=before: len(acked) >= n + 20, 60, "jobs to be acknowledged", 0.01)
            api.kill()
            api.wait()
            time.sleep(0.3)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        with session_scope(settings.db_url) as session:
            missing = [job_id for job_id in acked if crud.get_job(session, job_id=job_id) is None]
    return {"database": kind, "kills": kills, "acknowledged": len(acked), "lost": len(missing), "client_errors": errors}


def serve_worker_kill(kind: str, tmp: Path, kills: int) -> dict[str, Any]:
    """Kill `prunesearch serve`'s worker; serve starts another, says so in /readyz, and it runs the next job."""
    with service(kind, tmp) as (settings, procs):
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        serve = start_serve(procs, settings, port)
        wait_for(lambda: ready(server), 60, "serve", 0.2)
        reports = []
        for kill in range(1, kills + 1):
            pid = worker_pid(serve.pid)
            os.kill(pid, signal.SIGKILL)
            is_restart = lambda n=kill: (r := ready(server)) and r.get("restarts") == n and r  # noqa: E731
            status = wait_for(is_restart, 60, "a restart", 0.2)
            reports.append(status)
        job = httpx.post(f"{server}/v1/jobs", json=job_spec(2), timeout=10).json()
        get = lambda: httpx.get(f"{server}/v1/jobs/{job['id']}", timeout=10).json()  # noqa: E731
        done = wait_for(lambda: (j := get())["status"] in FINAL and j, 300, "the job", 0.5)
    restarted = sum(
        r == {"status": "ready", "schema": r["schema"], "worker": "restarted", "restarts": i + 1}
        for i, r in enumerate(reports)
    )
    return {
        "database": kind,
        "kills": kills,
        "restarts_reported": restarted,
        "job_after": done["status"],
        "lost": (kills - restarted) + (done["status"] != "succeeded"),
    }


def worker_pid(parent: int) -> int:
    """The pid of the (live) worker process `parent` started (Linux /proc)."""

    def child() -> int | None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == parent and b"worker" in cmdline and stat[0] != "Z":
                return int(entry.name)
        return None

    return wait_for(child, 60, "serve's worker", 0.2)


def fresh_postgresql(tmp: Path, workers: int = 3, n_trials: int = 12) -> dict[str, Any]:
    """`db upgrade` on a fresh PostgreSQL database, then `workers` workers at once on one job."""
    with service("postgresql", tmp) as (settings, procs):
        job_id = submit(settings, job_spec(n_trials), parallelism=workers)
        started = [procs.worker() for _ in range(workers)]
        job = wait_for(lambda: (j := job_row(settings, job_id)).status in FINAL and j, 300, "the job", 0.2)
        crashed = sum(p.poll() not in (None, 0) for p in started)
        result = trial_accounting(settings, job_id, n_trials)
    return {"database": "postgresql", "workers": workers, "status": job.status, "workers_crashed": crashed, **result}


def postgresql_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception:
        return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    databases = [d for d in args.databases.split(",") if d != "postgresql" or postgresql_available()]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="faults-") as folder:
        tmp = Path(folder)

        def record(name: str, fn: Callable[[], dict[str, Any]]) -> None:
            began = time.monotonic()
            result = fn() | {"seconds": round(time.monotonic() - began, 1)}
            print(json.dumps({name: result}), flush=True)
            results.setdefault(name, []).append(result)

        scenarios = {
            "worker-kill": lambda kind: worker_kill(kind, tmp, args.kills),
            "export-kill": lambda kind: export_kill(kind, tmp),
            "api-kill": lambda kind: api_kill(kind, tmp, args.api_kills),
            "serve-worker-kill": lambda kind: serve_worker_kill(kind, tmp, args.serve_kills),
        }
        for name in args.scenarios.split(","):
            if name == "fresh-postgresql":
                if "postgresql" in databases:
                    record(name, lambda: fresh_postgresql(tmp))
                continue
            for kind in databases:
                record(name, lambda kind=kind, name=name: scenarios[name](kind))
    lost = sum(r.get("lost", 0) + r.get("duplicated", 0) for rs in results.values() for r in rs)
    return {"cpu": cpu_name(), "databases": databases, "quick": args.quick, "lost_or_duplicated": lost, **results}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one worker kill on SQLite (CI)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--kills", type=int, default=10, help="worker kills per database")
    parser.add_argument("--api-kills", type=int, default=3)
    parser.add_argument("--serve-kills", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here (JSON)")
    args = parser.parse_args()
    if args.quick:
        args.databases, args.kills, args.scenarios = "sqlite", 1, "worker-kill"
    summary = run(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if summary["lost_or_duplicated"] else 0


if __name__ == "__main__":
    sys.exit(main())
