"""`prunesearch demo`: start the service, search the bundled tiny model, print the Pareto front, download the
fastest plan's checkpoint, then heal it on the service and print its perplexity before and after. The newcomer's
first command."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from prunesearch.choices import DType, ExportStatus, HealMethod, JobStatus
from prunesearch.cliutil import CLIError

from .client import Client, ServiceError
from .client_cli import format_front, format_number, watch, watch_export
from .settings import BUNDLED_EXAMPLES

# A few seconds of LoRA distillation on the tiny model: enough to see the perplexity move.
DEMO_HEAL = {"tokens": 32_768, "seq_len": 64, "batch": 8, "method": HealMethod.LORA}


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run a demo search on the bundled tiny model through the service")
    demo.add_argument("--trials", type=int, default=24)
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="where the checkpoint is downloaded")
    demo.add_argument("--data-dir", default=None, help="the service's data dir (default: OUT/service)")
    demo.set_defaults(handler=_demo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(client: Client, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.http.get("/readyz").raise_for_status()
            return
        except Exception:
            time.sleep(0.3)
    raise CLIError("the service did not start")


def _demo(args: argparse.Namespace) -> None:
    port, data_dir = _free_port(), args.data_dir or str(args.out / "service")
    cmd = [sys.executable, "-m", "prunesearch.cli", "serve", "--port", str(port), "--data-dir", data_dir]
    cmd += ["--log-level", "warning"]  # the demo shows progress bars and results; the service speaks up on trouble
    server = subprocess.Popen(cmd, env=dict(os.environ))
    client = Client(f"http://127.0.0.1:{port}")
    try:
        _wait_ready(client)
        run_demo(client, args.trials, args.out)
    except ServiceError as exc:
        raise CLIError(str(exc)) from None
    finally:
        server.terminate()
        server.wait(timeout=60)


def run_demo(client: Client, trials: int, out: Path) -> None:
    """Submit the bundled job, watch it, print the front, export and download the fastest plan."""
    spec = json.loads((BUNDLED_EXAMPLES / "job.json").read_text()) | {"n_trials": trials}
    job = watch(client, client.submit(spec), interval=0.5)
    if job["status"] != JobStatus.SUCCEEDED:
        raise CLIError(f"job {job['id']} {job['status']}: {job['error']}")
    front = client.pareto(job["id"])["front"]
    print(format_front(front))
    fastest = min(front, key=lambda row: row["metrics"]["latency_ms"])
    trial = fastest["trial"]
    result = _export_and_download(client, job["id"], trial, out / f"trial-{trial}")
    print(f"fastest plan: trial {trial}, {fastest['metrics']['latency_ms']:.3f} ms predicted")
    print(f"checkpoint: {result['dir']} (sha256 {result['sha256'][:12]}..., {result['size']} bytes)")
    healed = _export_and_download(client, job["id"], trial, out / f"trial-{trial}-healed", heal=DEMO_HEAL)
    heal = healed["export"]["summary"]["heal"]
    print(f"healed checkpoint: {healed['dir']} ({heal['tokens']} tokens of {heal['method']} distillation)")
    for name, scores in heal["eval"].items():
        before, after = scores["before"]["token_ppl"], scores["after"]["token_ppl"]
        before, after = format_number(before, ".2f"), format_number(after, ".2f")  # None: not finite
        print(f"perplexity on {Path(name).name}: {before} before the heal, {after} after")


def _export_and_download(client: Client, job_id: str, trial: int, out: Path, heal: dict | None = None) -> dict:
    """Export the trial (healed when `heal` is given), wait for it, download it to `out`."""
    export = watch_export(client, client.export(job_id, trial, DType.FP32, heal=heal), interval=0.5)
    if export["status"] != ExportStatus.SUCCEEDED:
        raise CLIError(f"export failed: {export['error']}")
    return client.download(export["id"], out) | {"export": export}
