"""The pruning plan: one frozen, JSON-serialisable object that flows from search to surgery to export.

Pure logic: no torch, no I/O beyond (de)serialising JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLAN_VERSION = 1
_PLAN_KEYS = {"version", "layers", "vocab"}
_LAYER_KEYS = {"heads", "ffn"}


class PlanError(ValueError):
    """A plan is malformed or does not fit the model it is applied to. Holds one message per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("invalid prune plan: " + "; ".join(self.problems))


@dataclass(frozen=True)
class LayerPlan:
    """What one decoder layer keeps: query heads (0 drops attention) and MLP channels (0 drops the MLP)."""

    heads: int
    ffn: int

    @property
    def removed(self) -> bool:
        return self.heads == 0 and self.ffn == 0

    def to_dict(self) -> dict[str, int]:
        return {"heads": self.heads, "ffn": self.ffn}


@dataclass(frozen=True)
class ModelShape:
    """The prunable dimensions of a base model, read from its config (see `architectures.model_shape`)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_special_tokens: int = 0

    @property
    def group_size(self) -> int:
        """Query heads per KV head: heads are kept and removed in whole groups of this size."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class PrunePlan:
    """Per-layer kept heads and MLP channels, and the kept vocabulary size (None keeps it whole)."""

    layers: tuple[LayerPlan, ...]
    vocab: int | None = None
    version: int = PLAN_VERSION

    @classmethod
    def dense(cls, shape: ModelShape) -> PrunePlan:
        """The plan that keeps everything: applying it reproduces the base model."""
        layer = LayerPlan(heads=shape.num_heads, ffn=shape.intermediate_size)
        return cls(layers=(layer,) * shape.num_layers, vocab=None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrunePlan:
        """Parse a plan dict, reporting every structural problem at once."""
        problems = _structural_problems(data)
        if problems:
            raise PlanError(problems)
        layers = tuple(LayerPlan(heads=int(x["heads"]), ffn=int(x["ffn"])) for x in data["layers"])
        return cls(layers=layers, vocab=data.get("vocab"), version=int(data.get("version", PLAN_VERSION)))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError([f"not valid JSON: {exc}"]) from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "layers": [x.to_dict() for x in self.layers], "vocab": self.vocab}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def kept_layer_indices(self) -> list[int]:
        """Indices (in the base model) of layers that survive."""
        return [i for i, layer in enumerate(self.layers) if not layer.removed]

    def is_uniform(self) -> bool:
        """True when every kept layer has the same shape and keeps both sublayers (stock-loadable)."""
        kept = [x for x in self.layers if not x.removed]
        if not kept:
            return False
        return all(x.heads > 0 and x.ffn > 0 for x in kept) and len(set(kept)) == 1

    def is_dense_for(self, shape: ModelShape) -> bool:
        return self.layers == PrunePlan.dense(shape).layers and self.vocab in (None, shape.vocab_size)

    def validate_for(self, shape: ModelShape) -> PrunePlan:
        """Check the plan against a model's shape; raise PlanError listing every problem. Returns self."""
        problems = _shape_problems(self, shape)
        if problems:
            raise PlanError(problems)
        return self


def _structural_problems(data: Any) -> list[str]:
    if not isinstance(data, Mapping):
        return [f"a plan must be a JSON object, got {type(data).__name__}"]
    problems = [f"unknown key {key!r} (allowed: {sorted(_PLAN_KEYS)})" for key in data if key not in _PLAN_KEYS]
    version = data.get("version", PLAN_VERSION)
    if version != PLAN_VERSION:
        problems.append(f"unsupported plan version {version!r} (this build reads version {PLAN_VERSION})")
    vocab = data.get("vocab")
    if vocab is not None and (not _is_int(vocab) or vocab <= 0):
        problems.append(f"vocab must be a positive integer or null, got {vocab!r}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        problems.append("layers must be a non-empty list with one entry per layer of the base model")
        return problems
    for index, layer in enumerate(layers):
        problems.extend(_layer_structure_problems(index, layer))
    return problems


def _layer_structure_problems(index: int, layer: Any) -> list[str]:
    if not isinstance(layer, Mapping):
        return [f"layer {index}: must be an object like {{'heads': 8, 'ffn': 688}}"]
    problems = [f"layer {index}: unknown key {key!r} (allowed: heads, ffn)" for key in layer if key not in _LAYER_KEYS]
    for key in sorted(_LAYER_KEYS):
        value = layer.get(key)
        if value is None:
            problems.append(f"layer {index}: missing {key!r}")
        elif not _is_int(value):
            problems.append(f"layer {index}: {key} must be an integer, got {value!r}")
        elif value < 0:
            problems.append(f"layer {index}: {key} must not be negative, got {value}")
    return problems


def _shape_problems(plan: PrunePlan, shape: ModelShape) -> list[str]:
    problems = []
    if len(plan.layers) != shape.num_layers:
        problems.append(f"plan has {len(plan.layers)} layers but the model has {shape.num_layers}")
    for index, layer in enumerate(plan.layers):
        problems.extend(_layer_shape_problems(index, layer, shape))
    if all(layer.removed for layer in plan.layers):
        problems.append("the plan removes every layer; keep at least one attention or MLP sublayer")
    if plan.vocab is not None:
        if plan.vocab > shape.vocab_size:
            problems.append(f"vocab {plan.vocab} is larger than the model's vocabulary ({shape.vocab_size})")
        if plan.vocab < shape.num_special_tokens:
            problems.append(
                f"vocab {plan.vocab} is smaller than the number of special tokens ({shape.num_special_tokens})"
            )
    return problems


def _layer_shape_problems(index: int, layer: LayerPlan, shape: ModelShape) -> list[str]:
    problems = []
    if layer.heads > shape.num_heads:
        problems.append(f"layer {index}: heads {layer.heads} is more than the model's {shape.num_heads}")
    if layer.heads % shape.group_size:
        problems.append(
            f"layer {index}: heads {layer.heads} is not a multiple of the GQA group size {shape.group_size} "
            f"(whole KV groups are kept or removed together)"
        )
    if layer.ffn > shape.intermediate_size:
        problems.append(f"layer {index}: ffn {layer.ffn} is more than the model's {shape.intermediate_size}")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
