"""Resumable heal state: trainable weights, optimizer, scheduler, RNG and progress, saved atomically.

The state lives in a work folder beside the output (`OUT.heal-work/`), never inside it, so the output appears
only when the heal is complete. It is tied to a fingerprint of everything that shapes the run (models, data
and settings): a re-run of the same command resumes, a different command is refused rather than mixed in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"


class HealStateError(ValueError):
    """A work folder holds state of a different heal."""


@dataclass
class HealState:
    """Everything a resumed heal needs besides the models and the data."""

    fingerprint: str
    step: int = 0
    losses: list[float] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # training time so far, over all runs


def work_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.heal-work"


def save_state(folder: Path, state: HealState, model, optimizer, scheduler) -> None:
    """Write the state to a temporary file, then rename it over the last one (a kill leaves either intact)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": asdict(state),
        "model": {k: v for k, v in model.state_dict().items() if k in _trainable_names(model)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
    }
    tmp = folder / f"{STATE_FILE}.{os.getpid()}.tmp"  # two live attempts (one taken for dead) never share it
    torch.save(payload, tmp)
    os.replace(tmp, folder / STATE_FILE)


def load_state(folder: Path, fingerprint: str, model, optimizer, scheduler) -> HealState | None:
    """Restore a saved heal into `model`, `optimizer` and `scheduler`; None when there is nothing to resume."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data, never code
    state = HealState(**payload["meta"])
    if state.fingerprint != fingerprint:
        raise HealStateError(
            f"{folder} holds a heal with other models, data or settings; re-run that command to resume it, "
            "or delete the folder to start over"
        )
    missing = set(_trainable_names(model)) - set(payload["model"])
    if missing:
        raise HealStateError(f"{path} lacks trainable weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(payload["model"], strict=False)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"])
    return state


def remove_state(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
