"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def prunesearch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is present; elsewhere they are skipped with the reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
