"""Modeling for pruned checkpoints whose layers differ in shape, or skip their attention or MLP sublayer.

prunesearch copies this file into every such checkpoint as `modeling_pruned.py`, so that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads it. It depends only on torch and
transformers. Per-layer shapes come from the config's `per_layer_config` (the upstream heterogeneity format:
`{layer: {"num_attention_heads": .., "num_key_value_heads": .., "intermediate_size": .., "skip": [..]}}`);
stock modeling in transformers 5.2x still builds uniform layers and ignores `skip`, which is why this exists.
`pruned_output_bias` lists the layers whose o_proj / down_proj carry a bias added by bias compensation.

What it knows of an architecture (classes, module names) it is given as data: `pruned_class(names)` builds the
pruned class from an entry of prunesearch's architecture table (`pruning/architectures.py`, the keys in
`ARCHITECTURE_KEYS`). In the package, `pruning.modeling` passes the table's entry; in a checkpoint, the export
appends one line that binds the class the config's `auto_map` names, for the checkpoint's architecture.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import nn
from transformers.utils import logging

# This modeling reads per-layer shapes from each layer's config, so transformers' warning about reading
# per-layer attributes globally (which the cache and rotary code do for shared values) is expected here.
logging.get_logger("transformers.integrations.heterogeneity.configuration_utils").setLevel(logging.ERROR)

# The names `pruned_class` reads from an architecture entry.
ARCHITECTURE_KEYS = (
    "module",
    "causal_lm_class",
    "decoder_layer_class",
    "layers_path",
    "attention",
    "mlp",
    "attention_norm",
    "mlp_norm",
    "o_proj",
    "mlp_out",
)


def _skippable_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask=None,
    position_ids=None,
    cache=None,
    use_cache=False,
    position_embeddings=None,
    **kwargs,
) -> torch.Tensor:
    # The stock layer's signature (transformers >= 5.23 calls the KV cache `cache`, its old name
    # `past_key_values` is deprecated): passing the old name on as well would make the attention warn.
    names = self.architecture
    attention, mlp = getattr(self, names["attention"]), getattr(self, names["mlp"])
    if attention is not None:
        residual = hidden_states
        attn_out, _ = attention(
            hidden_states=getattr(self, names["attention_norm"])(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + attn_out
    if mlp is not None:
        residual = hidden_states
        hidden_states = residual + mlp(getattr(self, names["mlp_norm"])(hidden_states))
    return hidden_states


def _stock_class(names: Mapping[str, str], key: str) -> type:
    module = importlib.import_module(f"transformers.models.{names['module']}.modeling_{names['module']}")
    return getattr(module, names[key])


def _pruned_layer_class(names: Mapping[str, str]) -> type:
    """A subclass of the stock decoder layer (so output-recording hooks still match) that skips sublayers."""
    stock = _stock_class(names, "decoder_layer_class")
    attrs = {"forward": _skippable_forward, "architecture": dict(names), "__module__": __name__}
    return type(f"Pruned{stock.__name__}", (stock,), attrs)


def _layer_config(config, index: int):
    return config.per_layer_config[index] if getattr(config, "is_heterogeneous", False) else config


def _with_output_bias(linear: nn.Linear) -> nn.Linear:
    biased = nn.Linear(linear.in_features, linear.out_features, bias=True)
    biased.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        biased.weight.copy_(linear.weight)
        biased.bias.zero_()
    return biased


def _skips(config, index: int) -> set[str]:
    return set(getattr(_layer_config(config, index), "skip", None) or ())


def _build_layer(layer_class: type, config, index: int, cache_slot: int) -> nn.Module:
    names = layer_class.architecture
    attention, mlp = names["attention"], names["mlp"]
    skip = _skips(config, index)
    layer = layer_class(_layer_config(config, index), index)
    biased = getattr(config, "pruned_output_bias", None) or {}
    if attention in skip:
        setattr(layer, attention, None)
        setattr(layer, names["attention_norm"], None)
    else:
        getattr(layer, attention).layer_idx = cache_slot
        if index in biased.get(attention, ()):
            _add_output_bias(getattr(layer, attention), names["o_proj"])
    if mlp in skip:
        setattr(layer, mlp, None)
        setattr(layer, names["mlp_norm"], None)
    elif index in biased.get(mlp, ()):
        _add_output_bias(getattr(layer, mlp), names["mlp_out"])
    return layer


def _add_output_bias(sublayer: nn.Module, name: str) -> None:
    setattr(sublayer, name, _with_output_bias(getattr(sublayer, name)))


class PrunedLayersMixin:
    """Builds the stock model without decoder layers, then one layer per `per_layer_config` entry."""

    layer_class: type  # set by `pruned_class`

    def __init__(self, config, *args, **kwargs):
        config.allow_global_per_layer_attribute_access = True
        num_layers = config.num_hidden_layers
        config.num_hidden_layers = 0  # do not build uniform layers only to throw them away
        try:
            super().__init__(config, *args, **kwargs)
        finally:
            config.num_hidden_layers = num_layers
        parent, _, name = self.layer_class.architecture["layers_path"].rpartition(".")
        layers = (
            _build_layer(self.layer_class, config, i, slot) for i, slot in enumerate(_cache_slots(self, num_layers))
        )
        setattr(self.get_submodule(parent), name, nn.ModuleList(layers))
        self.post_init()

    def set_attn_implementation(self, *args, **kwargs):
        """Each layer's attention holds its own per-layer config: keep its attention kernel in step."""
        result = super().set_attn_implementation(*args, **kwargs)
        attention = self.layer_class.architecture["attention"]
        for layer in self.get_submodule(self.layer_class.architecture["layers_path"]):
            if getattr(layer, attention) is not None:
                getattr(layer, attention).config._attn_implementation = self.config._attn_implementation
        return result


def _cache_slots(model: PrunedLayersMixin, num_layers: int) -> list[int]:
    """KV-cache slot of each layer: attention layers are numbered densely, so the cache's first slot (from
    which transformers derives the sequence length) always belongs to a layer that really has attention."""
    attention = model.layer_class.architecture["attention"]
    slots, next_slot = [], 0
    for index in range(num_layers):
        slots.append(next_slot)
        if attention not in _skips(model.config, index):
            next_slot += 1
    return slots


_PRUNED_CLASSES: dict[tuple[tuple[str, str], ...], type] = {}


def pruned_class(architecture: Mapping[str, str]) -> type:
    """The pruned causal-LM class (`Pruned<causal_lm_class>`) of one architecture, given its names (at least
    `ARCHITECTURE_KEYS`). The same names always give the same class."""
    names = {key: architecture[key] for key in ARCHITECTURE_KEYS}
    key = tuple(sorted(names.items()))
    if key not in _PRUNED_CLASSES:
        stock = _stock_class(names, "causal_lm_class")
        attrs = {"layer_class": _pruned_layer_class(names), "__module__": __name__}
        _PRUNED_CLASSES[key] = type(f"Pruned{stock.__name__}", (PrunedLayersMixin, stock), attrs)
    return _PRUNED_CLASSES[key]
