"""Torch-Pruning (PyPI `torch-pruning`) as a baseline: the same fraction of heads and MLP channels per layer.

Configured as Torch-Pruning's own LLM example (examples/LLMs/prune_llm.py): MetaPruner with local (per-layer)
pruning, whole heads (`prune_num_heads`, not head dims), the LM head ignored; the embedding is ignored too, so
the hidden size stays (with only the LM head ignored, Torch-Pruning also shrinks the residual stream).

Tracing workaround (torch 2.13 + transformers 5, found while reproducing VainF/Torch-Pruning#527): without it
`MetaPruner` never returns. torch reports `CatBackward0._saved_dim` of a negative dim as an unsigned 64-bit
number, so Torch-Pruning's index mapping (dependency/index_mapping.py) takes every `torch.cat` for a channel
concat; transformers 5 concatenates each key into its `DynamicCache` (use_cache is on by default), and with
that concat on the key path, `rotate_half`'s `cat((-x2, x1), -1)` gets offsets that shift the key channels by
half a head on every lap of a cycle (k -> rotate_half -> add -> k), so the dependency walk in
`_fix_dependency_graph_non_recursive` never meets a node it has seen. While Torch-Pruning traces and prunes,
the model runs without a cache and the modeling module's `rotate_half` is an exactly equal roll-and-sign
form without `cat`; both are restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator

import torch
import torch_pruning as tp

from prunesearch.pruning import modules
from prunesearch.pruning.plan import LayerPlan, PrunePlan

IMPORTANCES = ("magnitude", "taylor")


def rotate_half_without_cat(x: torch.Tensor) -> torch.Tensor:
    """transformers' `rotate_half` (cat((-x2, x1), -1)) as a roll and a sign flip."""
    half = x.shape[-1] // 2
    sign = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    sign[:half] = -1
    return torch.roll(x, shifts=half, dims=-1) * sign


@contextlib.contextmanager
def traceable(model) -> Iterator[None]:
    """No KV cache and a cat-free `rotate_half` while Torch-Pruning traces `model`."""
    modeling = sys.modules[type(model).__module__]
    original = getattr(modeling, "rotate_half", None)
    use_cache, model.config.use_cache = model.config.use_cache, False
    if original is not None:
        modeling.rotate_half = rotate_half_without_cat
    try:
        yield
    finally:
        model.config.use_cache = use_cache
        if original is not None:
            modeling.rotate_half = original


def taylor_gradients(model, blocks: torch.Tensor, batch_size: int = 8) -> None:
    """Accumulate the LM loss gradients over `blocks` into `model`'s .grad (Taylor importance reads them)."""
    model.zero_grad()
    for batch in blocks.split(batch_size):
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss * len(batch) / len(blocks)
        loss.backward()


def prune_uniform(model, ratio: float, example_input_ids: torch.Tensor, importance: str = "magnitude"):
    """A pruned deep copy of `model`: `ratio` of every layer's heads (KV heads with them) and MLP channels.

    `taylor` needs the gradients already in `model` (see `taylor_gradients`); the copy keeps them."""
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}")
    config = model.config
    if config.num_key_value_heads != config.num_attention_heads:
        # Seen on tiny GQA models: heads stay whole or query heads go without their KV group.
        raise ValueError("Torch-Pruning's head pruning is used here only without grouped-query attention")
    if importance == "taylor" and all(p.grad is None for p in model.parameters()):
        raise ValueError("taylor importance needs the loss gradients: call taylor_gradients first")
    model = _copy_with_gradients(model)
    spec = modules.spec_of(model)
    attentions = [modules.attention(layer, spec) for layer in modules.decoder_layers(model)]
    projections = [modules.attention_parts(layer, spec) for layer in modules.decoder_layers(model)]
    num_heads = {
        proj: proj.out_features // attention.head_dim
        for attention, parts in zip(attentions, projections, strict=True)
        for proj in (parts.q_proj, parts.k_proj, parts.v_proj)
    }
    scorer = tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude" else None
    with traceable(model):
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=example_input_ids,
            importance=scorer or tp.importance.GroupTaylorImportance(),
            global_pruning=False,
            pruning_ratio=ratio,
            ignored_layers=[modules.lm_head(model), modules.embedding(model)],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
            output_transform=lambda out: out.logits,
        )
        pruner.step()
    model.zero_grad(set_to_none=True)
    for attention, parts in zip(attentions, projections, strict=True):
        # transformers reads the head counts from the projections, except this
        kv_heads = parts.k_proj.out_features // attention.head_dim
        attention.num_key_value_groups = parts.q_proj.out_features // attention.head_dim // kv_heads
    return model


def _copy_with_gradients(model):
    clone = copy.deepcopy(model).eval()
    for mine, theirs in zip(clone.parameters(), model.parameters(), strict=True):
        mine.grad = None if theirs.grad is None else theirs.grad.clone()
    return clone


def plan_of(model) -> PrunePlan:
    """The prunesearch plan with the shapes Torch-Pruning left, so the same latency model prices it."""
    spec = modules.spec_of(model)
    return PrunePlan(layers=tuple(_layer_plan(layer, spec) for layer in modules.decoder_layers(model)))


def _layer_plan(layer, spec) -> LayerPlan:
    head_dim = modules.attention(layer, spec).head_dim
    heads = modules.attention_parts(layer, spec).q_proj.out_features // head_dim
    return LayerPlan(heads=heads, ffn=modules.mlp_parts(layer, spec).output.in_features)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def ratio_for_parameters(model, target: int, example_input_ids: torch.Tensor, steps: int = 12) -> float:
    """The uniform ratio whose pruned model has the parameter count closest to `target` (bisection)."""
    low, high = 0.0, 0.95
    best = (abs(parameter_count(model) - target), 0.0)
    for _ in range(steps):
        middle = (low + high) / 2
        count = parameter_count(prune_uniform(model, middle, example_input_ids))
        best = min(best, (abs(count - target), middle))
        low, high = (middle, high) if count > target else (low, middle)
    return best[1]
