"""schemathesis against a live `uvicorn` on loopback, every check enabled, for a bounded number of examples:
zero failures (no 5xx, every status and body as the OpenAPI schema declares). The long run (5,000+ requests)
is `python bench/fuzz_api.py`; docs/reliability.md records its figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "fuzz_api.py"
_SPEC = importlib.util.spec_from_file_location("fuzz_api", _PATH)
fuzz = sys.modules.setdefault("fuzz_api", importlib.util.module_from_spec(_SPEC))  # dataclasses look it up
_SPEC.loader.exec_module(fuzz)

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_failures(tmp_path):
    result = fuzz.fuzz_api(tmp_path, max_examples=10, seed=12, timeout_s=150)
    assert result.returncode == 0, result.output[-6000:]
    assert result.requests >= 200, (result.statuses, result.output[-3000:])
    assert result.server_errors == 0, result.statuses
