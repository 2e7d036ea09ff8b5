"""The web page's first paint on the loopback server, in Debian's headless chromium.

    python bench/web_first_paint.py [--loads 7] [--out FILE.json]

Starts the API alone (`uvicorn --factory prunesearch.service.api.main:app_from_env`, SQLite in a temporary data
dir holding one finished job, the one `tests/service/finished_job.py` writes) on a free loopback port. Each load
is a fresh browser context (empty cache) that opens `/` and reads the Performance API's `first-paint` and
`first-contentful-paint` entries, and the time until the job's Pareto front is drawn (the page's JavaScript has
read three JSON routes by then). Prints medians and exits 1 when the median first paint is 1 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.service.finished_job: the same finished job as the browser test

from playwright.sync_api import sync_playwright  # noqa: E402

from prunesearch.service.db import upgrade_schema  # noqa: E402
from prunesearch.service.settings import Settings  # noqa: E402
from tests.service.finished_job import seed_finished_job  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TARGET_MS = 1000.0
PAINT_JS = """() => Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(data_dir: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prunesearch.service.api.main:app_from_env"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "PRUNESEARCH_DATA_DIR": str(data_dir)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(server: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {server} did not become ready in {timeout:.0f} s")


def measure(server: str, loads: int) -> list[dict[str, float]]:
    runs = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            for _ in range(loads):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(f"{server}/")
                page.locator("#front-plot .point.front").first.wait_for(timeout=30_000)
                front_ms = page.evaluate("() => performance.now()")
                paints = page.evaluate(PAINT_JS)
                runs.append({"first_paint_ms": paints["first-paint"], "fcp_ms": paints["first-contentful-paint"]})
                runs[-1]["front_drawn_ms"] = front_ms
                context.close()
        finally:
            browser.close()
    return runs


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        upgrade_schema(settings.db_url)
        seed_finished_job(settings)
        port = free_port()
        api = start_api(Path(tmp), port)
        try:
            server = f"http://127.0.0.1:{port}"
            wait_ready(server)
            runs = measure(server, args.loads)
        finally:
            api.terminate()
            api.wait(timeout=30)
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "loads": args.loads, "median": medians, "runs": runs}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = medians["first_paint_ms"] < TARGET_MS
    print(f"median first paint {medians['first_paint_ms']:.0f} ms: {'under' if ok else 'NOT under'} 1 s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
