"""A draft search as one call: the spec of `prunesearch draft` and the run that writes its pareto.json.

The bench and the CLI build the spec with `draft_spec` and run it with `run_draft_search`; the service takes the
same spec (`objectives.speculative`) through `POST /v1/jobs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from .draft import draft_points
from .spec import SearchSpec

SpaceName = Literal["vocab", "depth", "width", "structure", "joint"]
# Which knobs each named draft space turns: the vocabulary only, whole layers only, heads and MLP widths only,
# depth and widths, or all of them. Depth removes whole layers: a draft is shallow, and whole-layer drafts keep
# the stock config (the form an assisted-generation client loads).
DRAFT_SPACES: dict[str, dict[str, Any]] = {
    "vocab": {"heads": False, "ffn": False, "depth": "none", "vocab": True},
    "depth": {"heads": False, "ffn": False, "depth": "layers", "vocab": False},
    "width": {"heads": True, "ffn": True, "depth": "none", "vocab": False},
    "structure": {"heads": True, "ffn": True, "depth": "layers", "vocab": False},
    "joint": {"heads": True, "ffn": True, "depth": "layers", "vocab": True},
}
# A draft may keep as little as one layer and 1/16 of the vocabulary (the coverage constraint bounds the trim).
DRAFT_MIN_VOCAB = 0.0625


def draft_min_keep_layers(num_layers: int) -> float:
    """`min_keep.layers` that lets a draft keep a single layer (the search never removes them all)."""
    return 0.5 / num_layers


def draft_spec(
    target: str | Path,
    calibration: str | Path,
    *,
    trials: int = 100,
    hardware: str = "h100-sxm",
    engine: str | None = None,
    lookahead: int | Literal["search"] = "search",
    temperature: float = 0.0,
    goal: Literal["speedup", "pareto"] = "speedup",
    min_coverage: float | None = None,
    max_draft_mib: float | None = None,
    space: SpaceName = "joint",
    seed: int = 0,
    calibration_tokens: int | None = None,
    base: dict[str, Any] | None = None,
) -> SearchSpec:
    """The job spec of a draft search of `target` (raises `pydantic.ValidationError`, `ValueError` on bad input).

    `base`: a job spec JSON object whose other fields (workload, efficiency, ...) are kept; these arguments win."""
    if space not in DRAFT_SPACES:
        raise ValueError(f"space must be one of {', '.join(DRAFT_SPACES)}, got {space!r}")
    spec = dict(base or {})
    layers = _num_layers(Path(target))
    min_keep = {"layers": draft_min_keep_layers(layers), "vocab": DRAFT_MIN_VOCAB}
    spec.update(model=str(target), calibration=str(calibration), n_trials=trials, hardware=hardware, seed=seed)
    spec["space"] = {**spec.get("space", {}), **DRAFT_SPACES[space]}
    spec["space"]["min_keep"] = {**min_keep, **spec["space"].get("min_keep", {})}
    speculative = {"lookahead": lookahead, "temperature": float(temperature), "goal": goal}
    if max_draft_mib is not None:
        speculative["max_draft_mib"] = float(max_draft_mib)
    spec["objectives"] = {**spec.get("objectives", {}), "speculative": speculative}
    if min_coverage is not None:
        spec["constraints"] = {**spec.get("constraints", {}), "vocab_coverage": float(min_coverage)}
    if engine is not None:
        spec["workload"] = {**spec.get("workload", {}), "engine": engine}
    if calibration_tokens is not None:
        spec["calibration_settings"] = {**spec.get("calibration_settings", {}), "tokens": calibration_tokens}
    return SearchSpec.model_validate(spec)


def _num_layers(target: Path) -> int:
    config = target / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{target} is not a model directory (no config.json)")
    data = json.loads(config.read_text())
    layers = data.get("num_hidden_layers") or data.get("text_config", {}).get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{config} has no num_hidden_layers")
    return layers


def run_draft_search(
    spec: SearchSpec,
    out: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    progress_bar: bool = False,
) -> list[dict[str, Any]]:
    """Run the search (Optuna storage: sqlite in `out` unless given) and write `out/pareto.json`: the draft
    points (`draft.draft_points`), best predicted speedup first. Returns them."""
    from .engine import run_search  # torch and transformers load only when a search really runs

    if spec.objectives.speculative is None:
        raise ValueError("a draft search needs objectives.speculative")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = study_name or out.resolve().name
    progress = run_search(spec, storage=storage, study_name=study_name, progress_bar=progress_bar)
    points = draft_points(progress.front)
    (out / "pareto.json").write_text(json.dumps(points, indent=2) + "\n")
    return points
