"""The heal's training loop: the student made trainable (every weight, or LoRA adapters), AdamW with a cosine
schedule, KD micro-batches under bf16 autocast on CUDA, and a resumable state saved every N steps."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import get_cosine_schedule_with_warmup

from prunesearch.choices import HealMethod

from . import modules
from .distill import LogitHead, distill_loss
from .healdata import BlockOrder
from .healsettings import HealProgress, HealSettings
from .healstate import HealState, save_state


@dataclass
class TrainingRun:
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


def prepare_run(
    settings: HealSettings, student, teacher, token_map: list[int] | None, blocks: torch.Tensor, device: torch.device
) -> TrainingRun:
    """Make the student trainable (all weights, or LoRA adapters) and build its optimizer and schedule."""
    torch.manual_seed(settings.seed)
    if settings.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.method == HealMethod.LORA:
        student = with_lora(student, settings.lora_rank)
    else:
        student.requires_grad_(True)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = settings.total_steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    to_teacher = torch.tensor(token_map, device=device) if token_map is not None else None
    return TrainingRun(
        settings=settings,
        student=student,
        teacher=teacher,
        blocks=blocks,
        order=BlockOrder(len(blocks), settings.batch, settings.seed),
        to_teacher_ids=to_teacher,
        teacher_head=LogitHead.restricted(modules.lm_head(teacher), token_map),
        device=device,
        optimizer=optimizer,
        scheduler=scheduler,
    )


def with_lora(student, rank: int):
    """PEFT LoRA adapters on every projection the plan kept (removed sublayers have no modules to match)."""
    from peft import LoraConfig, get_peft_model

    spec = modules.spec_of(student)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(spec.linear_names))
    with warnings.catch_warnings():
        # PEFT (0.21) reads `model.is_gradient_checkpointing`, which transformers 5 renamed to
        # `is_activation_checkpointing`: the FutureWarning is about PEFT's code, and only that one is silenced.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(student, config)


def train(run: TrainingRun, state: HealState, folder: Path, progress: Callable[[HealProgress], None] | None) -> None:
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


def _save(run: TrainingRun, state: HealState, folder: Path, seconds: float) -> None:
    saved = HealState(state.fingerprint, state.step, state.losses, state.before, seconds)
    save_state(folder, saved, run.student, run.optimizer, run.scheduler)


def _train_step(run: TrainingRun, step: int) -> float:
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


def _micro_batch_loss(run: TrainingRun, ids: torch.Tensor) -> torch.Tensor:
    teacher_ids = run.to_teacher_ids[ids] if run.to_teacher_ids is not None else ids
    student = modules.unwrap_peft(run.student)  # LoRA's adapters live in the wrapped model's own modules
    with torch.no_grad():
        teacher_hidden = modules.decoder(run.teacher)(input_ids=teacher_ids, use_cache=False).last_hidden_state
    student_hidden = modules.decoder(student)(input_ids=ids, use_cache=False).last_hidden_state
    return distill_loss(
        student_hidden[:, :-1],
        LogitHead.of(modules.lm_head(student)),
        teacher_hidden[:, :-1],
        run.teacher_head,
        ids[:, 1:],
        temperature=run.settings.temperature,
        ce_weight=run.settings.ce_weight,
    )


def _autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
