"""A tiny per-process cache of serialized job views: hundreds of clients polling one job within a fraction of a
second share one database read. Staleness is bounded by `ttl_s`; this process's own writes invalidate."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    """key -> value for `ttl_s` seconds; thread-safe; bounded size (oldest entries dropped first)."""

    def __init__(self, ttl_s: float = 0.25, max_entries: int = 4096) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._data: dict[str, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, value: V) -> None:
        with self._lock:
            if len(self._data) >= self.max_entries:
                for old in list(self._data)[: self.max_entries // 4]:
                    self._data.pop(old, None)
            self._data[key] = (time.monotonic() + self.ttl_s, value)

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
