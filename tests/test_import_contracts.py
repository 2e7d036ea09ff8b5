"""The architecture's import contracts (pyproject.toml, [tool.importlinter]) hold, and they can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "lint-imports"
SOURCES = ("pyproject.toml", "README.md", "prunesearch", "pruning", "profilers", "search", "service", "migrations")

pytestmark = pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(tree)], capture_output=True, text=True, timeout=300)


def _copy_sources(dest: Path) -> Path:
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def test_the_repository_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    tree = _copy_sources(tmp_path)
    plan = tree / "pruning" / "plan.py"
    plan.write_text(plan.read_text() + "\nfrom prunesearch.service import settings  # an upward import\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "prunesearch.pruning.plan -> prunesearch.service.settings" in result.stdout


def test_torch_in_pure_logic_breaks_its_contract(tmp_path):
    tree = _copy_sources(tmp_path)
    pareto = tree / "search" / "pareto.py"
    pareto.write_text(pareto.read_text() + "\nimport torch  # pure logic must not\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "prunesearch.search.pareto is not allowed to import torch" in result.stdout
