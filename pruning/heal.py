"""Heal a pruned checkpoint by distillation from the dense model it was pruned from.

`heal(student_dir, teacher_dir, data, out_dir, settings, progress=...)` trains the student on KL(teacher ||
student) (`distill.py`) over the user's text, and optionally text the teacher writes itself (`selfdata.py`),
then writes a checkpoint with the student's exact shapes, plan, token map and modeling code (`healio.py`).
`full` trains every weight; `lora` trains PEFT adapters on the kept projections and merges them at the end.
The run saves its state every `checkpoint_every` steps (`healstate.py`) and resumes from it when re-run.
Settings, progress reports and results are plain data (`healsettings.py`); the loop is `healloop.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from prunesearch.choices import HealMethod

from . import healio
from .calibration import calibration_fingerprint, load_calibration
from .export import check_device, parse_dtype, read_token_map
from .healdata import training_blocks
from .healloop import prepare_run, train
from .healsettings import HealError, HealProgress, HealResult, HealSettings
from .healstate import HealState, load_state, remove_state, work_dir
from .selfdata import SelfDataSettings, self_data_docs
from .stats import model_fingerprint, token_blocks_fingerprint

__all__ = ["HealError", "HealProgress", "HealResult", "HealSettings", "heal", "loss_curve"]

_CURVE_POINTS = 200


def heal(
    student_dir: str | Path,
    teacher_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    settings: HealSettings | None = None,
    *,
    eval_files: Sequence[str | Path] = (),
    progress: Callable[[HealProgress], None] | None = None,
) -> HealResult:
    """Heal the pruned checkpoint `student_dir` by distillation from `teacher_dir` on the text in `data`
    (.txt, .jsonl or chat .jsonl) and write it to `out_dir`; perplexity before and after on each eval file.

    `progress` is called after every optimizer step; an exception it raises stops the heal (a service's cancel),
    and with `settings.checkpoint_every` the same call later resumes from the last saved step. Bad input raises a
    `ValueError` subclass with a one-line message (`HealError`, `HealInputError`, `HealDataError`, ...)."""
    started = time.perf_counter()
    settings = settings or HealSettings()
    settings.validate()
    student_dir, teacher_dir, data, out_dir = (Path(p) for p in (student_dir, teacher_dir, data, out_dir))
    device = check_device(settings.device)
    healio.check_out_dir(out_dir)
    models = _load_models(student_dir, teacher_dir, device)
    out_dtype = parse_dtype(settings.dtype or healio.stored_dtype(student_dir))
    texts = {str(p): healio.eval_text(Path(p), settings.eval_chars) for p in eval_files}
    blocks, fingerprints = _training_data(models, data, settings)
    student_tokenizer = models.student_tokenizer

    run = prepare_run(settings, models.student, models.teacher, models.token_map, blocks, device)
    folder = work_dir(out_dir.resolve())
    fingerprint = _run_fingerprint(settings, fingerprints, sorted(texts))
    state = load_state(folder, fingerprint, run.student, run.optimizer, run.scheduler)
    resumed_from = state.step if state else 0
    if state is None:  # LoRA's B starts at zero, so the wrapped student is still the unhealed function
        state = HealState(fingerprint=fingerprint, before=healio.perplexities(run.student, student_tokenizer, texts))
    train(run, state, folder, progress)

    merged = run.student.merge_and_unload() if settings.method == HealMethod.LORA else run.student
    after = healio.perplexities(merged, student_tokenizer, texts)
    result = _result(settings, state, out_dir, resumed_from, after)
    healio.write_healed(
        merged, student_dir, out_dir, out_dtype, _record(settings, teacher_dir, data, fingerprints, state, result)
    )
    remove_state(folder)
    return replace(result, wall_seconds=round(time.perf_counter() - started, 3))


@dataclass(frozen=True)
class _Models:
    student: Any
    teacher: Any
    student_tokenizer: Any
    teacher_tokenizer: Any
    token_map: list[int] | None  # student id -> original (teacher) id; None when the vocabulary is whole


def _load_models(student_dir: Path, teacher_dir: Path, device: torch.device) -> _Models:
    """Check that the student is an export and the tokenizers agree (before any weights load), then load."""
    healio.check_export(student_dir)
    healio.check_model_dir(teacher_dir)
    token_map = read_token_map(student_dir)
    student_tokenizer, teacher_tokenizer = healio.load_tokenizer(student_dir), healio.load_tokenizer(teacher_dir)
    healio.check_tokenizers(student_tokenizer, teacher_tokenizer, token_map)
    teacher, _ = healio.load_teacher(teacher_dir, device)
    student = healio.load_student(student_dir, device)
    healio.check_vocab_sizes(student, teacher, token_map)
    return _Models(student, teacher, student_tokenizer, teacher_tokenizer, token_map)


def _training_data(models: _Models, data: Path, settings: HealSettings) -> tuple[torch.Tensor, dict[str, str]]:
    """Training blocks (user data, plus self-data when asked) and the fingerprints that identify the run."""
    docs = load_calibration(data, models.student_tokenizer)
    fingerprints = {
        "student": model_fingerprint(models.student),
        "teacher": model_fingerprint(models.teacher),
        "docs": calibration_fingerprint(docs),
    }
    extra = []
    if settings.self_data_tokens:
        config = SelfDataSettings(
            tokens=settings.self_data_tokens, seed=settings.seed, temperature=settings.self_data_temperature
        )
        extra, _ = self_data_docs(
            models.teacher, models.teacher_tokenizer, data, docs, config, teacher_fingerprint=fingerprints["teacher"]
        )
    budget = settings.total_steps * settings.tokens_per_step
    blocks = training_blocks(models.student_tokenizer, docs, extra, settings.seq_len, budget)
    fingerprints["data"] = token_blocks_fingerprint(blocks)
    return blocks, fingerprints


def _run_fingerprint(settings: HealSettings, fingerprints: dict[str, str], eval_names: list[str]) -> str:
    """What a resumed run must share with the saved one (not where it runs or how often it saves). The
    evaluation files and `eval_chars` count too: the saved state holds the perplexities before the heal."""
    shaping = {k: v for k, v in asdict(settings).items() if k not in ("device", "checkpoint_every")}
    identity = [shaping, fingerprints, eval_names]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _result(settings: HealSettings, state: HealState, out_dir: Path, resumed_from: int, after: dict) -> HealResult:
    tokens = state.step * settings.tokens_per_step
    return HealResult(
        out_dir=str(out_dir),
        method=str(settings.method),
        steps=state.step,
        tokens=tokens,
        seconds=round(state.seconds, 3),
        wall_seconds=0.0,  # set when the checkpoint is written
        tokens_per_second=round(tokens / max(state.seconds, 1e-9), 1),
        resumed_from=resumed_from,
        final_loss=state.losses[-1] if state.losses else math.nan,
        eval={name: {"before": state.before[name], "after": after[name]} for name in after},
    )


def _record(settings, teacher_dir: Path, data: Path, fingerprints, state: HealState, result: HealResult) -> dict:
    """The heal as `provenance.json` records it."""
    return {
        "teacher": str(teacher_dir.resolve()),
        "teacher_fingerprint": fingerprints["teacher"],
        "student_fingerprint": fingerprints["student"],
        "data_file": str(data.resolve()),
        "data_fingerprint": fingerprints["docs"],
        "training_blocks_fingerprint": fingerprints["data"],
        "settings": {**asdict(settings), "lr": settings.learning_rate, "total_steps": settings.total_steps},
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": result.seconds,
        "loss_curve": loss_curve(state.losses),
        "eval": result.eval,
    }


def loss_curve(losses: Sequence[float], points: int = _CURVE_POINTS) -> list[list[float]]:
    """[step, mean loss] over at most `points` equal windows of steps (step: the window's last, 1-based)."""
    if not losses:
        return []
    width = math.ceil(len(losses) / points)
    return [
        [min(start + width, len(losses)), round(sum(chunk) / len(chunk), 6)]
        for start in range(0, len(losses), width)
        if (chunk := losses[start : start + width])
    ]
