"""`prunesearch evaluate`: lm-evaluation-harness on exports. The perplexity it reports equals the project's own
(`pruning.evaluate.rolling_perplexity`, same windows) within 0.5%, for a stock model and for a heterogeneous export
with a trimmed vocabulary; multiple-choice JSONL scores as the model's own log-likelihoods say; bad input and a
missing harness get one-line errors."""

from __future__ import annotations

import json
import math
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from prunesearch.choices import DType
from prunesearch.cli import main
from prunesearch.pruning.evaluate import perplexity, rolling_perplexity, rolling_windows
from prunesearch.pruning.lmeval import EvalRequest, evaluate, load_model
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import PrunePlan

get_rolling_token_windows = pytest.importorskip(
    "lm_eval.utils", reason="lm-eval is the [eval] extra (installed with [dev])"
).get_rolling_token_windows

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CALIB = TINY / "calib.txt"
MIXED_PLAN = {  # heterogeneous (remote-code modeling) and a trimmed vocabulary
    "version": 1,
    "layers": [{"heads": 4, "ffn": 256}, {"heads": 2, "ffn": 128}, {"heads": 0, "ffn": 64}, {"heads": 2, "ffn": 0}],
    "vocab": 700,
}
PARITY = 0.005  # the target: lm-eval's perplexity within 0.5% of the project's


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """About 700 tokens of the tiny model's own text (several windows of 64, and a partial last one)."""
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(CALIB.read_text()[:3000])
    return path


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNESEARCH_HOME", str(root / "home"))
        calibration = ImportanceCalibration(path=CALIB, seq_len=64, max_tokens=4096)
        prune_checkpoint(TINY, PrunePlan.from_dict(MIXED_PLAN), root / "export", calibration=calibration)
    return root / "export"


@pytest.fixture(scope="module")
def dense_report(text_file) -> dict:
    return evaluate(EvalRequest(model=TINY, data=(text_file,), device="cpu", max_length=64, batch_size=4))


@pytest.mark.parametrize(("n_tokens", "max_length"), [(1, 4), (4, 4), (5, 4), (17, 4), (100, 7), (64, 64), (3, 1)])
def test_rolling_windows_are_the_harness_windows(n_tokens, max_length):
    """Every token scored once, with exactly the inputs lm-eval's `get_rolling_token_windows` gives it."""
    tokens = list(range(1, n_tokens + 1))
    sequence = [0, *tokens]  # 0: the prefix token
    windows = rolling_windows(n_tokens, max_length)
    ours = [(sequence[start : end - 1], sequence[end - scored : end]) for start, end, scored in windows]
    theirs = [(list(inputs), list(scored)) for inputs, scored in get_rolling_token_windows(tokens, 0, max_length, 1)]
    assert ours == theirs
    assert sorted(t for _, scored in ours for t in scored) == tokens


def _project(model_dir: Path, text: str, max_length: int):
    model, tokenizer = load_model(model_dir, device="cpu", dtype=DType.FP32)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return rolling_perplexity(model, tokenizer, text, max_length=max_length, prefix_token_id=prefix, batch_size=3)


def _assert_parity(metrics: dict, ours, text: str) -> None:
    n_bytes, n_words = len(text.encode()), len(re.split(r"\s+", text))  # the harness's counts
    expected = {
        "byte_perplexity": math.exp(ours.nll / n_bytes),
        "bits_per_byte": ours.nll / n_bytes / math.log(2),
        "word_perplexity": math.exp(ours.nll / n_words),
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=PARITY), name


def test_perplexity_matches_the_projects_evaluation(text_file, dense_report):
    """A stock checkpoint: the harness's figures equal the project's over the same windows (here to ~1e-5)."""
    report = dense_report
    text = text_file.read_text()
    ours = _project(TINY, text, 64)
    assert ours.tokens > 6 * 64  # several windows, and a partial one at the end
    metrics = report["results"]["ppl_sample"]
    _assert_parity(metrics, ours, text)
    assert metrics["byte_perplexity"] == pytest.approx(math.exp(ours.nll / len(text.encode())), rel=1e-4)
    assert report["max_length"] == 64 and report["vocabulary"] == {"size": 1024, "trimmed": False}
    # and the project's own protocol (non-overlapping windows, each first token only context) agrees closely
    model, tokenizer = load_model(TINY, device="cpu", dtype=DType.FP32)
    standard = perplexity(model, tokenizer, text, seq_len=65)
    assert standard.token_ppl == pytest.approx(ours.token_ppl, rel=0.1)


