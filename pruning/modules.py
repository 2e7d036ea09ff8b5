"""Finding a model's parts by the dotted paths an ArchitectureSpec names."""

from __future__ import annotations

from torch import nn

from .architectures import ArchitectureSpec


def layer_modules(model: nn.Module, spec: ArchitectureSpec) -> nn.ModuleList:
    """The decoder layers of `model`, in order."""
    return model.get_submodule(spec.layers_path)


def attention_parts(layer: nn.Module, spec: ArchitectureSpec) -> dict[str, nn.Linear]:
    attn = getattr(layer, spec.attention)
    return {name: getattr(attn, getattr(spec, name)) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}


def mlp_parts(layer: nn.Module, spec: ArchitectureSpec) -> tuple[list[nn.Linear], nn.Linear]:
    mlp = getattr(layer, spec.mlp)
    return [getattr(mlp, name) for name in spec.mlp_in], getattr(mlp, spec.mlp_out)
