"""Per-architecture knowledge as data: module names and properties, one entry per `model_type`.

Pure logic: reads config attributes (a transformers config or a plain dict) and imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .plan import ModelShape


class UnsupportedArchitectureError(ValueError):
    """The model's `model_type` is not in the registry."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where a decoder-only architecture keeps its prunable parts, and what is special about it.

    Names are attribute names (dotted paths from the causal-LM model for `*_path`, from a decoder layer for the
    sublayers and norms, from a sublayer for the projections); `pruning/modules.py` resolves them on a model and
    `remote_modeling.py` builds the pruned classes from them."""

    model_type: str
    causal_lm_class: str  # class name in transformers.models.<module>.modeling_<module> (and in `transformers`)
    decoder_layer_class: str  # class name in the same module
    module: str  # transformers.models.<module>
    layers_path: str = "model.layers"  # the decoder layers; their parent is the decoder stack
    embed_path: str = "model.embed_tokens"
    lm_head_path: str = "lm_head"
    final_norm_path: str = "model.norm"
    attention: str = "self_attn"
    mlp: str = "mlp"
    attention_norm: str = "input_layernorm"  # the norm in front of `attention`, removed with it
    mlp_norm: str = "post_attention_layernorm"  # the norm in front of `mlp`, removed with it
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    mlp_in: tuple[str, ...] = ("gate_proj", "up_proj")
    mlp_out: str = "down_proj"
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3); shared across heads, so never sliced
    # Config flags that give o_proj / down_proj a bias in stock modeling, if the architecture has them.
    # Bias compensation (FLAP) stays stock-loadable only where these exist.
    attention_bias_flag: str | None = None
    mlp_bias_flag: str | None = None
    # The stock config rejects head counts that do not divide hidden_size, even with an explicit head_dim
    # (LlamaConfig.validate_architecture in transformers 5.2x); such uniform plans use the pruned modeling.
    heads_must_divide_hidden: bool = False

    @property
    def decoder_path(self) -> str:
        """The decoder stack (embeddings, layers, final norm; no LM head): the parent of `layers_path`."""
        return self.layers_path.rpartition(".")[0]

    @property
    def pruned_class(self) -> str:
        """Class name of the pruned modeling for this architecture (`remote_modeling.py`)."""
        return f"Pruned{self.causal_lm_class}"

    @property
    def linear_names(self) -> tuple[str, ...]:
        """Module names of every prunable projection (the LoRA targets of `prunesearch heal`)."""
        return (self.q_proj, self.k_proj, self.v_proj, self.o_proj, *self.mlp_in, self.mlp_out)


_REGISTRY: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec(
            model_type="llama",
            causal_lm_class="LlamaForCausalLM",
            decoder_layer_class="LlamaDecoderLayer",
            module="llama",
            attention_bias_flag="attention_bias",
            mlp_bias_flag="mlp_bias",
            heads_must_divide_hidden=True,
        ),
        ArchitectureSpec(
            model_type="mistral",
            causal_lm_class="MistralForCausalLM",
            decoder_layer_class="MistralDecoderLayer",
            module="mistral",
        ),
        ArchitectureSpec(
            model_type="qwen2",
            causal_lm_class="Qwen2ForCausalLM",
            decoder_layer_class="Qwen2DecoderLayer",
            module="qwen2",
            qkv_bias=True,
        ),
        ArchitectureSpec(
            model_type="qwen3",
            causal_lm_class="Qwen3ForCausalLM",
            decoder_layer_class="Qwen3DecoderLayer",
            module="qwen3",
            qk_norm=True,
        ),
    )
}


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(model_type: str) -> ArchitectureSpec:
    """The registry entry for `model_type`, or a clear error naming the supported ones."""
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        ) from None


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """A config attribute, from a transformers config or a plain dict (config.json)."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def model_shape(config: Any, num_special_tokens: int = 0) -> ModelShape:
    """The prunable dimensions of a (dense, homogeneous) base model from its config."""
    get_spec(config_value(config, "model_type"))
    heads = int(config_value(config, "num_attention_heads"))
    hidden = int(config_value(config, "hidden_size"))
    head_dim = config_value(config, "head_dim") or hidden // heads
    return ModelShape(
        num_layers=int(config_value(config, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(config_value(config, "num_key_value_heads") or heads),
        head_dim=int(head_dim),
        hidden_size=hidden,
        intermediate_size=int(config_value(config, "intermediate_size")),
        vocab_size=int(config_value(config, "vocab_size")),
        num_special_tokens=num_special_tokens,
    )
