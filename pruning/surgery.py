"""Physical surgery: slice a dense model's tensors by a plan into a new, smaller model.

The result is built from its own config (`pruned_config`), so the config always describes the model exactly;
weights are sliced from the dense state dict into new tensors (peak memory: dense + pruned).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from prunesearch.choices import CriterionName

from .architectures import ArchitectureSpec, get_spec, model_shape
from .importance import ImportanceScores, compute_importance
from .modeling import TOKEN_ID_KEYS, model_class_for, pruned_config, remap_token_id
from .plan import LayerPlan, ModelShape, PrunePlan

Tensors = dict[str, torch.Tensor]


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest scores, in ascending index order (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def head_channels(groups: torch.Tensor, channels_per_group: int) -> torch.Tensor:
    """Channel indices (rows of q/k/v, columns of o) covered by the given KV groups."""
    offsets = torch.arange(channels_per_group)
    return (groups[:, None] * channels_per_group + offsets[None, :]).reshape(-1)


class _LayerSurgeon:
    """Slices one decoder layer's tensors (keys relative to the layer) for one LayerPlan."""

    def __init__(self, spec: ArchitectureSpec, shape: ModelShape, scores: ImportanceScores, index: int):
        self.spec, self.shape, self.scores, self.index = spec, shape, scores, index
        self.biased: set[str] = set()

    def slice(self, tensors: Tensors, layer: LayerPlan) -> Tensors:
        out = dict(tensors)
        spec = self.spec
        attn, mlp = f"{spec.attention}.", f"{spec.mlp}."
        if layer.heads == 0:
            out = _drop(out, attn, f"{spec.attention_norm}.")
        elif layer.heads < self.shape.num_heads:
            out.update(self._slice_attention(tensors, layer.heads, attn))
        if layer.ffn == 0:
            out = _drop(out, mlp, f"{spec.mlp_norm}.")
        elif layer.ffn < self.shape.intermediate_size:
            out.update(self._slice_mlp(tensors, layer.ffn, mlp))
        return out

    def _slice_attention(self, t: Tensors, heads: int, prefix: str) -> Tensors:
        spec, shape = self.spec, self.shape
        groups = top_indices(self.scores.kv_groups[self.index], heads // shape.group_size)
        q_rows = head_channels(groups, shape.group_size * shape.head_dim)
        kv_rows = head_channels(groups, shape.head_dim)
        out: Tensors = {}
        for name, rows in ((spec.q_proj, q_rows), (spec.k_proj, kv_rows), (spec.v_proj, kv_rows)):
            out.update(_select_rows(t, f"{prefix}{name}", rows))
        out.update(self._slice_output(t, f"{prefix}{spec.o_proj}", q_rows, self.scores.attn_input_mean, spec.attention))
        return out

    def _slice_mlp(self, t: Tensors, ffn: int, prefix: str) -> Tensors:
        keep = top_indices(self.scores.channels[self.index], ffn)
        out: Tensors = {}
        for name in self.spec.mlp_in:
            out.update(_select_rows(t, f"{prefix}{name}", keep))
        out.update(
            self._slice_output(t, f"{prefix}{self.spec.mlp_out}", keep, self.scores.mlp_input_mean, self.spec.mlp)
        )
        return out

    def _slice_output(self, t: Tensors, key: str, kept: torch.Tensor, means, part: str) -> Tensors:
        """The kept input columns of an output projection, plus FLAP's compensation bias when scored by flap
        (`part` names the sublayer, as `pruned_output_bias` does)."""
        weight = t[f"{key}.weight"]
        out = {f"{key}.weight": weight[:, kept.to(weight.device)].clone()}
        if means is not None:
            out[f"{key}.bias"] = self._compensate(t, key, kept, means[self.index])
            self.biased.add(part)
        return out

    @staticmethod
    def _compensate(t: Tensors, key: str, kept: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """FLAP bias compensation: the removed input channels' mean contribution moves into the bias."""
        weight = t[f"{key}.weight"]
        removed = torch.ones(weight.shape[1], dtype=torch.bool)
        removed[kept] = False
        delta = weight.double().cpu()[:, removed] @ mean.double()[removed]
        bias = t.get(f"{key}.bias")
        base = bias.double().cpu() if bias is not None else torch.zeros_like(delta)
        return (base + delta).to(device=weight.device, dtype=weight.dtype)


def _select_rows(t: Tensors, key: str, rows: torch.Tensor) -> Tensors:
    out = {f"{key}.weight": t[f"{key}.weight"][rows.to(t[f"{key}.weight"].device)].clone()}
    if f"{key}.bias" in t:
        out[f"{key}.bias"] = t[f"{key}.bias"][rows.to(t[f"{key}.bias"].device)].clone()
    return out


def _drop(tensors: Tensors, *prefixes: str) -> Tensors:
    return {k: v for k, v in tensors.items() if not k.startswith(prefixes)}


def _sliced_state_dict(
    model: PreTrainedModel, plan: PrunePlan, scores: ImportanceScores, kept_token_ids: Sequence[int] | None
) -> tuple[Tensors, dict[str, list[int]]]:
    spec = get_spec(model.config.model_type)
    shape = model_shape(model.config)
    dense = model.state_dict()
    root = f"{spec.layers_path}."
    out = {k: v for k, v in dense.items() if not k.startswith(root)}
    output_bias: dict[str, list[int]] = {spec.attention: [], spec.mlp: []}
    for new_index, old_index in enumerate(plan.kept_layer_indices()):
        prefix = f"{root}{old_index}."
        layer_tensors = {k[len(prefix) :]: v for k, v in dense.items() if k.startswith(prefix)}
        surgeon = _LayerSurgeon(spec, shape, scores, old_index)
        sliced = surgeon.slice(layer_tensors, plan.layers[old_index])
        out.update({f"{root}{new_index}.{k}": v for k, v in sliced.items()})
        for part in surgeon.biased:
            output_bias[part].append(old_index)
    if kept_token_ids is not None:
        ids = torch.tensor(list(kept_token_ids), dtype=torch.long)
        for key in (f"{spec.embed_path}.weight", f"{spec.lm_head_path}.weight"):
            if key in out:
                out[key] = out[key][ids.to(out[key].device)].clone()
    return out, output_bias


def apply_plan(
    model: PreTrainedModel,
    plan: PrunePlan,
    scores: ImportanceScores | None = None,
    *,
    kept_token_ids: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """A new model that keeps what `plan` says, choosing heads and channels by `scores` (magnitude if None).

    `kept_token_ids` (sorted original ids, see `vocab.select_kept_tokens`) is required when the plan trims the
    vocabulary. The input model is left untouched.
    """
    shape = model_shape(model.config)
    plan.validate_for(shape)
    if plan.vocab is not None and plan.vocab != shape.vocab_size:
        if kept_token_ids is None or len(kept_token_ids) != plan.vocab:
            raise ValueError(f"the plan keeps {plan.vocab} tokens: pass exactly that many kept_token_ids")
    elif kept_token_ids is not None and len(kept_token_ids) == shape.vocab_size:
        kept_token_ids = None
    scores = scores or compute_importance(model, CriterionName.MAGNITUDE)
    state, output_bias = _sliced_state_dict(model, plan, scores, kept_token_ids)
    config = pruned_config(model.config, plan, output_bias=output_bias, kept_token_ids=kept_token_ids)
    reference = next(model.parameters())
    pruned = _instantiate(config, state, model, dtype or reference.dtype, device or reference.device)
    pruned.generation_config = _remapped_generation_config(model, kept_token_ids)
    return pruned.eval()


def _instantiate(config, state: Tensors, dense: PreTrainedModel, dtype, device) -> PreTrainedModel:
    with torch.device("meta"):
        model = model_class_for(config)(config)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"surgery produced tensors the pruned model does not have: {unexpected[:5]}")
    _fill_missing(model, missing, dtype, device)
    _copy_buffers(model, dense, device)
    model.tie_weights()
    model.config.dtype = dtype
    return model


def _fill_missing(model: PreTrainedModel, missing: list[str], dtype, device) -> None:
    """Biases that exist only because a stock config flag turned them on (bias compensation) start at zero."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    for key in missing:
        if key in tied:
            continue
        if not key.endswith(".bias"):
            raise RuntimeError(f"surgery left {key} without a value")
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name)
        current = getattr(module, attr)
        setattr(module, attr, torch.nn.Parameter(torch.zeros(current.shape, dtype=dtype, device=device)))


def _copy_buffers(model: PreTrainedModel, dense: PreTrainedModel, device) -> None:
    """Non-persistent buffers (rotary frequencies) are not in the state dict: copy the dense model's."""
    dense_buffers = dict(dense.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            module.register_buffer(attr, dense_buffers[name].to(device), persistent=False)


def _remapped_generation_config(model: PreTrainedModel, kept_token_ids: Sequence[int] | None):
    generation = copy.deepcopy(getattr(model, "generation_config", None))
    if generation is None or kept_token_ids is None:
        return generation
    new_id = {old: new for new, old in enumerate(kept_token_ids)}
    for key in TOKEN_ID_KEYS:
        setattr(generation, key, remap_token_id(getattr(generation, key, None), new_id))
    return generation
