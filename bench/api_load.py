"""API load while a search runs: many concurrent clients poll `GET /v1/jobs/{id}`; report latency and errors,
and the time from `POST /v1/jobs` to the first finished trial.

    python bench/api_load.py [--clients 200] [--interval 1.0] [--duration 30] [--trials 40] [--out FILE.json]

Starts its own `prunesearch serve` (API + one worker, SQLite in a temporary data dir) on a free loopback port,
submits a search on the bundled tiny model, and stops the server at the end. Each client polls once per
`--interval` seconds (a random phase apart), as `prunesearch status --watch` does; `--interval 0` makes every
client poll back to back (a closed loop: latency then measures queueing at saturation, not the service).
`--client raw` replaces httpx by a lean asyncio HTTP/1.1 client: on a 2-core machine httpx's own CPU cost
competes with the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "tiny-llama"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "prunesearch.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    env = {**os.environ, "PRUNESEARCH_POLL_S": "0.2"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the API process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(server: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server {server} did not become ready in {timeout}s")


def submit_and_time_first_trial(server: str, trials: int, tokens: int) -> tuple[str, float]:
    """POST a job; seconds until the job reports its first finished trial (polled every 20 ms)."""
    body = {
        "model": str(MODEL),
        "calibration": str(MODEL / "calib.txt"),
        "n_trials": trials,
        "sampler": "tpe",
        "calibration_settings": {"tokens": tokens, "seq_len": 64},
    }
    start = time.perf_counter()
    job = httpx.post(f"{server}/v1/jobs", json=body, timeout=10).raise_for_status().json()
    while httpx.get(f"{server}/v1/jobs/{job['id']}", timeout=10).json()["trials_done"] < 1:
        time.sleep(0.02)
    return job["id"], time.perf_counter() - start


async def poll(client: httpx.AsyncClient, url: str, until: float, interval: float, out: list, errors: list) -> None:
    """One client: GET `url` every `interval` seconds until `until`, recording latencies and failures."""
    await asyncio.sleep(random.uniform(0, interval))
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            response = await client.get(url)
            (out if response.status_code == 200 else errors).append(time.perf_counter() - start)
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))


async def poll_raw(port: int, path: str, until: float, interval: float, out: list, errors: list) -> None:
    """One client on a raw keep-alive HTTP/1.1 connection: the same requests at a fraction of httpx's CPU."""
    await asyncio.sleep(random.uniform(0, interval))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            (out if head.startswith(b"HTTP/1.1 200") else errors).append(time.perf_counter() - start)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


async def load(server: str, job_id: str, clients: int, interval: float, duration: float, raw: bool) -> dict:
    latencies: list[float] = []
    errors: list = []
    until, url = time.perf_counter() + duration, f"/v1/jobs/{job_id}"
    if raw:
        port = int(server.rsplit(":", 1)[1])
        await asyncio.gather(*(poll_raw(port, url, until, interval, latencies, errors) for _ in range(clients)))
    else:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=server, limits=limits, timeout=30) as client:
            await asyncio.gather(*(poll(client, url, until, interval, latencies, errors) for _ in range(clients)))
    latencies.sort()
    pick = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "rps": round((len(latencies) + len(errors)) / duration, 1),
        "p50_ms": round(pick(0.50), 2),
        "p99_ms": round(pick(0.99), 2),
        "max_ms": round(1000 * latencies[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between one client's polls")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens of the search")
    parser.add_argument("--client", choices=["httpx", "raw"], default="httpx", help="raw: lean asyncio client")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(Path(tmp) / "data", port)
        try:
            wait_ready(server)
            # Cold: the worker starts with the server (imports torch); warm: it is idle and ready.
            _, cold_s = submit_and_time_first_trial(server, 1, args.tokens)
            job_id, first_trial_s = submit_and_time_first_trial(server, args.trials, args.tokens)
            cpu = server_cpu_s(proc.pid)
            stats = asyncio.run(load(server, job_id, args.clients, args.interval, args.duration, args.client == "raw"))
            stats["api_cpu_ms_per_request"] = round(
                1000 * (server_cpu_s(proc.pid) - cpu) / max(1, stats["requests"]), 2
            )
            job = httpx.get(f"{server}/v1/jobs/{job_id}").json()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    result = {
        **stats,
        "clients": args.clients,
        "client": args.client,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "post_to_first_trial_s": round(first_trial_s, 2),
        "post_to_first_trial_cold_s": round(cold_s, 2),
        "trials_done_during_load": job["trials_done"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
