"""`prunesearch prune` / `inspect` end to end on the shared llama-docs checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from prunesearch.cli import main
from prunesearch.pruning.export import default_device, read_token_map
from prunesearch.pruning.modeling import load_pruned
from prunesearch.pruning.plan import PrunePlan

from .factories import LLAMA_DOCS, PYDOCS_CALIB

MIXED_PLAN = {
    "version": 1,
    "layers": [
        {"heads": 8, "ffn": 688},
        {"heads": 4, "ffn": 256},
        {"heads": 0, "ffn": 512},
        {"heads": 0, "ffn": 0},
        {"heads": 8, "ffn": 0},
        {"heads": 6, "ffn": 600},
    ],
    "vocab": 3000,
}
TEXT = "def f(x):\n    return x ** 2  # Überprüfung ✓ 🐍\n\tKernel: spin_lock_irqsave()\n"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A 40k-character slice of the shared calibration text, so the test stays fast."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(PYDOCS_CALIB.read_text()[:40_000])
    return path


def _run(capsys, *argv: str) -> tuple[int, dict | str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_inspect_prints_architecture_and_dense_plan(capsys):
    code, info = _run(capsys, "inspect", "--model", str(LLAMA_DOCS))
    assert code == 0
    assert (info["layers"], info["heads"], info["kv_groups"], info["mlp"], info["vocab"]) == (
        6,
        8,
        8,
        688,
        8192,
    )
    assert 8_800_000 < info["parameters"] < 9_100_000
    assert PrunePlan.from_dict(info["dense_plan"]).is_uniform()
    assert info["dense_plan"]["layers"] == [{"heads": 8, "ffn": 688}] * 6


def test_prune_mixed_plan_with_trimmed_vocabulary(capsys, tmp_path, calibration, prunesearch_home):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(MIXED_PLAN))
    out = tmp_path / "pruned"
    argv = [
        "prune",
        "--model",
        str(LLAMA_DOCS),
        "--plan",
        str(plan_file),
        "--out",
        str(out),
        "--calibration",
        str(calibration),
        "--calibration-tokens",
        "4096",
    ]
    code, summary = _run(capsys, *argv)
    assert code == 0, summary
    assert summary["criterion"] == "flap" and not summary["stock_loadable"]
    assert summary["vocab"] == {"before": 8192, "after": 3000}
    assert summary["parameters"]["after"] < summary["parameters"]["before"] * 0.6
    assert [x["heads"] for x in summary["layers"]] == [8, 4, 0, 8, 6]
    assert not summary["importance_cached"]
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "prune_plan.json",
        "provenance.json",
        "token_map.json",
        "modeling_pruned.py",
    ):
        assert (out / name).is_file(), name
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["criterion"] == "flap" and len(provenance["calibration_fingerprint"]) == 64

    model = load_pruned(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert int(ids.max()) < 3000
    assert tokenizer.decode(ids[0]) == TEXT
    remote = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    torch.testing.assert_close(remote(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 8

    # the second run reads the importance statistics from the cache
    code, again = _run(capsys, *argv[:-6], "--out", str(tmp_path / "again"), *argv[-4:])
    assert code == 0 and again["importance_cached"]


def test_uniform_plan_exports_a_stock_checkpoint(capsys, tmp_path, calibration, prunesearch_home):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"layers": [{"heads": 4, "ffn": 512}] * 6}))
    code, summary = _run(
        capsys,
        "prune",
        "--model",
        str(LLAMA_DOCS),
        "--plan",
        str(plan_file),
        "--out",
        str(tmp_path / "u"),
        "--calibration",
        str(calibration),
        "--calibration-tokens",
        "2048",
        "--criterion",
        "flap",
        "--dtype",
        "bf16",
    )
    assert code == 0, summary
    assert summary["stock_loadable"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "u")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.bfloat16
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 512
    assert model.config.attention_bias and model.config.mlp_bias  # FLAP's compensation biases


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"layers": [{"heads": 8, "ffn": 688}] * 5}, "plan has 5 layers but the model has 6"),
        ({"layers": [{"heads": 9, "ffn": 688}] * 6}, "heads 9 is more than the model's 8"),
        ({"layers": [{"heads": 8, "ffn": 688}] * 6, "vocab": 1}, "smaller than the number of special tokens"),
    ],
)
def test_bad_plans_exit_2_with_a_clear_message(capsys, tmp_path, plan, message):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    code, err = _run(
        capsys, "prune", "--model", str(LLAMA_DOCS), "--plan", str(plan_file), "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "--model", "/nonexistent"], "not a model directory"),
        (
            ["prune", "--model", str(LLAMA_DOCS), "--plan", "/nonexistent.json", "--out", "/tmp/x"],
            "does not exist",
        ),
    ],
)
def test_bad_paths_exit_2(capsys, argv, message):
    code, err = _run(capsys, *argv)
    assert code == 2 and message in err


def test_bad_calibration_file_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "calib.csv"
    bad.write_text("a,b\n")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"layers": [{"heads": 8, "ffn": 344}] * 6}))
    code, err = _run(
        capsys,
        "prune",
        "--model",
        str(LLAMA_DOCS),
        "--plan",
        str(plan_file),
        "--out",
        str(tmp_path / "o"),
        "--calibration",
        str(bad),
    )
    assert code == 2 and ".csv" in err


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_calibration_that_is_not_utf8_exits_2(capsys, tmp_path, suffix):
    latin1 = tmp_path / f"calib{suffix}"
    latin1.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 50)
    argv = ["prune", "--model", str(LLAMA_DOCS), "--plan", str(EXAMPLE_PLAN), "--out", str(tmp_path / "o")]
    code, err = _run(capsys, *argv, "--calibration", str(latin1))
    last = err.strip().splitlines()[-1]  # stderr may also hold transformers' loading bars
    assert code == 2 and "Traceback" not in err and last.startswith("prunesearch prune: error:")
    assert "not UTF-8 text" in last and str(latin1) in last


def test_console_script_runs_as_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "prunesearch.cli", "inspect", "--model", str(LLAMA_DOCS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model_type"] == "llama"


EXAMPLE_PLAN = Path(__file__).resolve().parents[1] / "examples" / "plan-uniform.json"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "/nonexistent"], "/nonexistent is not a model directory"),
        (["--model", str(LLAMA_DOCS), "--device", "cuda:3"], "no CUDA GPU is available")
        if not torch.cuda.is_available()
        else (["--model", str(LLAMA_DOCS), "--device", "npu"], "unknown device"),
    ],
)
def test_bad_model_or_device_exit_2(capsys, tmp_path, extra, message):
    code, err = _run(capsys, "prune", "--plan", str(EXAMPLE_PLAN), "--out", str(tmp_path / "o"), *extra)
    assert code == 2 and message in err


@pytest.mark.parametrize("criterion", ["wanda", "flap"])
def test_criterion_that_needs_calibration_without_it_exits_2_before_loading(capsys, tmp_path, criterion):
    out = tmp_path / "o"
    argv = ["prune", "--model", str(LLAMA_DOCS), "--plan", str(EXAMPLE_PLAN), "--out", str(out)]
    code, err = _run(capsys, *argv, "--criterion", criterion)
    assert code == 2 and "Traceback" not in err
    assert f"--criterion {criterion} needs calibration data" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before the output folder is made or the model loads


def test_padded_vocabulary_trims_to_the_tokenizer(capsys, tmp_path, prunesearch_home):
    """A model whose embedding is padded beyond its tokenizer (as Qwen2's is) can keep exactly the tokenizer's
    tokens: the padding rows go, the token ids stay."""
    model_dir = tmp_path / "padded"
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=8256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    transformers.AutoTokenizer.from_pretrained(LLAMA_DOCS).save_pretrained(model_dir)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"layers": [{"heads": 4, "ffn": 64}] * 2, "vocab": 8192}))
    code, summary = _run(
        capsys, "prune", "--model", str(model_dir), "--plan", str(plan_file), "--out", str(tmp_path / "o")
    )
    assert code == 0, summary
    assert summary["vocab"] == {"before": 8256, "after": 8192}
    assert read_token_map(tmp_path / "o") == list(range(8192))
    assert read_token_map(LLAMA_DOCS) is None  # an untrimmed checkpoint has no token map


@pytest.mark.parametrize(("cuda", "device"), [(True, "cuda"), (False, "cpu")])
def test_the_default_device_is_the_gpu_where_there_is_one(monkeypatch, cuda, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert default_device() == device


@pytest.mark.parametrize("extra", [[], ["--calibration", str(PYDOCS_CALIB), "--draft-temperature", "-1"]])
def test_draft_temperature_needs_calibration_and_a_temperature_of_zero_or_more(capsys, tmp_path, extra):
    out = tmp_path / "o"
    argv = ["prune", "--model", str(LLAMA_DOCS), "--plan", str(EXAMPLE_PLAN), "--out", str(out)]
    code, err = _run(capsys, *argv, *(extra or ["--draft-temperature", "0"]))
    assert code == 2 and "--draft-temperature needs --calibration" in err and "Traceback" not in err
    assert not out.exists()


def test_a_draft_cut_by_hand_keeps_the_tokens_the_model_emits(capsys, tmp_path, prunesearch_home):
    from prunesearch.pruning.calibration import load_calibration
    from prunesearch.pruning.export import load_base_model
    from prunesearch.pruning.targetmass import as_weights, calibration_stream, target_token_mass
    from prunesearch.pruning.vocab import select_kept_tokens

    from .factories import TINY_LLAMA

    plan = {"layers": [{"heads": 4, "ffn": 256}] * 2 + [{"heads": 0, "ffn": 0}] * 2, "vocab": 400}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    calib = TINY_LLAMA / "calib.txt"
    argv = ["prune", "--model", str(TINY_LLAMA), "--plan", str(plan_file), "--calibration", str(calib)]
    code, summary = _run(capsys, *argv, "--seq-len", "64", "--draft-temperature", "0", "--out", str(tmp_path / "d"))
    assert code == 0, summary
    model, tokenizer = load_base_model(TINY_LLAMA)
    emitted = target_token_mass(model, calibration_stream(tokenizer, load_calibration(calib), 64), 0.0)[0]
    assert read_token_map(tmp_path / "d") == select_kept_tokens(tokenizer, as_weights(emitted), 400)
    provenance = json.loads((tmp_path / "d" / "provenance.json").read_text())
    assert provenance["vocabulary"] == {"kept_by": "target emissions on the calibration text", "temperature": 0.0}
    code, plain = _run(capsys, *argv, "--seq-len", "64", "--out", str(tmp_path / "p"))
    assert code == 0, plain
    assert read_token_map(tmp_path / "p") != read_token_map(tmp_path / "d")
    assert json.loads((tmp_path / "p" / "provenance.json").read_text())["vocabulary"] == {
        "kept_by": "calibration token frequency"
    }
