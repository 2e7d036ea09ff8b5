"""`prunesearch serve` (API plus its own worker process, on SQLite in a data dir) driven by the client
commands: submit, status --watch, pareto, export --wait, download; stopping serve stops its worker."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from prunesearch.cli import main

from .conftest import job_body, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _up(server: str) -> bool:
    try:
        return httpx.get(f"{server}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _run(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_serve_and_client_commands(tmp_path, processes, capsys):
    port, log = _free_port(), tmp_path / "serve.log"
    env = {**os.environ, "PRUNESEARCH_HEARTBEAT_S": "1", "PRUNESEARCH_POLL_S": "0.2"}
    cmd = [sys.executable, "-m", "prunesearch.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    serve = processes.start(cmd, env=env, log=log)
    server = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(server), timeout=60)
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(job_body(n_trials=4)))
    job_id = json.loads(_run(capsys, "submit", str(spec_file), "--server", server))["id"]
    status = json.loads(_run(capsys, "status", job_id, "--watch", "--interval", "0.3", "--server", server))
    assert (status["status"], status["trials_done"]) == ("succeeded", 4)
    table = _run(capsys, "pareto", job_id, "--server", server)
    assert "latency_ms" in table and "plans after 4 trials" in table
    trial = int(table.splitlines()[1].split()[0])
    export = json.loads(_run(capsys, "export", job_id, "--trial", str(trial), "--wait", "--server", server))
    assert export["status"] == "succeeded"
    result = json.loads(_run(capsys, "download", export["id"], "-o", str(tmp_path / "ckpt"), "--server", server))
    assert result["sha256"] == export["sha256"] and (tmp_path / "ckpt" / "config.json").is_file()
    heal_flags = ["--heal-tokens", "2048", "--heal-method", "lora", "--heal-seq-len", "64", "--heal-eval"]
    argv = ["export", job_id, "--trial", str(trial), "--server", server, *heal_flags, "tiny-llama/calib.txt"]
    queued = json.loads(_run(capsys, *argv))
    assert (queued["heal"]["tokens"], queued["heal"]["method"], queued["heal"]["seq_len"]) == (2048, "lora", 64)
    healed = json.loads(_run(capsys, "status", queued["id"], "--watch", "--interval", "0.3", "--server", server))
    assert healed["status"] == "succeeded", healed["error"]
    assert (healed["progress"]["step"], healed["progress"]["total"]) == (4, 4)  # 2048 tokens in blocks of 8 x 64
    assert main(["export", "--trial", "0", "--heal-tokens", "100", "--out", str(tmp_path / "x")]) == 2
    assert "need a service job id" in capsys.readouterr().err
    assert main(["export", job_id, "--trial", "0", "--heal-tokens", "0", "--server", server]) == 2
    assert "tokens must be positive" in capsys.readouterr().err
    assert main(["status", "nope", "--server", server]) == 2  # 404 is a one-line CLI error
    assert "404" in capsys.readouterr().err
    processes.stop_all()
    worker_pid = int(log.read_text().split("worker pid ")[1].split(")")[0])
    assert serve.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


def test_demo_command(tmp_path, capsys):
    """The newcomer command: serve, search the bundled model, print the front, download the fastest plan."""
    assert main(["demo", "--trials", "3", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "latency_ms" in out and "checkpoint:" in out
    checkpoint = Path(out.split("checkpoint: ")[1].split(" (")[0])
    assert (checkpoint / "config.json").is_file()
    healed = Path(out.split("healed checkpoint: ")[1].split(" (")[0])
    assert json.loads((healed / "provenance.json").read_text())["heals"][0]["tokens"] == 32_768
    assert "perplexity on calib.txt:" in out and "before the heal" in out


def test_download_into_a_file_exits_2_before_any_request(tmp_path, capsys):
    in_the_way = tmp_path / "ckpt"
    in_the_way.write_text("not a folder")
    # port 9 (discard) has no service: the check must come before any request
    code = main(["download", "some-export", "-o", str(in_the_way), "--server", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be used as a directory" in err and "Traceback" not in err
    assert in_the_way.read_text() == "not a folder"
