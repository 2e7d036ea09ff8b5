"""Informed starting points, enqueued after the baselines and before the sampler's own trials. Pure logic.

- `flap-global-S`: FLAP's global ranking (An et al., 2024) at sparsity S of the attention and MLP widths: the
  importance scores of every KV group and MLP channel are standardised per layer and kind and ranked
  together over the whole model, and the least important units are cut, lowest standardised score first, until S of the
  width parameters are gone; each layer keeps what survives (within the space's bounds).
- `shortgpt-K+uniform-R`: the K least influential layers (block influence) removed and the remaining layers
  cut uniformly to R, depth and width combined.
- `profile-R-up` / `profile-R-down` (deep models, 12 layers or more): widths kept at R on average, rising or
  falling linearly with depth, as the `profile` parametrisation describes them.

Each is returned as complete parameters of the space, so an enqueued point is always a valid plan of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .baselines import _layer_removal, _uniform
from .parametrize import Knobs, _profile_values, complete_params

FLAP_SPARSITIES = (0.2, 0.35, 0.5)
COMBINED_RATIOS = (0.875, 0.75)
COMBINED_DEPTHS = 2  # removals of 1..this many layers are combined with each width ratio
PROFILE_RATIOS = (0.75, 0.5)
PROFILE_SLOPE = 0.5
DEEP_MODEL_LAYERS = 12


def _standardised(per_layer: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each layer's scores standardised over that layer (as FLAP's code does before its global sort)."""
    return [_z_scores(layer) for layer in per_layer]


def _z_scores(values: Sequence[float]) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / max(len(values) - 1, 1)) or 1.0
    return [(x - mean) / std for x in values]


def flap_global(
    knobs: Knobs, kv_scores: Sequence[Sequence[float]], channel_scores: Sequence[Sequence[float]], sparsity: float
) -> dict[str, Any] | None:
    """Per-layer cuts of FLAP's global ranking at `sparsity` (per_layer parametrisation only)."""
    shape = knobs.shape
    if knobs.space.parametrization != "per_layer" or not (knobs.max_group_cuts or knobs.max_ffn_cuts):
        return None
    group_cost = (2 * shape.group_size + 2) * shape.head_dim * shape.hidden_size  # q, o of the group; k, v
    channel_cost = 3 * shape.hidden_size
    units = []  # (standardised score, layer, kind, cost)
    if knobs.max_group_cuts:
        for i, layer in zip(knobs.touchable, _standardised([kv_scores[i] for i in knobs.touchable]), strict=True):
            units += [(s, i, "group", group_cost) for s in layer]
    if knobs.max_ffn_cuts:
        for i, layer in zip(knobs.touchable, _standardised([channel_scores[i] for i in knobs.touchable]), strict=True):
            units += [(s, i, "ffn", channel_cost) for s in layer]
    target = sparsity * sum(cost for *_, cost in units)
    removed = {("group", i): 0 for i in knobs.touchable} | {("ffn", i): 0 for i in knobs.touchable}
    gone = 0.0
    for _, i, kind, cost in sorted(units, key=lambda u: (u[0], u[1])):
        if gone >= target:
            break
        removed[kind, i] += 1
        gone += cost
    params: dict[str, Any] = {}
    for i in knobs.touchable:
        if knobs.max_group_cuts:
            params[f"group_cuts_{i}"] = min(knobs.max_group_cuts, removed["group", i])
        if knobs.max_ffn_cuts:
            params[f"ffn_cuts_{i}"] = min(knobs.max_ffn_cuts, round(removed["ffn", i] / knobs.ffn_step))
    return params if any(params.values()) else None


def _profile(knobs: Knobs, ratio: float, slope: float) -> dict[str, Any] | None:
    """Widths kept at `ratio` on average, tilted by `slope` over depth, as per_layer cuts."""
    shape, layers = knobs.shape, sorted(knobs.touchable)
    if knobs.space.parametrization == "profile":
        params = {}
        if knobs.max_group_cuts:
            params |= {"heads_ratio": max(ratio, 1 - knobs.max_group_cuts / shape.num_kv_heads), "heads_slope": slope}
        if knobs.max_ffn_cuts:
            low = knobs.ffn_for(knobs.max_ffn_cuts) / shape.intermediate_size
            params |= {"ffn_ratio": max(ratio, low), "ffn_slope": slope}
        return params or None
    params = {}
    for i, kept in _profile_values(ratio, slope, layers, 0.0).items():
        if knobs.max_group_cuts:
            params[f"group_cuts_{i}"] = min(knobs.max_group_cuts, round((1 - kept) * shape.num_kv_heads))
        if knobs.max_ffn_cuts:
            cuts = round((1 - kept) * shape.intermediate_size / knobs.ffn_step)
            params[f"ffn_cuts_{i}"] = min(knobs.max_ffn_cuts, cuts)
    return params or None


def informed_params(
    knobs: Knobs, kv_scores: Sequence[Sequence[float]], channel_scores: Sequence[Sequence[float]]
) -> list[tuple[str, dict[str, Any]]]:
    """(name, complete params) of every informed starting point this space can express."""
    found: list[tuple[str, dict[str, Any] | None]] = [
        (f"flap-global-{s:g}", flap_global(knobs, kv_scores, channel_scores, s)) for s in FLAP_SPARSITIES
    ]
    if knobs.space.depth != "none":
        for count in range(1, min(COMBINED_DEPTHS, knobs.max_removed_sublayers) + 1):
            for ratio in COMBINED_RATIOS:
                width = _uniform(knobs, ratio)
                if width is not None:
                    found.append((f"shortgpt-{count}+uniform-{ratio:g}", width | _layer_removal(knobs, count)))
    if len(knobs.touchable) >= DEEP_MODEL_LAYERS:
        for ratio in PROFILE_RATIOS:
            found.append((f"profile-{ratio:g}-up", _profile(knobs, ratio, PROFILE_SLOPE)))
            found.append((f"profile-{ratio:g}-down", _profile(knobs, ratio, -PROFILE_SLOPE)))
    return [(name, complete_params(knobs, params)) for name, params in found if params]
