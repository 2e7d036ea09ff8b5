"""Calibration files: loading documents, fingerprinting them, and cutting them into token blocks.

This is calibration *text*, the documents importance statistics and the proxy read (the service stores uploads of
it as datasets). The latency model's calibration is another thing: `profilers.calibrate.LatencyFit`.

Two formats: `.txt` (documents separated by blank lines) and `.jsonl` (one object per line with either
`"text"` or chat `"messages"`). For chat, the model reads the whole rendered conversation, while vocabulary
coverage counts only what the assistant says (`CalibrationDoc.coverage_text`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunesearch.choices import TextFormat, values

SUPPORTED_EXTENSIONS = tuple(values(TextFormat))
_BLANK_LINES = re.compile(r"\n\s*\n")


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or holds too little text."""


@dataclass(frozen=True)
class CalibrationDoc:
    """One calibration document."""

    text: str  # what the model reads (for chat: the whole conversation rendered)
    coverage_text: str  # what counts for vocabulary coverage (for chat: assistant turns only; else == text)
    messages: list[dict[str, str]] | None = None  # chat: the conversation as read (self-data draws prompts from it)


def load_calibration(path: str | Path, tokenizer: Any = None) -> list[CalibrationDoc]:
    """Read a `.txt` or `.jsonl` calibration file into documents.

    `tokenizer` is used only to render chat conversations with its chat template, when it has one.
    Raises `CalibrationError` naming the file (and line, for `.jsonl`) on any problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise CalibrationError(
            f"{path}: unsupported calibration file extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    docs = _parse_txt(content) if suffix == TextFormat.TXT else _parse_jsonl(content, path, tokenizer)
    if not docs:
        raise CalibrationError(f"{path}: calibration file holds no documents")
    return docs


def _parse_txt(content: str) -> list[CalibrationDoc]:
    texts = (chunk.strip("\n") for chunk in _BLANK_LINES.split(content))
    return [CalibrationDoc(text=t, coverage_text=t) for t in texts if t.strip()]


def _parse_jsonl(content: str, path: Path, tokenizer: Any) -> list[CalibrationDoc]:
    docs = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{where}: invalid JSON ({exc.msg})") from exc
        doc = _record_to_doc(record, where, tokenizer)
        if doc.text.strip():
            docs.append(doc)
    return docs


def _record_to_doc(record: Any, where: str, tokenizer: Any) -> CalibrationDoc:
    if not isinstance(record, dict):
        raise CalibrationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str):
            raise CalibrationError(f"{where}: 'text' must be a string, got {type(text).__name__}")
        return CalibrationDoc(text=text, coverage_text=text)
    if "messages" in record:
        messages = _check_messages(record["messages"], where)
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        text = render_chat(messages, tokenizer)
        return CalibrationDoc(text=text, coverage_text="\n".join(assistant), messages=messages)
    raise CalibrationError(f"{where}: object has neither 'text' nor 'messages'")


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise CalibrationError(f"{where}: 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        ok = isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))
        if not ok:
            raise CalibrationError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    return messages


def render_chat(messages: list[dict[str, str]], tokenizer: Any, *, add_generation_prompt: bool = False) -> str:
    """A conversation as text: the tokenizer's chat template when it has one, else `role: content` lines.
    `add_generation_prompt` opens an assistant turn after it (a prompt for the model to answer)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text + "\nassistant:" if add_generation_prompt else text


def calibration_fingerprint(docs: Sequence[CalibrationDoc]) -> str:
    """A stable, order-sensitive sha256 hex digest of the documents' texts (and coverage texts)."""
    digest = hashlib.sha256()
    for doc in docs:
        for part in (doc.text, doc.coverage_text):
            data = part.encode("utf-8")
            # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def token_blocks(tokenizer: Any, docs: Iterable[CalibrationDoc], seq_len: int, max_tokens: int) -> torch.Tensor:
    """Tokenize documents into a LongTensor of non-overlapping blocks, shape [n_blocks, seq_len].

    Documents are encoded without special tokens, joined by the tokenizer's eos id (when it has one) and
    concatenated; at most `max_tokens` tokens (rounded down to whole blocks) are used, and documents past
    that point are never tokenized. Raises `CalibrationError` if not even one full block is available.
    """
    if seq_len <= 0 or max_tokens <= 0:
        raise CalibrationError(f"seq_len and max_tokens must be positive (got {seq_len}, {max_tokens})")
    wanted = (max_tokens // seq_len) * seq_len
    if wanted == 0:
        raise CalibrationError(f"max_tokens={max_tokens} is smaller than one block of seq_len={seq_len}")
    ids = _collect_ids(tokenizer, docs, wanted)
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise CalibrationError(
            f"calibration text has only {len(ids)} tokens, fewer than one block of seq_len={seq_len}"
        )
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def _collect_ids(tokenizer: Any, docs: Iterable[CalibrationDoc], wanted: int) -> list[int]:
    eos_id = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for doc in docs:
        if ids and eos_id is not None:
            ids.append(eos_id)
        ids.extend(tokenizer.encode(doc.text, add_special_tokens=False))
        if len(ids) >= wanted:
            break
    return ids[:wanted]
