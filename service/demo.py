"""`prunesearch demo`: start the service, search the bundled tiny model, print the Pareto front and download the
fastest plan's checkpoint. The newcomer's first command."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from prunesearch.choices import DType, ExportStatus, JobStatus
from prunesearch.cliutil import CLIError

from .client import Client, ServiceError
from .client_cli import format_front, watch
from .settings import BUNDLED_EXAMPLES


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
    export = client.export(job["id"], fastest["trial"], DType.FP32)
    while export["status"] in (ExportStatus.QUEUED, ExportStatus.RUNNING):
        time.sleep(0.5)
        export = client.export_status(export["id"])
    if export["status"] != ExportStatus.SUCCEEDED:
        raise CLIError(f"export failed: {export['error']}")
    result = client.download(export["id"], out / f"trial-{fastest['trial']}")
    print(f"fastest plan: trial {fastest['trial']}, {fastest['metrics']['latency_ms']:.3f} ms predicted")
    print(f"checkpoint: {result['dir']} (sha256 {result['sha256'][:12]}..., {result['size']} bytes)")
