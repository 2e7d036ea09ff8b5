"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def prunesearch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
