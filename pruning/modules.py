"""The one place that finds a model's parts, by the names its `ArchitectureSpec` gives.

Model-level accessors read the spec from `model.config.model_type`; layer-level ones take the spec, since a
layer does not know its architecture. A sublayer that a pruned model skips resolves to None.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .architectures import ArchitectureSpec, get_spec


@dataclass(frozen=True)
class AttentionParts:
    """The projections of one attention sublayer."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear


@dataclass(frozen=True)
class MlpParts:
    """The projections of one gated MLP sublayer: inputs (gate, up) and the output projection."""

    inputs: tuple[nn.Linear, ...]
    output: nn.Linear


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (its adapters stay injected in it); any other model as is."""
    base = getattr(model, "get_base_model", None)  # PeftModel's; transformers models have no such method
    return base() if callable(base) else model


def spec_of(model: nn.Module) -> ArchitectureSpec:
    """The registry entry of a transformers model (a clear error for unsupported ones)."""
    return get_spec(model.config.model_type)


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (it takes `input_ids`, returns hidden states)."""
    return model.get_submodule(spec_of(model).decoder_path)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of `model`, in order."""
    return model.get_submodule(spec_of(model).layers_path)


def embedding(model: nn.Module) -> nn.Embedding:
    return model.get_submodule(spec_of(model).embed_path)


def lm_head(model: nn.Module) -> nn.Linear:
    return model.get_submodule(spec_of(model).lm_head_path)


def final_norm(model: nn.Module) -> nn.Module:
    return model.get_submodule(spec_of(model).final_norm_path)


def attention(layer: nn.Module, spec: ArchitectureSpec) -> nn.Module | None:
    """The attention sublayer, or None where a pruned layer skips it."""
    return getattr(layer, spec.attention)


def mlp(layer: nn.Module, spec: ArchitectureSpec) -> nn.Module | None:
    """The MLP sublayer, or None where a pruned layer skips it."""
    return getattr(layer, spec.mlp)


def norms(layer: nn.Module, spec: ArchitectureSpec) -> tuple[nn.Module | None, nn.Module | None]:
    """The norms in front of attention and MLP (None with their skipped sublayer)."""
    return getattr(layer, spec.attention_norm), getattr(layer, spec.mlp_norm)


def attention_parts(layer: nn.Module, spec: ArchitectureSpec) -> AttentionParts | None:
    attn = attention(layer, spec)
    if attn is None:
        return None
    names = (spec.q_proj, spec.k_proj, spec.v_proj, spec.o_proj)
    return AttentionParts(*(getattr(attn, name) for name in names))


def mlp_parts(layer: nn.Module, spec: ArchitectureSpec) -> MlpParts | None:
    block = mlp(layer, spec)
    if block is None:
        return None
    return MlpParts(tuple(getattr(block, name) for name in spec.mlp_in), getattr(block, spec.mlp_out))
