"""From Optuna parameters to prune plans and back. Pure logic: no torch, no storage.

Two parametrisations of the same space:
- `per_layer`: per touchable layer, the number of KV groups and MLP steps cut, and whether the attention and
  MLP sublayers (or the whole layer) stay.
- `profile`: a global kept ratio per knob plus a linear layer-wise slope, and how many sublayers to drop in
  block-influence order (fewest variables; better for deep models).
Parameters count *cuts* (0 = dense), so the dense model and every baseline are points of the space.

With `constraints.deploy: stock` the space shrinks to plans the stock classes load (`pruning.deploy`): one
`group_cuts` and one `ffn_cuts` for every layer (head counts the stock config can state), and removal of whole
layers only (`keep_layer_{i}` per layer, or `drop_layers` in block-influence order for `profile`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prunesearch.pruning.plan import LayerPlan, ModelShape, PrunePlan

from .spec import SearchSpace

VOCAB_STEP = 64


class TrialLike(Protocol):
    """What the parametrisation needs from an Optuna trial (also satisfied by a fixed-params stand-in)."""

    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_float(self, name: str, low: float, high: float) -> float: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Knobs:
    """The space resolved against one model: bounds in model units."""

    shape: ModelShape
    space: SearchSpace
    ffn_step: int
    max_group_cuts: int
    max_ffn_cuts: int
    touchable: tuple[int, ...]
    order: tuple[int, ...]  # layer indices, least influential first (ShortGPT order)
    depth: str = "sublayers"  # the space's depth knob; "layers" where sublayers would break stock loading
    stock_group_cuts: tuple[int, ...] | None = None  # deploy: stock: the allowed uniform KV-group cuts
    min_vocab: int = 0  # the tokenizer's mandatory tokens (`pruning.vocab.mandatory_token_count`)

    @property
    def stock(self) -> bool:
        return self.stock_group_cuts is not None

    aligned: bool = False  # kept MLP widths are multiples of ffn_step (the hardware's tile)

    @property
    def max_removed_sublayers(self) -> int:
        return math.floor(len(self.touchable) * (1 - self.space.min_keep.layers))

    def ffn_for(self, cuts: int) -> int:
        return self.ffn_top() - cuts * self.ffn_step if cuts else self.shape.intermediate_size

    def ffn_top(self) -> int:
        """The width the cuts count down from: the dense width, or (aligned) the next multiple of the step."""
        size, step = self.shape.intermediate_size, self.ffn_step
        return -(-size // step) * step if self.aligned else size

    def vocab_bounds(self) -> tuple[int, int]:
        """The smallest and largest vocabulary: `min_keep.vocab` of it, but never fewer tokens than the tokenizer
        must keep (specials, base alphabet and their merge closure), so no sampled size fails to trim."""
        share = math.ceil(self.shape.vocab_size * self.space.min_keep.vocab)
        return max(self.shape.num_special_tokens, self.min_vocab, share), self.shape.vocab_size


def default_ffn_step(shape: ModelShape) -> int:
    """64 channels (tensor-core friendly), or 8 for tiny models whose MLP is narrower than 1024."""
    return 64 if shape.intermediate_size >= 1024 else 8


def resolve(
    shape: ModelShape,
    space: SearchSpace,
    influence: Sequence[float] | None = None,
    hardware_step: int | None = None,
    *,
    stock_heads: Sequence[int] | None = None,
    min_vocab: int = 0,
) -> Knobs:
    """Bounds of every knob for this model; raises ValueError for layers the model does not have.

    `hardware_step`: the hardware profile's recommended MLP granularity (for `ffn_step: "hardware"`).
    `stock_heads` (`pruning.deploy.stock_head_counts`) restricts the space to stock-loadable plans; `min_vocab`
    (`pruning.vocab.mandatory_token_count`) bounds the vocabulary knob below."""
    touchable = tuple(space.layers) if space.layers is not None else tuple(range(shape.num_layers))
    bad = [i for i in touchable if i >= shape.num_layers]
    if bad:
        raise ValueError(f"space.layers names layers {bad}, but the model has {shape.num_layers} layers")
    aligned = space.ffn_step == "hardware"
    if aligned:
        step = min(hardware_step or default_ffn_step(shape), shape.intermediate_size)
    else:
        step = space.ffn_step or default_ffn_step(shape)
    top = -(-shape.intermediate_size // step) * step if aligned else shape.intermediate_size
    min_groups = max(1, math.ceil(shape.num_kv_heads * space.min_keep.heads))
    min_ffn = max(1, math.ceil(shape.intermediate_size * space.min_keep.ffn))
    scores = list(influence) if influence is not None else [0.0] * shape.num_layers
    order = tuple(sorted(touchable, key=lambda i: (scores[i], i)))
    max_group_cuts = (shape.num_kv_heads - min_groups) if space.heads else 0
    stock_cuts = None
    if stock_heads is not None:
        allowed = {shape.num_kv_heads - heads // shape.group_size for heads in stock_heads}
        stock_cuts = tuple(c for c in range(max_group_cuts + 1) if c in allowed) or (0,)
        max_group_cuts = stock_cuts[-1]
    return Knobs(
        shape=shape,
        space=space,
        ffn_step=step,
        max_group_cuts=max_group_cuts,
        max_ffn_cuts=((top - min_ffn) // step) if space.ffn else 0,
        touchable=touchable,
        order=order,
        depth="layers" if stock_cuts is not None and space.depth == "sublayers" else space.depth,
        stock_group_cuts=stock_cuts,
        aligned=aligned,
        min_vocab=min_vocab,
    )


def suggest_plan(trial: TrialLike, knobs: Knobs) -> PrunePlan:
    """Ask `trial` for every parameter of the space and build the plan they describe."""
    if knobs.stock:
        heads, ffn, attn_on, mlp_on = _suggest_stock(trial, knobs)
    elif knobs.space.parametrization == "profile":
        heads, ffn, attn_on, mlp_on = _suggest_profile(trial, knobs)
    else:
        heads, ffn, attn_on, mlp_on = _suggest_per_layer(trial, knobs)
    return _assemble(knobs, heads, ffn, attn_on, mlp_on, _suggest_vocab(trial, knobs))


def _suggest_per_layer(trial: TrialLike, knobs: Knobs):
    heads, ffn, attn_on, mlp_on = {}, {}, {}, {}
    for i in knobs.touchable:
        if knobs.max_group_cuts:
            heads[i] = knobs.shape.num_heads - trial.suggest_int(f"group_cuts_{i}", 0, knobs.max_group_cuts) * (
                knobs.shape.group_size
            )
        if knobs.max_ffn_cuts:
            ffn[i] = knobs.ffn_for(trial.suggest_int(f"ffn_cuts_{i}", 0, knobs.max_ffn_cuts))
        if knobs.depth == "layers":
            attn_on[i] = mlp_on[i] = trial.suggest_categorical(f"keep_layer_{i}", [True, False])
        elif knobs.depth == "sublayers":
            attn_on[i] = trial.suggest_categorical(f"keep_attn_{i}", [True, False])
            mlp_on[i] = trial.suggest_categorical(f"keep_mlp_{i}", [True, False])
    return heads, ffn, attn_on, mlp_on


def _suggest_stock(trial: TrialLike, knobs: Knobs):
    """One width for every layer, and whole layers kept or removed (stock-loadable plans only)."""
    shape, layers = knobs.shape, range(knobs.shape.num_layers)
    heads, ffn = {}, {}
    if knobs.max_group_cuts:
        cuts = knobs.stock_group_cuts or (0,)
        if cuts == tuple(range(len(cuts))):
            group_cuts = trial.suggest_int("group_cuts", 0, cuts[-1])
        else:
            group_cuts = trial.suggest_categorical("group_cuts", list(cuts))
        heads = dict.fromkeys(layers, shape.num_heads - group_cuts * shape.group_size)
    if knobs.max_ffn_cuts:
        ffn = dict.fromkeys(layers, knobs.ffn_for(trial.suggest_int("ffn_cuts", 0, knobs.max_ffn_cuts)))
    kept: dict[int, bool] = {}
    if knobs.depth == "layers" and knobs.space.parametrization == "profile" and knobs.max_removed_sublayers:
        dropped = set(knobs.order[: trial.suggest_int("drop_layers", 0, knobs.max_removed_sublayers)])
        kept = {i: i not in dropped for i in knobs.touchable}
    elif knobs.depth == "layers" and knobs.space.parametrization == "per_layer":
        kept = {i: trial.suggest_categorical(f"keep_layer_{i}", [True, False]) for i in knobs.touchable}
    return heads, ffn, kept, kept


def _profile_values(ratio: float, slope: float, layers: Sequence[int], low: float) -> dict[int, float]:
    """Kept fraction per layer: `ratio` on average, tilted linearly by `slope` from first to last layer."""
    n = len(layers)
    return {
        layer: min(1.0, max(low, ratio + slope * ((k / (n - 1) if n > 1 else 0.5) - 0.5)))
        for k, layer in enumerate(layers)
    }


def _suggest_profile(trial: TrialLike, knobs: Knobs):
    shape, layers = knobs.shape, sorted(knobs.touchable)
    heads, ffn, attn_on, mlp_on = {}, {}, {}, {}
    if knobs.max_group_cuts:
        low = 1 - knobs.max_group_cuts / shape.num_kv_heads
        kept = _profile_values(
            trial.suggest_float("heads_ratio", low, 1.0),
            trial.suggest_float("heads_slope", -1.0, 1.0),
            layers,
            low,
        )
        heads = {i: round(f * shape.num_kv_heads) * shape.group_size for i, f in kept.items()}
    if knobs.max_ffn_cuts:
        low = knobs.ffn_for(knobs.max_ffn_cuts) / shape.intermediate_size
        kept = _profile_values(
            trial.suggest_float("ffn_ratio", low, 1.0),
            trial.suggest_float("ffn_slope", -1.0, 1.0),
            layers,
            low,
        )
        ffn = {i: knobs.ffn_for(round((1 - f) * shape.intermediate_size / knobs.ffn_step)) for i, f in kept.items()}
    limit = knobs.max_removed_sublayers
    if knobs.depth == "layers" and limit:
        dropped = set(knobs.order[: trial.suggest_int("drop_layers", 0, limit)])
        attn_on = mlp_on = {i: i not in dropped for i in layers}
    elif knobs.depth == "sublayers" and limit:
        attn_drop = set(knobs.order[: trial.suggest_int("drop_attn", 0, limit)])
        mlp_drop = set(knobs.order[: trial.suggest_int("drop_mlp", 0, limit)])
        attn_on = {i: i not in attn_drop for i in layers}
        mlp_on = {i: i not in mlp_drop for i in layers}
    return heads, ffn, attn_on, mlp_on


def _suggest_vocab(trial: TrialLike, knobs: Knobs) -> int | None:
    if not knobs.space.vocab:
        return None
    low, high = knobs.vocab_bounds()
    steps = (high - low) // VOCAB_STEP
    if steps <= 0:
        return None
    cuts = trial.suggest_int("vocab_cuts", 0, steps)
    return None if cuts == 0 else high - cuts * VOCAB_STEP


def _assemble(knobs: Knobs, heads, ffn, attn_on, mlp_on, vocab: int | None) -> PrunePlan:
    shape = knobs.shape
    layers = []
    for i in range(shape.num_layers):
        layer_heads = heads.get(i, shape.num_heads) if attn_on.get(i, True) else 0
        layer_ffn = ffn.get(i, shape.intermediate_size) if mlp_on.get(i, True) else 0
        layers.append(LayerPlan(heads=layer_heads, ffn=layer_ffn))
    return PrunePlan(layers=tuple(layers), vocab=vocab)


def depth_violation(plan: PrunePlan, knobs: Knobs) -> float:
    """How far a plan exceeds the depth bound (> 0 infeasible): attention and MLP sublayers counted apart."""
    attn_removed = sum(layer.heads == 0 for layer in plan.layers)
    mlp_removed = sum(layer.ffn == 0 for layer in plan.layers)
    excess = max(attn_removed, mlp_removed) - knobs.max_removed_sublayers
    if all(layer.removed for layer in plan.layers):
        excess = max(excess, 1)
    return float(excess)


class FixedParams:
    """A trial stand-in that answers from a dict (missing = the dense value) and records what was asked."""

    def __init__(self, params: Mapping[str, Any] | None = None):
        self.params = dict(params or {})
        self.asked: dict[str, Any] = {}

    def _answer(self, name: str, value: Any) -> Any:
        self.asked[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self._answer(name, int(self.params.get(name, 0)))

    def suggest_float(self, name: str, low: float, high: float) -> float:
        default = 1.0 if name.endswith("ratio") else 0.0
        return self._answer(name, float(self.params.get(name, default)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, self.params.get(name, choices[0]))


def complete_params(knobs: Knobs, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every other parameter of the space at its dense value (what enqueue_trial needs)."""
    stand_in = FixedParams(params)
    suggest_plan(stand_in, knobs)
    return stand_in.asked
