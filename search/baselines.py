"""The known baselines, as points of the search space, enqueued before any sampled trial.

- dense (the reference);
- uniform widths (every layer keeps the same share of KV groups and MLP channels, as LLM-Pruner / FLAP-style
  uniform pruning does);
- layer removal by block influence (ShortGPT): drop the k layers whose output is most similar to their input,
  for k on a ladder of at most `MAX_DEPTH_BASELINES` counts (`depth_ladder`).
"""

from __future__ import annotations

from typing import Any

from .parametrize import Knobs, complete_params

UNIFORM_RATIOS = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
# At most this many ShortGPT depths, evenly spread from one removal to the most the space allows: a deep model
# (24 layers, a quarter kept: 18 removals) would otherwise spend 18 full-fidelity trials on one ladder whose
# neighbouring rungs differ by a layer (docs/search.md, "Search efficiency").
MAX_DEPTH_BASELINES = 8


def _uniform(knobs: Knobs, ratio: float) -> dict[str, Any] | None:
    shape = knobs.shape
    group_cuts = min(knobs.max_group_cuts, round((1 - ratio) * shape.num_kv_heads))
    ffn_cuts = min(knobs.max_ffn_cuts, round((1 - ratio) * shape.intermediate_size / knobs.ffn_step))
    if knobs.stock:  # the nearest allowed uniform cut at or below the ratio's
        group_cuts = max((c for c in knobs.stock_group_cuts or () if c <= group_cuts), default=0)
    if not group_cuts and not ffn_cuts:
        return None
    if knobs.stock:
        return {"group_cuts": group_cuts, "ffn_cuts": ffn_cuts}
    if knobs.space.parametrization == "profile":
        params: dict[str, Any] = {}
        if knobs.max_group_cuts:
            params["heads_ratio"] = 1 - group_cuts / shape.num_kv_heads
        if knobs.max_ffn_cuts:
            params["ffn_ratio"] = knobs.ffn_for(ffn_cuts) / shape.intermediate_size
        return params
    params = {}
    for i in knobs.touchable:
        if knobs.max_group_cuts:
            params[f"group_cuts_{i}"] = group_cuts
        if knobs.max_ffn_cuts:
            params[f"ffn_cuts_{i}"] = ffn_cuts
    return params


def _layer_removal(knobs: Knobs, count: int) -> dict[str, Any]:
    dropped = knobs.order[:count]
    if knobs.space.parametrization == "profile":
        if knobs.depth == "layers":
            return {"drop_layers": count}
        return {"drop_attn": count, "drop_mlp": count}
    if knobs.depth == "layers":
        return {f"keep_layer_{i}": False for i in dropped}
    return {f"{name}_{i}": False for i in dropped for name in ("keep_attn", "keep_mlp")}


def depth_ladder(most: int, rungs: int = MAX_DEPTH_BASELINES) -> list[int]:
    """Removal counts of the ShortGPT baselines: every count from 1 to `most` when there are at most `rungs` of
    them, else `rungs` counts evenly spread from 1 to `most`, both ends included."""
    if most <= rungs:
        return list(range(1, most + 1))
    return sorted({round(1 + (most - 1) * i / (rungs - 1)) for i in range(rungs)})


def baseline_params(knobs: Knobs) -> list[tuple[str, dict[str, Any]]]:
    """(name, complete params) of every baseline this space can express, dense first."""
    found: list[tuple[str, dict[str, Any]]] = [("dense", {})]
    for ratio in UNIFORM_RATIOS:
        params = _uniform(knobs, ratio)
        if params is not None:
            found.append((f"uniform-{ratio:g}", params))
    if knobs.depth != "none":
        for count in depth_ladder(knobs.max_removed_sublayers):
            found.append((f"shortgpt-{count}", _layer_removal(knobs, count)))
    unique, seen = [], set()
    for name, params in found:
        complete = complete_params(knobs, params)
        key = tuple(sorted(complete.items()))
        if key not in seen:
            seen.add(key)
            unique.append((name, complete))
    return unique
