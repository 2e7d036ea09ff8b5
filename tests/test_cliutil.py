"""CLI seams: user errors exit 2 with one line, bugs keep their traceback and exit 1, and the sub-CLIs,
`prunesearch.cli` and the migrations import each other only one way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunesearch.cli import main
from prunesearch.cliutil import CLIError, read_json, user_errors, validation_message
from prunesearch.pruning.plan import PlanError

ROOT = Path(__file__).resolve().parents[1]
SUB_CLIS = ["pruning/cli.py", "profilers/cli.py", "search/cli.py", "service/cli.py", "service/client_cli.py"]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    directory = tmp_path / "llama3-8b"
    directory.mkdir()
    (directory / "config.json").write_text((ROOT / "tests/profilers/llama3-8b-config.json").read_text())
    return directory


def test_a_user_error_exits_2_with_one_line(model_dir, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "layers": [{"heads": 3, "ffn": 10}]}))
    code = main(["latency", "--model", str(model_dir), "--plan", str(plan), "--hardware", "h200"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("prunesearch latency: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback_and_exits_1(model_dir):
    """An `OSError` from inside a handler is a bug, not the user's mistake: it is no longer turned into exit 2."""
    script = (
        "import sys\n"
        "import prunesearch.profilers.cli as c\n"
        "def broken(*args):\n"
        "    raise OSError('disk on fire')\n"
        "c.latency_model_for = broken\n"
        "from prunesearch.cli import main\n"
        f"sys.exit(main(['latency', '--model', {str(model_dir)!r}, '--hardware', 'h200']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "OSError: disk on fire" in done.stderr


def test_bugs_propagate_from_main(model_dir, monkeypatch):
    def broken(*args):
        raise ValueError("a bug")

    monkeypatch.setattr("prunesearch.profilers.cli.latency_model_for", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["latency", "--model", str(model_dir), "--hardware", "h200"])


def test_user_errors_converts_only_the_named_types():
    @user_errors(PlanError)
    def handler(exc: Exception) -> None:
        raise exc

    with pytest.raises(CLIError, match="layer 0: bad; layer 1: worse"):
        handler(PlanError(["layer 0: bad", "layer 1: worse"]))
    with pytest.raises(KeyError):
        handler(KeyError("not a user error"))


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(CLIError, match=r"job spec .*missing.json does not exist"):
        read_json(tmp_path / "missing.json", "job spec")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(CLIError, match="is not valid JSON"):
        read_json(bad, "job spec")


def test_validation_message_names_flags():
    errors = [
        {"loc": ("generate_tokens",), "type": "greater_than_equal", "ctx": {"ge": 1}, "input": 0, "msg": "x"},
        {"loc": ("workload", "dtype"), "type": "enum", "input": "int8", "msg": "Input should be 'fp32'"},
    ]
    message = validation_message(errors, {"generate_tokens": "--generate"})
    assert message == "--generate: must be at least 1 (got 0); workload.dtype: Input should be 'fp32'"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", SUB_CLIS)
def test_sub_clis_do_not_import_the_top_level_cli(path):
    assert "prunesearch.cli" not in _imports(ROOT / path)


def test_cliutil_is_a_leaf():
    assert not {name for name in _imports(ROOT / "prunesearch/cliutil.py") if name.startswith("prunesearch")}


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "migrations").rglob("*.py")))
def test_migrations_import_nothing_from_the_service(path):
    assert not {name for name in _imports(ROOT / path) if name.startswith("prunesearch.service")}


def test_export_has_both_forms_in_one_parser():
    from prunesearch.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    flags = {opt for action in sub.choices["export"]._actions for opt in action.option_strings}
    assert {"--trial", "--dtype", "--server", "--wait", "--storage", "--study", "--out"} <= flags


def test_output_dir_is_made_or_refused_in_one_line(tmp_path):
    from prunesearch.cliutil import output_dir

    assert output_dir(tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CLIError, match=r"--out .*file cannot be used as a directory"):
        output_dir(blocker)
