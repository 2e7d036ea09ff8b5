"""The heal's inputs and outputs: checking and loading the student and teacher, perplexity before and after,
and writing the healed checkpoint atomically beside the unhealed one's files."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers

from prunesearch.choices import TORCH_DTYPE_NAMES, DType, TextFormat

from .calibration import load_calibration
from .evaluate import perplexity
from .export import PLAN_FILE, PROVENANCE_FILE, load_base_model, write_model_card
from .modeling import load_pruned

# The repository's perplexity protocol: non-overlapping 256-token windows (pruning/evaluate.py).
EVAL_SEQ_LEN = 256
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.json")


class HealInputError(ValueError):
    """The student, teacher or evaluation files cannot be healed as given."""


def check_export(student_dir: Path) -> None:
    check_model_dir(student_dir)
    if not (student_dir / PLAN_FILE).is_file():
        raise HealInputError(f"{student_dir} is not a prunesearch export (no {PLAN_FILE}); prune it first")


def check_out_dir(out_dir: Path) -> None:
    """`out_dir` may be replaced: it is absent, empty, or an earlier prunesearch checkpoint (it has a plan).
    Anything else is refused, since the heal moves an existing output aside and deletes it."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise HealInputError(f"--out {out_dir} is a file, not a directory")
    if any(out_dir.iterdir()) and not (out_dir / PLAN_FILE).is_file():
        raise HealInputError(
            f"--out {out_dir} is a non-empty directory that is not a prunesearch checkpoint (no {PLAN_FILE}); "
            "the heal would replace it, so name a new or empty directory"
        )


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise HealInputError(f"{path} is not a model directory (no config.json)")


def load_tokenizer(path: Path):
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def check_tokenizers(student_tokenizer, teacher_tokenizer, token_map: list[int] | None) -> None:
    """Every student token must be the teacher's token of the same original id (through the token map)."""
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    if token_map is not None and len(token_map) < len(student_vocab):
        raise HealInputError(f"token map has {len(token_map)} ids but the student's tokenizer {len(student_vocab)}")
    wrong = [
        token
        for token, new_id in student_vocab.items()
        if teacher_vocab.get(token) != (token_map[new_id] if token_map is not None else new_id)
    ]
    if wrong:
        raise HealInputError(
            f"the teacher's tokenizer does not match the student's: {len(wrong)} tokens differ "
            f"(e.g. {wrong[:3]}); heal with the model the student was pruned from"
        )


def load_student(student_dir: Path, device: torch.device):
    """The pruned model in fp32 (the master weights), whatever it was stored in."""
    return load_pruned(student_dir, dtype=torch.float32, device=str(device))


def load_teacher(teacher_dir: Path, device: torch.device):
    """The dense model, frozen: bf16 on CUDA (it only runs forward passes under autocast), fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher, tokenizer = load_base_model(teacher_dir, dtype=dtype, device=str(device))
    teacher.requires_grad_(False)
    return teacher, tokenizer


def check_vocab_sizes(student, teacher, token_map: list[int] | None) -> None:
    teacher_vocab = teacher.config.vocab_size
    if token_map is None and student.config.vocab_size != teacher_vocab:
        raise HealInputError(f"student vocabulary {student.config.vocab_size} != teacher's {teacher_vocab}")
    if token_map is not None and (len(token_map) != student.config.vocab_size or max(token_map) >= teacher_vocab):
        raise HealInputError("the student's token map does not fit its vocabulary and the teacher's")


def eval_text(path: Path, chars: int) -> str:
    """The first `chars` characters of an evaluation file (.txt as is; .jsonl documents joined by blank lines)."""
    if path.suffix.lower() == TextFormat.TXT:
        if not path.is_file():
            raise HealInputError(f"{path}: evaluation file not found")
        try:
            return path.read_text(encoding="utf-8")[:chars]
        except UnicodeDecodeError as exc:
            raise HealInputError(
                f"{path}: evaluation file is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    return "\n\n".join(doc.text for doc in load_calibration(path))[:chars]


def perplexities(model, tokenizer, texts: dict[str, str]) -> dict[str, dict[str, float]]:
    """Token and character perplexity per evaluation file, in fp32 (the model is in fp32 here)."""
    model.eval()
    results = {}
    for name, text in texts.items():
        try:
            ppl = perplexity(model, tokenizer, text, seq_len=EVAL_SEQ_LEN)
        except ValueError as exc:
            raise HealInputError(f"evaluation file {name}: {exc}") from None
        results[name] = {k: v for k, v in asdict(ppl).items() if k in ("token_ppl", "char_ppl")}
    return results


def stored_dtype(student_dir: Path) -> DType:
    """The dtype the unhealed checkpoint was written in (config.json); fp32 when it names none we know."""
    config = json.loads((student_dir / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    by_torch_name = {torch_name: dtype for dtype, torch_name in TORCH_DTYPE_NAMES.items()}
    return by_torch_name.get(name, DType.FP32)


def write_healed(model, student_dir: Path, out_dir: Path, dtype: torch.dtype, heal_record: dict[str, Any]) -> None:
    """Copy the unhealed checkpoint (tokenizer, plan, token map, modeling code, config) to a temporary folder,
    replace its weights with the healed ones, add the heal to its provenance, then rename it into place."""
    out_dir = out_dir.resolve()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint(model, student_dir, tmp, dtype, heal_record)
    except BaseException:  # a failed save or a Ctrl-C leaves no half-written folder beside --out
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out_dir)


def _write_checkpoint(model, student_dir: Path, tmp: Path, dtype: torch.dtype, heal_record: dict[str, Any]) -> None:
    shutil.copytree(student_dir, tmp)
    for pattern in _WEIGHT_PATTERNS:
        for path in tmp.glob(pattern):
            path.unlink()
    model.to(dtype).save_pretrained(tmp)
    # The config and generation config stay byte-for-byte the unhealed ones, apart from the stored dtype,
    # so the healed checkpoint loads exactly as the unhealed one did.
    for name in ("config.json", "generation_config.json"):
        if (student_dir / name).is_file():
            shutil.copyfile(student_dir / name, tmp / name)
    _set_config_dtype(tmp / "config.json", dtype)
    _add_heal_provenance(tmp / PROVENANCE_FILE, heal_record)
    write_model_card(tmp)


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    config = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    if config.get("dtype") == name:
        return
    config["dtype"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _add_heal_provenance(path: Path, heal_record: dict[str, Any]) -> None:
    provenance = json.loads(path.read_text()) if path.is_file() else {}
    provenance.setdefault("heals", []).append(heal_record)
    path.write_text(json.dumps(provenance, indent=2) + "\n")


def _replace_dir(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` is moved aside first and deleted after."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
