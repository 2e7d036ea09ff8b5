"""Configs and model classes for pruned models: the config always describes the model exactly."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from . import deploy, remote_modeling
from .architectures import ArchitectureSpec, get_spec, model_shape
from .plan import LayerPlan, ModelShape, PrunePlan

REMOTE_MODELING_FILE = "modeling_pruned.py"
# Keys prunesearch adds to a pruned config; stock modeling ignores them.
OUTPUT_BIAS_KEY = "pruned_output_bias"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def needs_remote_code(
    spec: ArchitectureSpec, shape: ModelShape, plan: PrunePlan, output_bias: Mapping[str, Sequence[int]]
) -> bool:
    """True unless stock transformers modeling can represent the pruned model (`deploy.stock_problems`)."""
    kept = set(plan.kept_layer_indices())
    biased = [part for part, indices in output_bias.items() if kept.intersection(indices)]
    return deploy.needs_remote_code(spec, shape, plan, biased)


def pruned_config(
    base_config: PretrainedConfig,
    plan: PrunePlan,
    *,
    output_bias: Mapping[str, Sequence[int]] | None = None,
    kept_token_ids: Sequence[int] | None = None,
) -> PretrainedConfig:
    """The config of `base_config` after `plan`: stock fields for uniform plans, `per_layer_config` otherwise.

    `output_bias` names base-model layer indices whose attention / MLP output projections gain a bias, keyed by
    the sublayer's name (`spec.attention`, `spec.mlp`).
    `kept_token_ids` (sorted original ids) re-indexes the vocabulary and the special token ids.
    """
    spec = get_spec(base_config.model_type)
    shape = model_shape(base_config)
    plan.validate_for(shape)
    output_bias = {k: list(v) for k, v in (output_bias or {}).items()}
    data = base_config.to_dict()
    data.pop("per_layer_config", None)
    data.pop("auto_map", None)
    kept = plan.kept_layer_indices()
    data["num_hidden_layers"] = len(kept)
    data["head_dim"] = shape.head_dim
    if isinstance(data.get("layer_types"), list):
        data["layer_types"] = [data["layer_types"][i] for i in kept]
    if kept_token_ids is not None:
        _reindex_vocabulary(data, kept_token_ids)
    layers = [plan.layers[i] for i in kept]
    if needs_remote_code(spec, shape, plan, output_bias):
        _heterogeneous_fields(data, layers, shape.group_size, kept, output_bias, spec)
    else:
        _uniform_fields(data, layers[0], shape.group_size, kept, output_bias, spec)
    return type(base_config).from_dict(data)


def remap_token_id(value: int | list[int] | None, new_id: Mapping[int, int]) -> int | list[int] | None:
    """An original special-token id (or list of them) in the trimmed vocabulary; None where not kept."""
    if isinstance(value, list):
        return [new_id[v] for v in value if v in new_id] or None
    return None if value is None else new_id.get(value)


def _reindex_vocabulary(data: dict[str, Any], kept_token_ids: Sequence[int]) -> None:
    new_id = {old: new for new, old in enumerate(kept_token_ids)}
    data["vocab_size"] = len(kept_token_ids)
    for key in TOKEN_ID_KEYS:
        data[key] = remap_token_id(data.get(key), new_id)


def _uniform_fields(data, layer: LayerPlan, group: int, kept, output_bias, spec: ArchitectureSpec) -> None:
    data["num_attention_heads"] = layer.heads
    data["num_key_value_heads"] = layer.heads // group
    data["intermediate_size"] = layer.ffn
    data["architectures"] = [spec.causal_lm_class]
    if any(i in kept for i in output_bias.get(spec.attention, ())):
        data[spec.attention_bias_flag] = True
    if any(i in kept for i in output_bias.get(spec.mlp, ())):
        data[spec.mlp_bias_flag] = True


def _heterogeneous_fields(data, layers: list[LayerPlan], group: int, kept, output_bias, spec) -> None:
    # The global shape fields keep the base model's values (valid for every config validator); each layer's
    # real shape is in per_layer_config.
    data["per_layer_config"] = {new: _layer_overrides(layer, group, spec) for new, layer in enumerate(layers)}
    new_index = {old: new for new, old in enumerate(kept)}
    data[OUTPUT_BIAS_KEY] = {
        part: sorted(new_index[i] for i in indices if i in new_index) for part, indices in output_bias.items()
    }
    data["allow_global_per_layer_attribute_access"] = True
    data["architectures"] = [spec.pruned_class]
    data["auto_map"] = {"AutoModelForCausalLM": f"{Path(REMOTE_MODELING_FILE).stem}.{spec.pruned_class}"}


def _layer_overrides(layer: LayerPlan, group: int, spec: ArchitectureSpec) -> dict[str, Any]:
    # A skipped sublayer gets the smallest valid shape; it is deleted right after it is built.
    heads = layer.heads or group
    overrides: dict[str, Any] = {
        "num_attention_heads": heads,
        "num_key_value_heads": heads // group,
        "intermediate_size": layer.ffn or 1,
    }
    skip = [name for name, kept in ((spec.attention, layer.heads), (spec.mlp, layer.ffn)) if not kept]
    if skip:
        overrides["skip"] = skip
    return overrides


def model_class_for(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class that builds `config` exactly: stock for uniform configs, the pruned class otherwise."""
    spec = get_spec(config.model_type)
    if getattr(config, "is_heterogeneous", False) or getattr(config, OUTPUT_BIAS_KEY, None):
        return pruned_class_for(spec)
    return getattr(transformers, spec.causal_lm_class)


def pruned_class_for(spec: ArchitectureSpec) -> type[PreTrainedModel]:
    """The pruned modeling class of an architecture, built from its table entry."""
    return remote_modeling.pruned_class(architecture_names(spec))


def architecture_names(spec: ArchitectureSpec) -> dict[str, str]:
    """What `remote_modeling` needs to know of an architecture, from its table entry."""
    return {key: getattr(spec, key) for key in remote_modeling.ARCHITECTURE_KEYS}


def remote_modeling_source(spec: ArchitectureSpec) -> str:
    """`modeling_pruned.py` for a checkpoint of `spec`'s architecture: `remote_modeling.py` and one line that
    binds the class name its config's `auto_map` names."""
    source = Path(remote_modeling.__file__).read_text()
    binding = f"{spec.pruned_class} = pruned_class({architecture_names(spec)!r})"
    return f"{source}\n\n# Written by prunesearch at export, from its architecture table.\n{binding}\n"


def build_pruned_model(
    base_config: PretrainedConfig,
    plan: PrunePlan,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    kept_token_ids: Sequence[int] | None = None,
) -> PreTrainedModel:
    """A randomly initialised model with the shapes of `plan` applied to `base_config` (for timing)."""
    config = pruned_config(base_config, plan, kept_token_ids=kept_token_ids)
    if plan.vocab is not None and kept_token_ids is None:
        config.vocab_size = plan.vocab
    with torch.device(device):
        model = model_class_for(config)(config)
    return model.to(dtype=dtype).eval()


def load_pruned(path: str | Path, *, dtype: torch.dtype | None = None, device: str | None = None):
    """Load any checkpoint written by prunesearch (uniform or not) without trust_remote_code."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a checkpoint directory?")
    model_type = json.loads(config_file.read_text()).get("model_type")
    get_spec(model_type)
    config = transformers.AutoConfig.from_pretrained(path)
    model = model_class_for(config).from_pretrained(path, config=config, dtype=dtype or "auto")
    if device is not None:
        model = model.to(device)
    return model.eval()