def test_heterogeneous_trimmed_export_matches_too(mixed_export, text_file, dense_report):
    """Remote-code modeling and a 700-token vocabulary: loaded the project's way, tokenised by its own tokenizer."""
    assert (mixed_export / "token_map.json").is_file() and (mixed_export / "modeling_pruned.py").is_file()
    report = evaluate(EvalRequest(model=mixed_export, data=(text_file,), device="cpu", max_length=64))
    text = text_file.read_text()
    ours = _project(mixed_export, text, 64)
    _assert_parity(report["results"]["ppl_sample"], ours, text)
    assert report["vocabulary"] == {"size": 700, "trimmed": True}
    # bits per byte compare across the two vocabularies; pruning costs quality
    assert report["results"]["ppl_sample"]["bits_per_byte"] > dense_report["results"]["ppl_sample"]["bits_per_byte"]


def _choice_loglikelihoods(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """Each choice's log-likelihood after the prompt, split into context and continuation as the harness does."""
    context = f"Question: {question}\nAnswer:"
    scores = []
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
        n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)
        scores.append(sum(float(logits[i - 1, whole[i]]) for i in range(n_context, len(whole))))
    return scores


def test_multiple_choice_jsonl_scores_by_the_models_likelihoods(tmp_path):
    """Four answers the model itself prefers and two it does not: accuracy 4/6, whatever the model knows."""
    model, tokenizer = load_model(TINY, device="cpu", dtype=DType.FP32)
    words = CALIB.read_text().split()
    rng = random.Random(0)
    rows = []
    for index in range(6):
        question = " ".join(rng.sample(words, 6))
        choices = [" ".join(rng.sample(words, 2)) for _ in range(3)]
        best = max(range(3), key=_choice_loglikelihoods(model, tokenizer, question, choices).__getitem__)
        rows.append({"question": question, "choices": choices, "answer": best if index < 4 else (best + 1) % 3})
    path = tmp_path / "quiz.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = evaluate(EvalRequest(model=TINY, tasks=(str(path),), device="cpu"))
    assert report["results"]["mc_quiz"]["acc"] == pytest.approx(4 / 6)


def test_cli_prints_the_table_and_writes_json(text_file, tmp_path, capsys):
    out = tmp_path / "results" / "eval.json"
    code = main(["evaluate", "--model", str(TINY), "--data", str(text_file), "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "bits_per_byte" in printed.out and "ppl_sample" in printed.out and "|" in printed.out
    report = json.loads(out.read_text())
    assert report["max_length"] == 512  # the model's context length by default
    assert 0 < report["results"]["ppl_sample"]["bits_per_byte"] < 8
    assert "WARNING" not in printed.err  # lm-eval's and datasets' chatter stays off the terminal


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to evaluate"),
        (["--data", "missing.txt"], "file not found"),
        (["--tasks", "BAD_MC"], "'choices' must be a list"),
        (["--tasks", "missing.yaml"], "not found"),
        (["--data", "EMPTY"], "empty"),
        (["--data", "DUP", "--batch-size", "0"], "batch size"),
        (["--data", "DUP", "--device", "cuda:7"], "cuda"),
        (["--data", "DUP", "--out", "."], "is a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD_MC.jsonl").write_text(json.dumps({"question": "q", "choices": "ab", "answer": 0}) + "\n")
    (tmp_path / "EMPTY.txt").write_text("\n\n")
    (tmp_path / "DUP.txt").write_text("some text\n")
    args = [{"BAD_MC": "BAD_MC.jsonl", "EMPTY": "EMPTY.txt", "DUP": "DUP.txt"}.get(a, a) for a in args]
    code = main(["evaluate", "--model", str(TINY), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_harness_names_the_extra(text_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    code = main(["evaluate", "--model", str(TINY), "--data", str(text_file), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "prunesearch[eval]"' in err


def _quiz(path: Path, answers: list[int]) -> Path:
    choices = ["alpha beta", "gamma", "delta"]
    rows = [{"question": f"q{i}", "choices": choices, "answer": a} for i, a in enumerate(answers)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_task_yaml_over_local_files_runs_with_a_limit(tmp_path):
    """lm-eval's own YAML format, reading a local JSONL; `--limit` caps the documents scored."""
    data = _quiz(tmp_path / "quiz.jsonl", [0, 1, 2, 0])
    task = tmp_path / "my_quiz.yaml"
    task.write_text(
        "task: my_quiz\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    report = evaluate(EvalRequest(model=TINY, tasks=(str(task),), device="cpu", limit=2))
    assert set(report["results"]) == {"my_quiz"} and report["limit"] == 2
    assert report["results"]["my_quiz"]["acc"] in (0.0, 0.5, 1.0)  # the mean of 2 questions
    assert report["lm_eval"]["n-shot"] == {"my_quiz": 0}


def test_a_task_yaml_naming_a_missing_file_is_one_line(tmp_path, capsys):
    task = tmp_path / "broken.yaml"
    task.write_text(
        f"task: broken\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'nope.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
    )
    code = main(["evaluate", "--model", str(TINY), "--tasks", str(task), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "could not load the tasks" in err and len(err.strip().splitlines()) == 1, err
