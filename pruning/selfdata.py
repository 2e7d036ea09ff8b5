"""Self-data distillation: text the dense teacher writes itself, from prompts drawn from the user's data.

Healing on the teacher's own samples keeps the student close to the teacher's distribution rather than the
data's (Self-Data Distillation, in the seed papers). Prompts are the first `prompt_tokens` tokens of randomly
drawn documents; for chat `.jsonl` the prompt is a conversation up to its first user turn and the teacher writes
the assistant's answer. Results are cached under `$PRUNESEARCH_HOME/cache/selfdata`, keyed by the teacher's
fingerprint, the data's fingerprint and the generation settings.

`temperature` is the teacher's sampling temperature (1: its own distribution, the default); 0 decodes greedily.
Greedy self-data is what a draft used with greedy speculative decoding faces: the target's greedy continuations,
which are not calibration text (they repeat, and use other contexts). Greedy continuations of a prompt are all
the same, so greedy prompts are drawn without replacement (a fresh shuffle each time all have been used).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunesearch.home import home_dir

from .calibration import CalibrationDoc, calibration_fingerprint, render_chat
from .healdata import HealDataError

SELF_DATA_FORMAT = 1


@dataclass(frozen=True)
class SelfDataSettings:
    tokens: int  # generated tokens wanted in all
    seed: int = 0
    prompt_tokens: int = 32
    max_new_tokens: int = 224
    batch: int = 8
    temperature: float = 1.0  # of the teacher's sampling; 0 decodes greedily


def _cache_fields(settings: SelfDataSettings) -> dict:
    """The settings that key the cache; the default temperature is left out so earlier caches stay valid."""
    fields = asdict(settings)
    if fields["temperature"] == 1.0:
        del fields["temperature"]
    return fields


def cache_path(teacher_fingerprint: str, docs: list[CalibrationDoc], settings: SelfDataSettings) -> Path:
    key = json.dumps(
        [SELF_DATA_FORMAT, teacher_fingerprint, calibration_fingerprint(docs), _cache_fields(settings)], sort_keys=True
    )
    return home_dir() / "cache" / "selfdata" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.jsonl"


def self_data_docs(
    teacher,
    tokenizer,
    data_path: Path,
    docs: list[CalibrationDoc],
    settings: SelfDataSettings,
    *,
    teacher_fingerprint: str,
) -> tuple[list[CalibrationDoc], bool]:
    """`settings.tokens` tokens of teacher-written documents, from the cache when present. Returns (docs, cached)."""
    if settings.temperature < 0:
        raise HealDataError(f"self-data temperature must be >= 0 (0 is greedy), got {settings.temperature}")
    path = cache_path(teacher_fingerprint, docs, settings)
    if path.is_file():
        return _read(path), True
    prompts = _prompts(tokenizer, docs, settings)
    if not prompts:
        raise HealDataError(f"{data_path}: no document gives a self-data prompt (each needs at least 2 tokens)")
    texts = _generate(teacher, tokenizer, prompts, settings)
    _write(path, texts)
    return [CalibrationDoc(text=t, coverage_text=t) for t in texts], False


def _prompts(tokenizer, docs: list[CalibrationDoc], settings: SelfDataSettings) -> list[list[int]]:
    """Token ids of every candidate prompt (chat: up to the first user turn; text: a document's opening)."""
    chats = [prompt for doc in docs if (prompt := _up_to_first_user_turn(doc.messages))]
    if chats:
        texts = (render_chat(messages, tokenizer, add_generation_prompt=True) for messages in chats)
        return [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    encoded = (tokenizer.encode(doc.text, add_special_tokens=False) for doc in docs)
    return [ids[: settings.prompt_tokens] for ids in encoded if len(ids) >= 2]


def _up_to_first_user_turn(messages: list[dict[str, str]] | None) -> list[dict[str, str]]:
    first_user = next((i for i, m in enumerate(messages or []) if m["role"] == "user"), None)
    return messages[: first_user + 1] if first_user is not None else []


@torch.inference_mode()
def _generate(teacher, tokenizer, prompts: list[list[int]], settings: SelfDataSettings) -> list[str]:
    draw = _prompt_draw(prompts, settings)
    device = next(teacher.parameters()).device
    texts, produced = [], 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        while produced < settings.tokens:
            batch = [next(draw) for _ in range(settings.batch)]
            new_texts, new_tokens = _generate_batch(teacher, tokenizer, batch, settings, device)
            texts.extend(new_texts)
            produced += max(new_tokens, 1)  # a batch that stops at once still moves towards the end
    return texts


def _prompt_draw(prompts: list[list[int]], settings: SelfDataSettings) -> Iterator[list[int]]:
    """Prompts at random: with replacement when sampling (each continuation differs), without when greedy."""
    rng = random.Random(settings.seed)
    if settings.temperature > 0:
        while True:
            yield rng.choice(prompts)
    while True:
        order = list(prompts)
        rng.shuffle(order)
        yield from order


def _generate_batch(teacher, tokenizer, prompts: list[list[int]], settings, device) -> tuple[list[str], int]:
    """Continuations of left-padded prompts (sampled, or greedy at temperature 0); returns the full texts and
    the count of new tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = teacher.generate(
        input_ids=ids,
        attention_mask=mask,
        **_decoding(settings.temperature),
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=pad,
    )
    texts, count = [], 0
    for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        count += len(row)
        texts.append(tokenizer.decode(prompt + row, skip_special_tokens=True))
    return texts, count


def _decoding(temperature: float) -> dict:
    """`generate` arguments: pure sampling at `temperature` (no top-k / top-p), or greedy at 0."""
    if temperature == 0:
        return {"do_sample": False, "top_k": None, "top_p": None, "temperature": None}
    return {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": temperature}


def _read(path: Path) -> list[CalibrationDoc]:
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [CalibrationDoc(text=t, coverage_text=t) for t in texts]


def _write(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a failed write leaves no partial file in the cache
        tmp.unlink(missing_ok=True)
        raise
