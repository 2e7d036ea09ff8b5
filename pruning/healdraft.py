"""Heal a speculative-decoding draft and record its acceptance before and after.

`heal_draft(...)` runs the ordinary heal (`heal.py`: distillation from the target) and measures the draft's
teacher-forced acceptance against the teacher (`draftcheck.teacher_forced_acceptance`) on an evaluation file,
greedy and, when the draft's speculative.json names a sampling temperature, at that temperature, before and
after. The figures go into the result (`acceptance`), into the heal's record in provenance.json, and, when the
healed export has speculative.json, into it: `acceptance` becomes the healed value at its temperature (the
unhealed one stays as `acceptance_before_heal`), and `predicted_speedup` is recomputed with
`speculative.speedup` from `lookahead` and the cost ratio `draft_ms / target_ms` (verification priced at
`verify_ms / target_ms` when speculative.json has `verify_ms`, else one target step); without both latencies
`predicted_speedup` is left out, since the old value no longer matches the acceptance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .assist import load_assistant
from .draftcheck import heldout_token_ids, teacher_forced_acceptance
from .export import PROVENANCE_FILE, SPECULATIVE_FILE, load_base_model, read_speculative
from .heal import HealProgress, HealResult, HealSettings, heal
from .speculative import GREEDY, speedup

ACCEPTANCE_TOKENS = 16_384


def draft_acceptance(
    draft_dir: Path, teacher_dir: Path, eval_file: Path, temperatures: Sequence[float], max_tokens: int
) -> dict[str, float]:
    """Teacher-forced acceptance of the export in `draft_dir` against `teacher_dir`, per temperature (as str)."""
    teacher, tokenizer = load_base_model(teacher_dir)
    draft = load_assistant(draft_dir, teacher, tokenizer)
    token_ids = heldout_token_ids(tokenizer, eval_file, max_tokens)
    alphas = teacher_forced_acceptance(teacher, draft, token_ids, temperatures)
    return {str(t): round(a, 6) for t, a in alphas.items()}


def heal_draft(
    student_dir: str | Path,
    teacher_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    settings: HealSettings | None = None,
    *,
    acceptance_eval: str | Path,
    eval_files: Sequence[str | Path] = (),
    progress: Callable[[HealProgress], None] | None = None,
    max_tokens: int = ACCEPTANCE_TOKENS,
) -> tuple[HealResult, dict[str, Any]]:
    """Heal as `heal.heal` does; also return {"file", "tokens", "temperatures", "before", "after"}."""
    student_dir, teacher_dir, out_dir, acceptance_eval = (
        Path(p) for p in (student_dir, teacher_dir, out_dir, acceptance_eval)
    )
    spec = read_speculative(student_dir)
    temperatures = sorted({GREEDY, float(spec.get("temperature", GREEDY))} if spec else {GREEDY})
    before = draft_acceptance(student_dir, teacher_dir, acceptance_eval, temperatures, max_tokens)
    result = heal(student_dir, teacher_dir, data, out_dir, settings, eval_files=eval_files, progress=progress)
    after = draft_acceptance(out_dir, teacher_dir, acceptance_eval, temperatures, max_tokens)
    record = {"file": str(acceptance_eval.resolve()), "tokens": max_tokens, "before": before, "after": after}
    _add_to_last_heal(out_dir / PROVENANCE_FILE, record)
    if spec is not None:
        _update_speculative(out_dir / SPECULATIVE_FILE, spec, before, after)
    return result, record


def _add_to_last_heal(path: Path, record: dict[str, Any]) -> None:
    provenance = json.loads(path.read_text())
    provenance["heals"][-1]["acceptance"] = record
    path.write_text(json.dumps(provenance, indent=2) + "\n")


def updated_speculative(spec: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """speculative.json with the healed acceptance and a predicted speedup that agrees with it (pure)."""
    key = str(float(spec.get("temperature", GREEDY)))
    updated = dict(spec) | {"acceptance": after[key], "acceptance_before_heal": before[key]}
    draft_ms, target_ms, lookahead = spec.get("draft_ms"), spec.get("target_ms"), spec.get("lookahead")
    if draft_ms and target_ms and lookahead:
        verify_cost = spec["verify_ms"] / target_ms if spec.get("verify_ms") else 1.0
        updated["predicted_speedup"] = speedup(min(after[key], 1.0), int(lookahead), draft_ms / target_ms, verify_cost)
    else:
        updated.pop("predicted_speedup", None)
    return updated


def _update_speculative(path: Path, spec: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> None:
    path.write_text(json.dumps(updated_speculative(spec, before, after), indent=2) + "\n")
