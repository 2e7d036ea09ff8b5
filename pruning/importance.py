"""Importance criteria: which KV groups and MLP channels of each layer matter most.

Every criterion scores the *input channels of the output projections* (o_proj, down_proj), since removing a
head or an MLP channel removes exactly those columns; head scores are summed over whole KV groups.
- magnitude: L2 norms of all weights attached to a channel (no calibration needed).
- wanda (structured): sum_i |W_out[i, j]| * ||X_j||_2 (Sun et al., 2023, applied per column).
- flap: fluctuation sum_i W_out[i, j]^2 * Var(X_j) (An et al., 2024), with bias compensation of the
  removed channels' mean contribution (see surgery).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunesearch.choices import CriterionName, values

from .architectures import ArchitectureSpec, get_spec
from .modules import attention_parts, layer_modules, mlp_parts
from .stats import ActivationStats

CRITERIA = tuple(values(CriterionName))


@dataclass
class ImportanceScores:
    """Per-layer scores (higher = keep), and the channel means FLAP's bias compensation needs."""

    criterion: str
    kv_groups: list[torch.Tensor]  # [num_kv_heads] per layer
    channels: list[torch.Tensor]  # [intermediate_size] per layer
    layer_influence: torch.Tensor | None = None  # [layers], ShortGPT block influence
    attn_input_mean: list[torch.Tensor] | None = field(default=None, repr=False)
    mlp_input_mean: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def compensates_bias(self) -> bool:
        return self.attn_input_mean is not None


def _check_criterion(criterion: str, stats: ActivationStats | None) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion != "magnitude" and stats is None:
        raise ValueError(f"criterion {criterion!r} needs calibration data; pass --calibration or use magnitude")


def compute_importance(model, criterion: str, stats: ActivationStats | None = None) -> ImportanceScores:
    """Score every KV group and MLP channel of `model` (a dense, unpruned model) by `criterion`."""
    _check_criterion(criterion, stats)
    spec = get_spec(model.config.model_type)
    kv_groups, channels = [], []
    for index, layer in enumerate(layer_modules(model, spec)):
        attn_cols, mlp_cols = _column_scores(layer, spec, criterion, stats, index)
        heads = model.config.num_key_value_heads
        kv_groups.append(attn_cols.reshape(heads, -1).sum(dim=1))
        channels.append(mlp_cols)
    num_layers = len(kv_groups)
    return ImportanceScores(
        criterion=criterion,
        kv_groups=kv_groups,
        channels=channels,
        layer_influence=stats.influence.clone() if stats is not None else None,
        attn_input_mean=[stats.mean("attn", i) for i in range(num_layers)] if criterion == "flap" else None,
        mlp_input_mean=[stats.mean("mlp", i) for i in range(num_layers)] if criterion == "flap" else None,
    )


@torch.no_grad()
def _column_scores(layer, spec: ArchitectureSpec, criterion: str, stats, index: int):
    attn = attention_parts(layer, spec)
    mlp_in, down = mlp_parts(layer, spec)
    o_weight = attn["o_proj"].weight.detach().double().cpu()
    down_weight = down.weight.detach().double().cpu()
    if criterion == "magnitude":
        return _magnitude_attention(attn), _magnitude_mlp(mlp_in, down_weight)
    if criterion == "wanda":
        attn_scores = o_weight.abs().sum(0) * stats.norm("attn", index)
        return attn_scores, down_weight.abs().sum(0) * stats.norm("mlp", index)
    attn_scores = o_weight.pow(2).sum(0) * stats.variance("attn", index)
    return attn_scores, down_weight.pow(2).sum(0) * stats.variance("mlp", index)


def _row_norms(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.weight.detach().double().cpu().norm(dim=1)


def _magnitude_attention(attn: dict[str, torch.nn.Linear]) -> torch.Tensor:
    """Per attention channel (o_proj column): its o_proj column norm plus its q row norm, plus the k and v
    row norms of its KV group spread evenly over the group's channels."""
    q_rows = _row_norms(attn["q_proj"])
    kv_rows = _row_norms(attn["k_proj"]) + _row_norms(attn["v_proj"])
    o_cols = attn["o_proj"].weight.detach().double().cpu().norm(dim=0)
    return o_cols + q_rows + _spread(kv_rows, len(q_rows))


def _spread(kv_rows: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Spread each KV head's total over the query channels of its group (group-major layout)."""
    ratio = num_channels // kv_rows.numel()  # the GQA group size; KV row g*head_dim+d lands in group g's block
    return (kv_rows / ratio).repeat_interleave(ratio)


def _magnitude_mlp(mlp_in: list[torch.nn.Linear], down_weight: torch.Tensor) -> torch.Tensor:
    return sum(_row_norms(linear) for linear in mlp_in) + down_weight.norm(dim=0)
