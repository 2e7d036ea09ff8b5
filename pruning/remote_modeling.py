"""Modeling for pruned checkpoints whose layers differ in shape, or skip their attention or MLP sublayer.

prunesearch copies this file into every such checkpoint as `modeling_pruned.py`, so that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads it. It depends only on torch and
transformers. Per-layer shapes come from the config's `per_layer_config` (the upstream heterogeneity format:
`{layer: {"num_attention_heads": .., "num_key_value_heads": .., "intermediate_size": .., "skip": [..]}}`);
stock modeling in transformers 5.2x still builds uniform layers and ignores `skip`, which is why this exists.
`pruned_output_bias` lists the layers whose o_proj / down_proj carry a bias added by bias compensation.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaForCausalLM
from transformers.models.mistral.modeling_mistral import MistralForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM
from transformers.utils import logging

# This modeling reads per-layer shapes from each layer's config, so transformers' warning about reading
# per-layer attributes globally (which the cache and rotary code do for shared values) is expected here.
logging.get_logger("transformers.integrations.heterogeneity.configuration_utils").setLevel(logging.ERROR)

_DECODER_LAYERS = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
}


def _skippable_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    use_cache=False,
    position_embeddings=None,
    **kwargs,
) -> torch.Tensor:
    if self.self_attn is not None:
        residual = hidden_states
        attn_out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + attn_out
    if self.mlp is not None:
        residual = hidden_states
        hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
    return hidden_states


_LAYER_CLASSES: dict[str, type] = {}


def _pruned_layer_class(model_type: str) -> type:
    """A subclass of the stock decoder layer (so output-recording hooks still match) that skips sublayers."""
    if model_type not in _LAYER_CLASSES:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        stock = getattr(module, _DECODER_LAYERS[model_type])
        _LAYER_CLASSES[model_type] = type(f"Pruned{stock.__name__}", (stock,), {"forward": _skippable_forward})
    return _LAYER_CLASSES[model_type]


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


def _build_layer(config, index: int, cache_slot: int) -> nn.Module:
    layer_config = _layer_config(config, index)
    skip = _skips(config, index)
    layer = _pruned_layer_class(config.model_type)(layer_config, index)
    biased = getattr(config, "pruned_output_bias", None) or {}
    if "self_attn" in skip:
        layer.self_attn = layer.input_layernorm = None
    else:
        layer.self_attn.layer_idx = cache_slot
        if index in biased.get("self_attn", ()):
            layer.self_attn.o_proj = _with_output_bias(layer.self_attn.o_proj)
    if "mlp" in skip:
        layer.mlp = layer.post_attention_layernorm = None
    elif index in biased.get("mlp", ()):
        layer.mlp.down_proj = _with_output_bias(layer.mlp.down_proj)
    return layer


class PrunedLayersMixin:
    """Builds the stock model without decoder layers, then one layer per `per_layer_config` entry."""

    def __init__(self, config, *args, **kwargs):
        config.allow_global_per_layer_attribute_access = True
        num_layers = config.num_hidden_layers
        config.num_hidden_layers = 0  # do not build uniform layers only to throw them away
        try:
            super().__init__(config, *args, **kwargs)
        finally:
            config.num_hidden_layers = num_layers
        self.model.layers = nn.ModuleList(
            _build_layer(config, i, slot) for i, slot in enumerate(_cache_slots(config, num_layers))
        )
        self.post_init()

    def set_attn_implementation(self, *args, **kwargs):
        """Each layer's attention holds its own per-layer config: keep its attention kernel in step."""
        result = super().set_attn_implementation(*args, **kwargs)
        for layer in self.model.layers:
            if layer.self_attn is not None:
                layer.self_attn.config._attn_implementation = self.config._attn_implementation
        return result


def _cache_slots(config, num_layers: int) -> list[int]:
    """KV-cache slot of each layer: attention layers are numbered densely, so the cache's first slot (from
    which transformers derives the sequence length) always belongs to a layer that really has attention."""
    slots, next_slot = [], 0
    for index in range(num_layers):
        slots.append(next_slot)
        if "self_attn" not in _skips(config, index):
            next_slot += 1
    return slots


class PrunedLlamaForCausalLM(PrunedLayersMixin, LlamaForCausalLM):
    pass


class PrunedMistralForCausalLM(PrunedLayersMixin, MistralForCausalLM):
    pass


class PrunedQwen2ForCausalLM(PrunedLayersMixin, Qwen2ForCausalLM):
    pass


class PrunedQwen3ForCausalLM(PrunedLayersMixin, Qwen3ForCausalLM):
    pass


PRUNED_CLASSES = {
    "llama": PrunedLlamaForCausalLM,
    "mistral": PrunedMistralForCausalLM,
    "qwen2": PrunedQwen2ForCausalLM,
    "qwen3": PrunedQwen3ForCausalLM,
}
