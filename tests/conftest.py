"""Shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from prunesearch.search.storage import forget_storages


@pytest.fixture(autouse=True)
def _close_optuna_storages() -> Iterator[None]:
    """Each test's databases are its own: close the process's cached Optuna storages after it (open SQLite
    files and PostgreSQL connections would otherwise pile up over a session)."""
    yield
    forget_storages()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that run `prunesearch serve`/`worker` in process (they configure the root logger): put the root
    logger back afterwards, and close the database engines the command opened."""
    from prunesearch.service.db import dispose_all

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    dispose_all()


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
