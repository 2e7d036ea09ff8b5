"""Heal a pruned checkpoint by distillation from the dense model it was pruned from.

`heal(student_dir, teacher_dir, data, out_dir, settings, progress=...)` trains the student on KL(teacher ||
student) (`distill.py`) over the user's text, and optionally text the teacher writes itself (`selfdata.py`),
then writes a checkpoint with the student's exact shapes, plan, token map and modeling code (`healio.py`).
`full` trains every weight; `lora` trains PEFT adapters on the kept projections and merges them at the end.
The run saves its state every `checkpoint_every` steps (`healstate.py`) and resumes from it when re-run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import get_cosine_schedule_with_warmup

from prunesearch.choices import HealMethod

from . import healio
from .architectures import get_spec
from .calibration import calibration_fingerprint, load_calibration
from .distill import LogitHead, distill_loss
from .export import check_device, parse_dtype, read_token_map
from .healdata import BlockOrder, training_blocks
from .healstate import HealState, load_state, remove_state, save_state, work_dir
from .selfdata import SelfDataSettings, self_data_docs
from .stats import model_fingerprint, token_blocks_fingerprint

DEFAULT_LR = {HealMethod.FULL: 1e-4, HealMethod.LORA: 1e-3}
DEFAULT_TOKENS = 1_000_000
_CURVE_POINTS = 200


class HealError(ValueError):
    """Settings that cannot describe a heal."""


@dataclass(frozen=True)
class HealSettings:
    """How to heal. Exactly one of `tokens` / `steps` sets the budget (`DEFAULT_TOKENS` when neither)."""

    method: HealMethod = HealMethod.FULL
    tokens: int | None = None
    steps: int | None = None
    lr: float | None = None  # None: DEFAULT_LR of the method
    seq_len: int = 256
    batch: int = 8
    grad_accum: int = 1
    temperature: float = 1.0
    ce_weight: float = 0.0
    lora_rank: int = 16
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    self_data_tokens: int = 0
    seed: int = 0
    dtype: str | None = None  # of the healed checkpoint; None: the unhealed checkpoint's
    device: str = "cpu"
    checkpoint_every: int = 0  # steps between saved states; 0: never
    eval_chars: int = healio.EVAL_CHARS

    def validate(self) -> None:
        """Raise `HealError` naming every problem at once."""
        problems = []
        if self.tokens is not None and self.steps is not None:
            problems.append("give either tokens or steps, not both")
        positive = ("seq_len", "batch", "grad_accum", "lora_rank", "temperature", "eval_chars")
        problems += [f"{name} must be positive" for name in positive if getattr(self, name) <= 0]
        optional = ("tokens", "steps", "lr")
        problems += [
            f"{n} must be positive" for n in optional if getattr(self, n) is not None and getattr(self, n) <= 0
        ]
        problems += [
            f"{n} must not be negative" for n in ("self_data_tokens", "checkpoint_every") if getattr(self, n) < 0
        ]
        if not 0.0 <= self.ce_weight <= 1.0:
            problems.append("ce_weight must lie in [0, 1]")
        if self.seq_len < 2:
            problems.append("seq_len must be at least 2 (one input and one target)")
        if problems:
            raise HealError("invalid heal settings: " + "; ".join(problems))

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch * self.grad_accum

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil((self.tokens or DEFAULT_TOKENS) / self.tokens_per_step)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[HealMethod(self.method)]


@dataclass(frozen=True)
class HealProgress:
    """Reported after every optimizer step (for a progress bar or a service's status)."""

    step: int
    total_steps: int
    loss: float
    tokens_per_second: float


@dataclass(frozen=True)
class HealResult:
    out_dir: str
    method: str
    steps: int
    tokens: int
    seconds: float  # training time, over every resumed run
    wall_seconds: float  # this call end to end: loading, self-data, evaluation, training, writing
    tokens_per_second: float
    resumed_from: int  # the step this run started at (0: a fresh heal)
    final_loss: float
    eval: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # file -> before/after -> metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Run:
    """What the training loop works on."""

    settings: HealSettings
    student: Any
    teacher: Any
    blocks: torch.Tensor
    order: BlockOrder
    to_teacher_ids: torch.Tensor | None  # student id -> original id
    teacher_head: LogitHead
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any


def heal(
    student_dir: str | Path,
    teacher_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    settings: HealSettings = HealSettings(),
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
    settings.validate()
    student_dir, teacher_dir, data, out_dir = (Path(p) for p in (student_dir, teacher_dir, data, out_dir))
    device = check_device(settings.device)
    models = _load_models(student_dir, teacher_dir, device)
    out_dtype = parse_dtype(settings.dtype or healio.stored_dtype(student_dir))
    texts = {str(p): healio.eval_text(Path(p), settings.eval_chars) for p in eval_files}
    blocks, fingerprints = _training_data(models, data, settings)
    student_tokenizer = models.student_tokenizer

    run = _prepare(settings, models, blocks, device)
    folder = work_dir(out_dir.resolve())
    fingerprint = _run_fingerprint(settings, fingerprints)
    state = load_state(folder, fingerprint, run.student, run.optimizer, run.scheduler)
    resumed_from = state.step if state else 0
    if state is None:  # LoRA's B starts at zero, so the wrapped student is still the unhealed function
        state = HealState(fingerprint=fingerprint, before=healio.perplexities(run.student, student_tokenizer, texts))
    _train(run, state, folder, progress)

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
        config = SelfDataSettings(tokens=settings.self_data_tokens, seed=settings.seed)
        extra, _ = self_data_docs(
            models.teacher, models.teacher_tokenizer, data, docs, config, teacher_fingerprint=fingerprints["teacher"]
        )
    budget = settings.total_steps * settings.tokens_per_step
    blocks = training_blocks(models.student_tokenizer, docs, extra, settings.seq_len, budget)
    fingerprints["data"] = token_blocks_fingerprint(blocks)
    return blocks, fingerprints


def _prepare(settings: HealSettings, models: _Models, blocks: torch.Tensor, device: torch.device) -> _Run:
    """Make the student trainable (all weights, or LoRA adapters) and build its optimizer and schedule."""
    student, token_map = models.student, models.token_map
    torch.manual_seed(settings.seed)
    if settings.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.method == HealMethod.LORA:
        student = _with_lora(student, settings.lora_rank)
    else:
        student.requires_grad_(True)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = settings.total_steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    to_teacher = torch.tensor(token_map, device=device) if token_map is not None else None
    return _Run(
        settings=settings,
        student=student,
        teacher=models.teacher,
        blocks=blocks,
        order=BlockOrder(len(blocks), settings.batch, settings.seed),
        to_teacher_ids=to_teacher,
        teacher_head=LogitHead.restricted(models.teacher.get_output_embeddings(), token_map),
        device=device,
        optimizer=optimizer,
        scheduler=scheduler,
    )


def _with_lora(student, rank: int):
    """PEFT LoRA adapters on every projection the plan kept (removed sublayers have no modules to match)."""
    from peft import LoraConfig, get_peft_model

    spec = get_spec(student.config.model_type)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(spec.linear_names))
    return get_peft_model(student, config)


def _train(run: _Run, state: HealState, folder: Path, progress: Callable[[HealProgress], None] | None) -> None:
    settings, total = run.settings, run.settings.total_steps
    run.student.train()
    started, start_step = time.perf_counter(), state.step
    while state.step < total:
        state.losses.append(_train_step(run, state.step))
        state.step += 1
        elapsed = time.perf_counter() - started
        rate = (state.step - start_step) * settings.tokens_per_step / max(elapsed, 1e-9)
        if settings.checkpoint_every and state.step % settings.checkpoint_every == 0 and state.step < total:
            _save(run, state, folder, state.seconds + elapsed)
        if progress is not None:
            progress(HealProgress(state.step, total, state.losses[-1], rate))
    state.seconds += time.perf_counter() - started
    run.student.eval()


def _save(run: _Run, state: HealState, folder: Path, seconds: float) -> None:
    saved = HealState(state.fingerprint, state.step, state.losses, state.before, seconds)
    save_state(folder, saved, run.student, run.optimizer, run.scheduler)


def _train_step(run: _Run, step: int) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the mean loss."""
    settings, total = run.settings, 0.0
    for micro in range(settings.grad_accum):
        ids = run.blocks[run.order.indices(step * settings.grad_accum + micro)].to(run.device)
        with _autocast(run.device):
            loss = _micro_batch_loss(run, ids) / settings.grad_accum
        loss.backward()
        total += float(loss.detach())
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _micro_batch_loss(run: _Run, ids: torch.Tensor) -> torch.Tensor:
    teacher_ids = run.to_teacher_ids[ids] if run.to_teacher_ids is not None else ids
    with torch.no_grad():
        teacher_hidden = run.teacher.get_decoder()(input_ids=teacher_ids, use_cache=False).last_hidden_state
    student_hidden = run.student.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    return distill_loss(
        student_hidden[:, :-1],
        LogitHead.of(run.student.get_output_embeddings()),
        teacher_hidden[:, :-1],
        run.teacher_head,
        ids[:, 1:],
        temperature=run.settings.temperature,
        ce_weight=run.settings.ce_weight,
    )


def _autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _run_fingerprint(settings: HealSettings, fingerprints: dict[str, str]) -> str:
    """What a resumed run must share with the saved one (not where it runs or how often it saves)."""
    shaping = {k: v for k, v in asdict(settings).items() if k not in ("device", "checkpoint_every", "eval_chars")}
    return hashlib.sha256(json.dumps([shaping, fingerprints], sort_keys=True, default=str).encode()).hexdigest()


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
