"""Drafts cut from the bundled tiny Llama, shared by the assisted-generation and lean-loop tests: a depth-only
draft (stock class) and a trimmed-vocabulary one (remote code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunesearch.pruning.draftcheck import heldout_token_ids, prompts_from_ids
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import PrunePlan

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CALIB = TINY / "calib.txt"
FULL = {"heads": 4, "ffn": 256}
DROPPED = {"heads": 0, "ffn": 0}
DRAFT_PLANS = {
    "depth": {"layers": [FULL, DROPPED, DROPPED, FULL], "vocab": None},
    "trimmed": {"layers": [FULL, FULL, DROPPED, {"heads": 2, "ffn": 128}], "vocab": 600},
}


def build_drafts(root: Path) -> dict[str, Path]:
    """Export every plan of DRAFT_PLANS under `root` (its own PRUNESEARCH_HOME); name -> checkpoint."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNESEARCH_HOME", str(root / "home"))
        for name, plan in DRAFT_PLANS.items():
            prune_checkpoint(
                TINY,
                PrunePlan.from_dict({"version": 1, **plan}),
                root / name,
                calibration=ImportanceCalibration(path=CALIB, seq_len=64, max_tokens=4096),
            )
    return {name: root / name for name in DRAFT_PLANS}


def calibration_prompts(tokenizer) -> list[torch.Tensor]:
    """Three 12-token prompts from the tiny model's calibration text."""
    return prompts_from_ids(heldout_token_ids(tokenizer, CALIB, 2048), count=3, length=12)
