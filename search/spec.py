"""The search job specification: one pydantic model, used by the CLI and as the body of an HTTP job."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunesearch.choices import CriterionName, HealMethod, Sampler
from prunesearch.profilers.latency import Workload
from prunesearch.pruning.healsettings import HealSettings

__all__ = ["Efficiency", "HealSpec", "SearchSpec", "Workload"]

# The heal stage's knobs default to `prunesearch heal`'s own (one definition, `pruning/healsettings.py`).
_HEAL_DEFAULTS = HealSettings()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MinKeep(_Strict):
    """Smallest kept fraction per knob (per layer for heads and MLP, of the whole model for depth and vocab)."""

    heads: float = Field(0.25, ge=0, le=1)
    ffn: float = Field(0.25, ge=0, le=1)
    layers: float = Field(0.5, gt=0, le=1, description="fraction of attention and of MLP sublayers kept")
    vocab: float = Field(0.25, gt=0, le=1)


class SearchSpace(_Strict):
    """Which knobs the search may turn, and how far."""

    heads: bool = True
    ffn: bool = True
    depth: Literal["none", "layers", "sublayers"] = "sublayers"
    vocab: bool = False
    ffn_step: int | None = Field(None, ge=1, description="MLP width granularity; default 64, or 8 for tiny models")
    min_keep: MinKeep = MinKeep()
    layers: list[int] | None = Field(None, description="indices of layers the search may touch (default: all)")
    parametrization: Literal["per_layer", "profile"] = "per_layer"

    @model_validator(mode="after")
    def _some_knob(self) -> SearchSpace:
        if not (self.heads or self.ffn or self.vocab or self.depth != "none"):
            raise ValueError("the search space has no knob: enable heads, ffn, depth or vocab")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError("layers must be a non-empty list of non-negative layer indices")
        return self


class Objectives(_Strict):
    quality: Literal["kl", "ppl"] = "kl"
    latency: Literal["prefill", "decode", "total"] = "total"
    extra: list[Literal["params", "memory"]] = Field(default_factory=list)


class Constraints(_Strict):
    latency_budget_fraction: float | None = Field(None, gt=0, le=1, description="at most this share of dense")
    latency_budget_ms: float | None = Field(None, gt=0, description="at most this many milliseconds")
    vocab_coverage: float | None = Field(None, gt=0, le=1, description="min fraction of calibration tokens kept")
    fit_in_memory: bool = True

    @model_validator(mode="after")
    def _one_budget(self) -> Constraints:
        if self.latency_budget_fraction is not None and self.latency_budget_ms is not None:
            raise ValueError("give latency_budget_fraction or latency_budget_ms, not both")
        return self


class CalibrationSampling(_Strict):
    """How the calibration text is sampled for importance statistics and the proxy, and the importance criterion.
    (Not the latency calibration: that is `profilers.calibrate.LatencyFit`.) Its JSON field is
    `calibration_settings`."""

    tokens: int = Field(16_384, ge=64, le=10_000_000)
    seq_len: int = Field(256, ge=8, le=32_768)
    criterion: CriterionName = CriterionName.FLAP


class Efficiency(_Strict):
    """How trials are made cheaper (docs/search.md, "Search efficiency"); neither changes a full-fidelity score."""

    prefix_cache_mib: int = Field(
        1024, ge=0, le=1_000_000, description="memory for dense hidden states at layer boundaries (0: no reuse)"
    )
    low_fidelity: float = Field(
        0.25, gt=0, le=1, description="share of calibration blocks scored before deciding to finish (1: off)"
    )
    margin: float = Field(2.0, ge=0, le=100, description="standard errors of optimism when deciding")
    informed_starts: bool = Field(
        True, description="enqueue FLAP-global, depth+width and profile starting points (docs/benchmarks.md)"
    )


class HealSpec(_Strict):
    """Heal-aware selection: after the trials, heal up to `top_k` Pareto candidates spread over the latency
    range for `tokens` tokens each (distillation from the dense model on the calibration text), and score them
    again with the search's own KL and perplexity."""

    top_k: int = Field(4, ge=1, le=64, description="how many front candidates to heal")
    tokens: int = Field(200_000, ge=64, le=100_000_000, description="training tokens per candidate")
    method: HealMethod = HealMethod.FULL
    lr: float | None = Field(None, gt=0, le=1, description="peak learning rate (default: the method's)")
    seq_len: int = Field(_HEAL_DEFAULTS.seq_len, ge=8, le=32_768)
    batch: int = Field(_HEAL_DEFAULTS.batch, ge=1, le=1024)

    @model_validator(mode="after")
    def _one_step(self) -> HealSpec:
        if self.tokens < self.seq_len * self.batch:
            raise ValueError(f"heal tokens ({self.tokens}) must cover one step of batch x seq_len tokens")
        return self

    def settings(self, seed: int) -> HealSettings:
        """The `prunesearch heal` settings of one candidate's heal."""
        return HealSettings(
            method=self.method, tokens=self.tokens, lr=self.lr, seq_len=self.seq_len, batch=self.batch, seed=seed
        )


class SearchSpec(_Strict):
    """Everything a search needs. `model` and `calibration` are local paths (the service resolves ids first)."""

    model: str
    calibration: str
    space: SearchSpace = SearchSpace()
    objectives: Objectives = Objectives()
    constraints: Constraints = Constraints()
    hardware: str = "h100-sxm"
    workload: Workload = Workload()
    calibration_settings: CalibrationSampling = CalibrationSampling()
    sampler: Sampler = Sampler.TPE
    n_trials: int = Field(100, ge=1, le=100_000)
    timeout_s: float | None = Field(None, gt=0)
    seed: int = 0
    baselines: bool = True
    # Default efficiency settings are left out of the dump, so older specs and studies read back unchanged.
    efficiency: Efficiency = Field(default_factory=Efficiency, exclude_if=lambda value: value == Efficiency())
    # A spec without heal dumps exactly as before the field existed (stored specs, studies, job views).
    heal: HealSpec | None = Field(
        None,
        description="heal the best candidates after the search (default: off)",
        exclude_if=lambda value: value is None,
    )

    def latency_budget_ms(self, dense_ms: float) -> float | None:
        """The latency budget in milliseconds, given the dense model's latency."""
        c = self.constraints
        if c.latency_budget_fraction is not None:
            return c.latency_budget_fraction * dense_ms
        return c.latency_budget_ms
