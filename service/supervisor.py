"""`prunesearch serve`'s own worker: started beside the API, restarted whenever it dies, and reported in
`/readyz` (`worker`: running, restarted or down; `restarts`: how many times it was started again)."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# A worker that dies within this many seconds of its start is failing to start: restart it after a growing
# pause (1, 2, 4, ... seconds, at most MAX_PAUSE_S), not in a tight loop.
QUICK_DEATH_S = 30.0
MAX_PAUSE_S = 30.0


class WorkerSupervisor:
    """Keeps one worker process (made by `start`) running until `stop()`; thread-safe `status()`."""

    def __init__(self, start: Callable[[], subprocess.Popen], *, poll_s: float = 0.5) -> None:
        self._start, self._poll_s = start, poll_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._started_at = 0.0

    def start(self) -> WorkerSupervisor:
        self._spawn()
        self._thread.start()
        return self

    def status(self) -> dict[str, Any]:
        """{worker: running | restarted | down, restarts: N}: down while the dead worker waits to be restarted."""
        with self._lock:
            alive = self.process is not None and self.process.poll() is None
            state = "down" if not alive else "restarted" if self.restarts else "running"
            return {"worker": state, "restarts": self.restarts}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching, then stop the worker (it finishes its trial and leaves its job for others)."""
        self._stopping.set()
        self._thread.join(timeout=timeout)
        if self.process is not None:
            stop_process(self.process, timeout)

    def _spawn(self) -> None:
        process = self._start()
        with self._lock:
            self.process, self._started_at = process, time.monotonic()

    def _watch(self) -> None:
        quick_deaths = 0
        while not self._stopping.wait(self._poll_s):
            assert self.process is not None
            code = self.process.poll()
            if code is None:
                continue
            lived = time.monotonic() - self._started_at
            quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH_S else 0
            pause = min(MAX_PAUSE_S, 2.0 ** (quick_deaths - 1)) if quick_deaths else 0.0
            log.warning("worker pid %d died (exit code %s) after %.0f s; restarting", self.process.pid, code, lived)
            if self._stopping.wait(pause):
                return
            self._spawn()
            with self._lock:
                self.restarts += 1
            print(f"prunesearch: worker restarted as pid {self.process.pid} ({self.restarts} restarts)", flush=True)


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (the worker finishes its trial and leaves), then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
