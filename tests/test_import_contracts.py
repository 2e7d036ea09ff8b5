"""The architecture's import contracts (pyproject.toml, [tool.importlinter]) hold, and they can fail."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "lint-imports"
SOURCES = (
    *("pyproject.toml", "README.md", "prunesearch", "pruning", "profilers", "search", "service", "migrations"),
    "examples",
)
# What profilers may read from pruning: plans and architecture data (the table and the classes built from it, and
# the pure stock-or-not decision those classes follow).
PROFILERS_MAY_READ = {"__init__", "plan", "architectures", "deploy", "modeling", "remote_modeling"}

needs_linter = pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")


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


def _contract(name_start: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith(name_start))


@needs_linter
def test_the_repository_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@needs_linter
@pytest.mark.parametrize(
    ("module", "line", "complaint"),
    [
        (
            "pruning/plan.py",
            "from prunesearch.service import settings  # an upward import",
            "prunesearch.pruning.plan -> prunesearch.service.settings",
        ),
        (
            "search/pareto.py",
            "import torch  # pure logic must not",
            "prunesearch.search.pareto is not allowed to import torch",
        ),
        (
            "profilers/measured.py",
            "from prunesearch.pruning import surgery  # more than architecture data",
            "is not allowed to import prunesearch.pruning.surgery",
        ),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, complaint):
    tree = _copy_sources(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert complaint in result.stdout


def test_every_pruning_module_is_either_readable_by_profilers_or_forbidden_to_them():
    """The profilers contract is a deny-list; this makes it an allow-list: a new pruning module must be named."""
    forbidden = set(_contract("Profilers read pruning")["forbidden_modules"])
    for path in sorted((ROOT / "pruning").glob("*.py")):
        module = f"prunesearch.pruning.{path.stem}"
        assert (path.stem in PROFILERS_MAY_READ) != (module in forbidden), f"classify {module} in pyproject.toml"
