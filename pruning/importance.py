"""Importance criteria: which KV groups and MLP channels of each layer matter most.

Every criterion scores the *input channels of the output projections* (o_proj, down_proj), since removing a
head or an MLP channel removes exactly those columns; head scores are summed over whole KV groups.
- magnitude: L2 norms of all weights attached to a channel (no calibration needed).
- wanda (structured): sum_i |W_out[i, j]| * ||X_j||_2 (Sun et al., 2023, applied per column).
- flap: fluctuation sum_i W_out[i, j]^2 * Var(X_j) (An et al., 2024), with bias compensation of the
  removed channels' mean contribution (see surgery).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol, runtime_checkable

import torch

from prunesearch.choices import CriterionName

from .architectures import ArchitectureSpec
from .deploy import stock_bias_parts
from .modules import AttentionParts, MlpParts, attention_parts, decoder_layers, mlp_parts, spec_of
from .stats import ActivationStats


class CriterionError(ValueError):
    """An unknown criterion, or one that needs calibration data asked for without any."""


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
        return self.attn_input_mean is not None or self.mlp_input_mean is not None

    def compensating_parts(self, spec: ArchitectureSpec) -> set[str]:
        """The sublayers (`spec.attention`, `spec.mlp`) whose removed channels move into an output bias."""
        parts = {spec.attention: self.attn_input_mean, spec.mlp: self.mlp_input_mean}
        return {part for part, means in parts.items() if means is not None}

    def stock_compensation(self, spec: ArchitectureSpec) -> ImportanceScores:
        """These scores with bias compensation kept only where the stock config can switch a bias on (so a
        uniform plan still exports with the stock class; `deploy: stock`)."""
        allowed = stock_bias_parts(spec)
        return replace(
            self,
            attn_input_mean=self.attn_input_mean if spec.attention in allowed else None,
            mlp_input_mean=self.mlp_input_mean if spec.mlp in allowed else None,
        )


@runtime_checkable
class Criterion(Protocol):
    """Scores the input channels of one dense layer's output projections (o_proj, down_proj)."""

    name: ClassVar[CriterionName]
    needs_calibration: ClassVar[bool]  # reads `ActivationStats`
    compensates_bias: ClassVar[bool]  # surgery moves removed channels' mean contribution into the output bias

    def column_scores(
        self, attn: AttentionParts, mlp: MlpParts, stats: ActivationStats | None, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per attention channel ([heads * head_dim]) and per MLP channel ([intermediate]) of layer `index`."""
        ...


class Magnitude:
    """L2 norms of all weights attached to a channel; no calibration."""

    name: ClassVar[CriterionName] = CriterionName.MAGNITUDE
    needs_calibration: ClassVar[bool] = False
    compensates_bias: ClassVar[bool] = False

    def column_scores(self, attn, mlp, stats, index):
        return _magnitude_attention(attn), _magnitude_mlp(mlp)


class Wanda:
    """Structured Wanda: sum_i |W_out[i, j]| * ||X_j||_2."""

    name: ClassVar[CriterionName] = CriterionName.WANDA
    needs_calibration: ClassVar[bool] = True
    compensates_bias: ClassVar[bool] = False

    def column_scores(self, attn, mlp, stats, index):
        attn_scores = _weight(attn.o_proj).abs().sum(0) * stats.norm("attn", index)
        return attn_scores, _weight(mlp.output).abs().sum(0) * stats.norm("mlp", index)


class Flap:
    """FLAP fluctuation: sum_i W_out[i, j]^2 * Var(X_j), with bias compensation."""

    name: ClassVar[CriterionName] = CriterionName.FLAP
    needs_calibration: ClassVar[bool] = True
    compensates_bias: ClassVar[bool] = True

    def column_scores(self, attn, mlp, stats, index):
        attn_scores = _weight(attn.o_proj).pow(2).sum(0) * stats.variance("attn", index)
        return attn_scores, _weight(mlp.output).pow(2).sum(0) * stats.variance("mlp", index)


CRITERIA: dict[CriterionName, Criterion] = {c.name: c for c in (Flap(), Wanda(), Magnitude())}


def get_criterion(name: str) -> Criterion:
    """The criterion called `name`, or a clear error naming the known ones."""
    try:
        return CRITERIA[CriterionName(name)]
    except ValueError:
        raise CriterionError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}") from None


@torch.no_grad()
def compute_importance(model, criterion: str, stats: ActivationStats | None = None) -> ImportanceScores:
    """Score every KV group and MLP channel of `model` (a dense, unpruned model) by `criterion`."""
    chosen = get_criterion(criterion)
    if chosen.needs_calibration and stats is None:
        raise CriterionError(f"criterion {criterion!r} needs calibration data; pass --calibration or use magnitude")
    spec = spec_of(model)
    kv_groups, channels = [], []
    for index, layer in enumerate(decoder_layers(model)):
        attn, mlp = attention_parts(layer, spec), mlp_parts(layer, spec)
        attn_cols, mlp_cols = chosen.column_scores(attn, mlp, stats, index)
        kv_groups.append(attn_cols.reshape(model.config.num_key_value_heads, -1).sum(dim=1))
        channels.append(mlp_cols)
    num_layers = len(kv_groups)
    compensate = chosen.compensates_bias
    return ImportanceScores(
        criterion=criterion,
        kv_groups=kv_groups,
        channels=channels,
        layer_influence=stats.influence.clone() if stats is not None else None,
        attn_input_mean=[stats.mean("attn", i) for i in range(num_layers)] if compensate else None,
        mlp_input_mean=[stats.mean("mlp", i) for i in range(num_layers)] if compensate else None,
    )


def _weight(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.weight.detach().double().cpu()


def _row_norms(linear: torch.nn.Linear) -> torch.Tensor:
    return _weight(linear).norm(dim=1)


def _magnitude_attention(attn: AttentionParts) -> torch.Tensor:
    """Per attention channel (o_proj column): its o_proj column norm plus its q row norm, plus the k and v
    row norms of its KV group spread evenly over the group's channels."""
    q_rows = _row_norms(attn.q_proj)
    kv_rows = _row_norms(attn.k_proj) + _row_norms(attn.v_proj)
    o_cols = _weight(attn.o_proj).norm(dim=0)
    return o_cols + q_rows + _spread(kv_rows, len(q_rows))


def _spread(kv_rows: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Spread each KV head's total over the query channels of its group (group-major layout)."""
    ratio = num_channels // kv_rows.numel()  # the GQA group size; KV row g*head_dim+d lands in group g's block
    return (kv_rows / ratio).repeat_interleave(ratio)


def _magnitude_mlp(mlp: MlpParts) -> torch.Tensor:
    return sum(_row_norms(linear) for linear in mlp.inputs) + _weight(mlp.output).norm(dim=0)
