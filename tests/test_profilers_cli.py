"""`prunesearch latency` end to end: in-process through `main`, and once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunesearch.cli import main
from prunesearch.profilers.calibrate import LatencyFit, save_latency_fit
from prunesearch.profilers.device import cpu_facts, device_key
from prunesearch.profilers.hardware import BUILTIN_PROFILES

HERE = Path(__file__).parent / "profilers"
FIELDS = {"prefill_ms", "decode_ms_per_token", "total_ms", "tokens_per_s", "params", "weight_bytes"}
FIELDS |= {"kv_bytes_per_token", "fits_in_memory", "method"}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    directory = tmp_path / "llama3-8b"
    directory.mkdir()
    (directory / "config.json").write_text((HERE / "llama3-8b-config.json").read_text())
    return directory


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    directory = tmp_path / "tiny"
    directory.mkdir()
    tiny = json.loads((HERE / "tiny_configs.json").read_text())["llama"]
    (directory / "config.json").write_text(json.dumps(tiny))
    return directory


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(["latency", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.mark.parametrize("hardware", sorted(BUILTIN_PROFILES))
def test_prices_llama3_8b_on_every_builtin_profile(capsys, model_dir, hardware):
    code, result, _ = run(capsys, "--model", str(model_dir), "--hardware", hardware, "--batch", "1")
    assert code == 0 and set(result) >= FIELDS
    assert result["method"] == f"roofline:{hardware}:graphs" and result["workload"]["dtype"] == "bf16"
    assert result["workload"]["engine"] == "graphs" and result["details"]["engine"] == "graphs"
    assert result["params"] == pytest.approx(8.03e9, rel=0.01)


def test_engine_flag_prices_eager_slower_and_local_refuses_graphs(capsys, model_dir):
    _, graphs, _ = run(capsys, "--model", str(model_dir), "--hardware", "h100-sxm")
    code, eager, _ = run(capsys, "--model", str(model_dir), "--hardware", "h100-sxm", "--engine", "eager")
    assert code == 0 and eager["method"] == "roofline:h100-sxm:eager"
    assert eager["decode_ms_per_token"] >= 1.5 * graphs["decode_ms_per_token"]
    code, _, err = run(capsys, "--model", str(model_dir), "--hardware", "local", "--engine", "graphs")
    assert code == 2 and "runs transformers eager" in err


def test_plan_and_dtype(capsys, model_dir, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"heads": 16, "ffn": 8192}] * 32, "vocab": 32000}))
    code, pruned, _ = run(capsys, "--model", str(model_dir), "--plan", str(plan), "--hardware", "l4", "--dtype", "fp16")
    _, dense, _ = run(capsys, "--model", str(model_dir), "--hardware", "l4", "--dtype", "fp16")
    assert code == 0 and pruned["total_ms"] < dense["total_ms"] and pruned["params"] < dense["params"]


def test_custom_profile_file(capsys, model_dir, tmp_path):
    profile = tmp_path / "mine.json"
    profile.write_text(json.dumps(BUILTIN_PROFILES["a100-80g"].to_dict() | {"name": "mine"}))
    code, result, _ = run(capsys, "--model", str(model_dir), "--hardware", str(profile))
    assert code == 0 and result["method"] == "roofline:mine:graphs"


def test_local_calibrated_and_measured_on_cpu(capsys, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path))
    args = ["--model", str(tiny_dir), "--prompt", "16", "--generate", "3"]
    code, _, err = run(capsys, *args, "--hardware", "local-calibrated")
    assert code == 2 and "latency-calibrate" in err
    key = device_key(cpu_facts(__import__("torch").get_num_threads()))
    save_latency_fit(LatencyFit(key, BUILTIN_PROFILES["l4"]))
    code, result, _ = run(capsys, *args, "--hardware", "local-calibrated")
    assert code == 0 and result["method"].startswith("calibrated") and result["workload"]["dtype"] == "fp32"
    code, result, _ = run(capsys, *args, "--hardware", "measured", "--repeats", "3")
    assert code == 0 and result["method"].startswith("measured")
    decode = result["details"]["decode"]
    assert decode["repeats"] == 3 and decode["p10_ms"] <= decode["median_ms"] <= decode["p90_ms"]
    assert decode["spread_pct"] == pytest.approx((decode["p90_ms"] - decode["p10_ms"]) / decode["median_ms"] * 100)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hardware", "tpu-v9"], "unknown hardware 'tpu-v9'; known: a100-80g, h100-sxm"),
        (["--hardware", "h200", "--plan", "/nonexistent.json"], "plan file /nonexistent.json does not exist"),
        (["--hardware", "h200", "--batch", "0"], "at least 1"),
        (["--hardware", "h200", "--generate", "0"], "--generate: must be at least 1 (got 0)"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(capsys, model_dir, args, message):
    code, _, err = run(capsys, "--model", str(model_dir), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line


def test_invalid_plan_and_missing_model(capsys, model_dir, tmp_path):
    plan = tmp_path / "bad.json"
    plan.write_text(json.dumps({"layers": [{"heads": 3, "ffn": 8192}] * 32}))
    code, _, err = run(capsys, "--model", str(model_dir), "--plan", str(plan), "--hardware", "h200")
    assert code == 2 and "not a multiple of the GQA group size 4" in err
    code, _, err = run(capsys, "--model", str(tmp_path / "nowhere"), "--hardware", "h200")
    assert code == 2 and "has no config.json" in err


def test_subprocess(model_dir):
    argv = [
        sys.executable,
        "-m",
        "prunesearch.cli",
        "latency",
        "--model",
        str(model_dir),
        "--hardware",
        "h100-sxm",
    ]
    done = subprocess.run([*argv, "--prompt", "1024"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workload"]["prompt_tokens"] == 1024
    bad = subprocess.run([*argv[:-1], "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown hardware 'nope'" in bad.stderr


def test_latency_calibrate_saves_a_calibration_for_this_device(capsys, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path))
    argv = ["latency-calibrate", "--model", str(tiny_dir), "--plans", "3", "--prompt", "8", "--generate", "3"]
    assert main(argv) == 0
    saved = json.loads(capsys.readouterr().out)
    # the model's 3 plans, then 7 designed shapes around it, each dense and with one random plan
    assert Path(saved["saved"]).is_file() and saved["metrics"]["fit_samples"] == 3 + 7 * 2
    assert saved["engine"] == "eager" and saved["profile"]["launch_overhead_us"] > 0  # bounded: never 0
    code, result, _ = run(capsys, "--model", str(tiny_dir), "--hardware", "local-calibrated")
    assert code == 0 and result["method"].startswith("calibrated")
