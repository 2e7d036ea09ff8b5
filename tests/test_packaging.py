"""Packaging and deployment, checked statically: the wheel ships every data file (the demo model, migrations'
template, the web page), and docker/ names only settings the service reads (Docker cannot run here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from prunesearch.service.settings import BUNDLED_EXAMPLES, EXAMPLES_DIR, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = {"prunesearch": "prunesearch"} | PYPROJECT["tool"]["setuptools"]["package-dir"]
SETTINGS_VARS = {f"{Settings.model_config['env_prefix']}{name}".upper() for name in Settings.model_fields}


def _compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return env


def test_the_bundled_examples_are_package_data_found_through_importlib():
    assert (BUNDLED_EXAMPLES / "config.json").is_file() and (BUNDLED_EXAMPLES / "calib.txt").is_file()
    assert EXAMPLES_DIR.resolve() == (ROOT / "examples").resolve()  # in this (editable) install: the source tree
    size = sum(p.stat().st_size for p in BUNDLED_EXAMPLES.iterdir())
    assert size < 5 * 2**20  # small enough to ship in the wheel


def test_compose_runs_postgres_the_api_and_two_workers_in_order():
    services = _compose("compose.yaml")["services"]
    workers = sorted(name for name in services if name.startswith("worker"))
    assert set(services) == {"postgres", "api", *workers} and len(workers) == 2
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert "/readyz" in str(services["api"]["healthcheck"]["test"])
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["command"][:3] == ["prunesearch", "serve", "--no-worker"]
    for name in workers:
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"
        assert services[name]["command"] == ["prunesearch", "worker"]
    url = _environment(services["api"])["PRUNESEARCH_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert all(_environment(services[name]) == _environment(services["api"]) for name in workers)
    postgres = _environment(services["postgres"])
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@" in url and url.endswith(
        "/" + postgres["POSTGRES_DB"]
    )


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_sets_only_settings_the_service_reads(name):
    documented = (ROOT / "docs" / "service.md").read_text()
    for service in _compose(name)["services"].values():
        for var in _environment(service):
            if var.startswith("PRUNESEARCH_"):
                assert var in SETTINGS_VARS, f"{name} sets {var}, which Settings does not read"
                assert var in documented, f"{var} is not in docs/service.md's settings table"
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file()


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_copy_every_package_folder_and_install_it_for_real(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    copied = {source for line in re.findall(r"^COPY (.+)$", text, flags=re.M) for source in line.split()[:-1]}
    assert {*PACKAGE_DIRS.values(), "pyproject.toml", "README.md"} <= copied
    assert all((ROOT / source).exists() for source in copied)
    assert re.search(r'pip install "\.\[postgres\]"', text) and "-e " not in text  # not editable
    for var in re.findall(r"\b(PRUNESEARCH_\w+)=", text):
        assert var in SETTINGS_VARS


def test_the_wheel_holds_the_demo_model_and_every_data_file(tmp_path):
    """`pip wheel` on a copy of the sources (no debris here): every non-Python file under a package folder is in
    the wheel, under its installed name; above all the demo model, so `prunesearch demo` runs from it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in set(PACKAGE_DIRS.values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."]
    done = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (src / "dist").glob("prunesearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts:
                installed = "/".join([*package.split("."), *path.relative_to(ROOT / folder).parts])
                assert installed in names, f"{installed} is missing from the wheel"
    for required in ("model.safetensors", "config.json", "tokenizer.json", "calib.txt", "job.json"):
        assert f"prunesearch/examples/tiny-llama/{required}" in names
    assert "prunesearch/migrations/script.py.mako" in names and "prunesearch/service/settings.py" in names
