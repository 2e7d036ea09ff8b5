"""lm-evaluation-harness task configs for local files, built as the dicts its YAML files load into.

- A text file (`.txt`: the whole file is one document; `.jsonl`: one document per line, its "text") becomes a
  `loglikelihood_rolling` task: word and byte perplexity and bits per byte, as the harness's wikitext task reports
  them. Bits per byte do not depend on the tokenizer, so they compare models with different vocabularies.
- A multiple-choice JSONL file (one `{"question": str, "choices": [str, ...], "answer": index}` per line) becomes
  a `multiple_choice` task scored by accuracy and length-normalised accuracy.

Pure logic apart from reading the files it checks: no torch, no lm_eval import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prunesearch.choices import TextFormat

TEXT_FIELD = "text"
MC_FIELDS = ("question", "choices", "answer")
PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
YAML_SUFFIXES = (".yaml", ".yml")
# Checked lines of a JSONL file before the run starts (the harness reads the rest; a later bad line fails there).
_CHECK_LINES = 10_000


class TaskFileError(ValueError):
    """A task file that cannot be evaluated: missing, not UTF-8, empty, or not in the expected schema."""


def task_name(prefix: str, path: Path) -> str:
    """A harness task name for a file: `prefix` and the file's stem, lowercased, other characters as `_`."""
    return f"{prefix}_" + re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_")


def perplexity_task(path: Path, name: str | None = None) -> dict[str, Any]:
    """A rolling-loglikelihood task over a local text file (checked first: it exists and holds text)."""
    path = Path(path).resolve()
    builder = _check_text_file(path)
    dataset_kwargs: dict[str, Any] = {"data_files": {"test": str(path)}}
    if builder == "text":
        dataset_kwargs["sample_by"] = "document"  # the whole file is one document, as the project reads it
    return {
        "task": name or task_name("ppl", path),
        "dataset_path": builder,
        "dataset_kwargs": dataset_kwargs,
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{" + TEXT_FIELD + "}}",
        "metric_list": [{"metric": metric} for metric in PERPLEXITY_METRICS],
        "metadata": {"version": 1.0, "source": str(path)},
    }


def multiple_choice_task(path: Path, name: str | None = None) -> dict[str, Any]:
    """A multiple-choice task over a local JSONL file of {"question", "choices", "answer"} lines."""
    path = Path(path).resolve()
    _check_multiple_choice(path)
    return {
        "task": name or task_name("mc", path),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "choices",  # column names: the harness reads the list and the index as they are
        "doc_to_target": "answer",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "source": str(path)},
    }


def is_yaml(value: str) -> bool:
    return Path(value).suffix.lower() in YAML_SUFFIXES


def is_multiple_choice_file(value: str) -> bool:
    return Path(value).suffix.lower() == TextFormat.JSONL


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise TaskFileError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            return [line for _, line in zip(range(_CHECK_LINES), f, strict=False)]
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _check_text_file(path: Path) -> str:
    """The `datasets` builder that reads `path`: "text" for .txt, "json" for .jsonl with a "text" field."""
    suffix = path.suffix.lower()
    if suffix not in (TextFormat.TXT, TextFormat.JSONL):
        raise TaskFileError(f"{path}: text for perplexity must be a .txt or .jsonl file")
    lines = _read_lines(path)
    if not any(line.strip() for line in lines):
        raise TaskFileError(f"{path}: the file is empty")
    if suffix == TextFormat.TXT:
        return "text"
    for number, record in _records(path, lines):
        if not isinstance(record.get(TEXT_FIELD), str):
            raise TaskFileError(f"{path}:{number}: each line must be an object with a string {TEXT_FIELD!r}")
    return "json"


def _check_multiple_choice(path: Path) -> None:
    lines = _read_lines(path)
    records = list(_records(path, lines))
    if not records:
        raise TaskFileError(f"{path}: the file holds no questions")
    for number, record in records:
        choices = record.get("choices")
        if not isinstance(record.get("question"), str):
            raise TaskFileError(f"{path}:{number}: 'question' must be a string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TaskFileError(f"{path}:{number}: 'choices' must be a list of at least two strings")
        answer = record.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            last = len(choices) - 1
            raise TaskFileError(f"{path}:{number}: 'answer' must be the index of the right choice (0..{last})")


def _records(path: Path, lines: list[str]):
    """(line number, object) for each non-blank line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TaskFileError(f"{path}:{number}: each line must be a JSON object")
        yield number, record
