"""The search job specification: one pydantic model, used by the CLI and as the body of an HTTP job."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator

from prunesearch.choices import MAX_LOOKAHEAD, CriterionName, DeployTarget, HealMethod, Repair, Sampler
from prunesearch.profilers.latency import Workload
from prunesearch.pruning.healsettings import HealSettings

__all__ = ["Efficiency", "HealSpec", "SearchSpec", "Speculative", "Workload"]

# The heal stage's knobs default to `prunesearch heal`'s own (one definition, `pruning/healsettings.py`).
_HEAL_DEFAULTS = HealSettings()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # JSON has no NaN; stores refuse it


class MinKeep(_Strict):
    """Smallest kept fraction per knob (per layer for heads and MLP, of the whole model for depth and vocab)."""

    heads: StrictFloat = Field(0.25, ge=0, le=1)
    ffn: StrictFloat = Field(0.25, ge=0, le=1)
    layers: StrictFloat = Field(0.5, gt=0, le=1, description="fraction of attention and of MLP sublayers kept")
    vocab: StrictFloat = Field(0.25, gt=0, le=1)


class SearchSpace(_Strict):
    """Which knobs the search may turn, and how far."""

    heads: StrictBool = True
    ffn: StrictBool = True
    depth: Literal["none", "layers", "sublayers"] = "sublayers"
    vocab: StrictBool = False
    ffn_step: StrictInt | Literal["hardware"] | None = Field(
        None,
        description="MLP width granularity; default 64, or 8 for tiny models; 'hardware': the hardware profile's "
        "GEMM tile width, with every kept width a multiple of it (no padded tiles)",
    )
    min_keep: MinKeep = MinKeep()
    layers: list[StrictInt] | None = Field(None, description="indices of layers the search may touch (default: all)")
    parametrization: Literal["per_layer", "profile"] = "per_layer"

    @model_validator(mode="after")
    def _some_knob(self) -> SearchSpace:
        if isinstance(self.ffn_step, int) and self.ffn_step < 1:
            raise ValueError("ffn_step must be at least 1 (or 'hardware')")
        if not (self.heads or self.ffn or self.vocab or self.depth != "none"):
            raise ValueError("the search space has no knob: enable heads, ffn, depth or vocab")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError("layers must be a non-empty list of non-negative layer indices")
        return self


class Speculative(_Strict):
    """Search for a speculative-decoding draft cut from the model (docs/drafts.md): a candidate is scored by its
    expected acceptance against the dense model (the target) and the end-to-end speedup of target + draft."""

    lookahead: StrictInt | Literal["search"] = Field(
        "search",
        description="drafted tokens per round, 1-8, or 'search': the best of 1-8 per candidate (docs/drafts.md)",
    )
    temperature: StrictFloat = Field(0.0, ge=0, le=10, description="sampling temperature; 0 is greedy decoding")
    goal: Literal["speedup", "pareto"] = Field(
        "speedup", description="speedup: maximise expected speedup; pareto: acceptance against draft step cost"
    )
    max_draft_mib: StrictFloat | None = Field(None, gt=0, description="at most this much draft weight memory")

    @model_validator(mode="after")
    def _lookahead_range(self) -> Speculative:
        if isinstance(self.lookahead, int) and not 1 <= self.lookahead <= MAX_LOOKAHEAD:
            raise ValueError(f"lookahead must be 1-{MAX_LOOKAHEAD} or 'search'")
        return self


class Objectives(_Strict):
    quality: Literal["kl", "ppl"] = "kl"
    # decode = time per output token at the workload's concurrency (`workload.batch`); throughput = the inverse
    # of generated tokens/s at that concurrency (ms per generated token over the whole batch), minimised
    latency: Literal["prefill", "decode", "total", "throughput"] = "total"
    extra: list[Literal["params", "memory"]] = Field(default_factory=list)
    # A spec without drafts dumps exactly as before the field existed (stored specs, studies, job views).
    speculative: Speculative | None = Field(
        None,
        description="search for a speculative-decoding draft of the model instead of a pruned replacement",
        exclude_if=lambda value: value is None,
    )


class Constraints(_Strict):
    latency_budget_fraction: StrictFloat | None = Field(None, gt=0, le=1, description="at most this share of dense")
    latency_budget_ms: StrictFloat | None = Field(None, gt=0, description="at most this many milliseconds")
    vocab_coverage: StrictFloat | None = Field(None, gt=0, le=1, description="min fraction of calibration tokens kept")
    fit_in_memory: StrictBool = True
    # A spec without the constraint dumps as before the field existed (stored specs, studies, job views).
    deploy: DeployTarget = Field(
        DeployTarget.ANY,
        description="stock: only plans whose export loads with the stock transformers class (and serving engines)",
        exclude_if=lambda value: value == DeployTarget.ANY,
    )

    @model_validator(mode="after")
    def _one_budget(self) -> Constraints:
        if self.latency_budget_fraction is not None and self.latency_budget_ms is not None:
            raise ValueError("give latency_budget_fraction or latency_budget_ms, not both")
        return self


class CalibrationSampling(_Strict):
    """How the calibration text is sampled for importance statistics and the proxy, and the importance criterion.
    (Not the latency calibration: that is `profilers.calibrate.LatencyFit`.) Its JSON field is
    `calibration_settings`."""

    tokens: StrictInt = Field(16_384, ge=64, le=10_000_000)
    seq_len: StrictInt = Field(256, ge=8, le=32_768)
    criterion: CriterionName = CriterionName.FLAP


class Efficiency(_Strict):
    """How trials are made cheaper (docs/search.md, "Search efficiency"); neither changes a full-fidelity score."""

    prefix_cache_mib: StrictInt = Field(
        1024, ge=0, le=1_000_000, description="memory for dense hidden states at layer boundaries (0: no reuse)"
    )
    low_fidelity: StrictFloat = Field(
        0.25, gt=0, le=1, description="share of calibration blocks scored before deciding to finish (1: off)"
    )
    margin: StrictFloat = Field(2.0, ge=0, le=100, description="standard errors of optimism when deciding")
    tolerance: StrictFloat = Field(
        0.005,
        ge=0,
        le=0.5,
        description="a candidate that could improve on a front member by less than this share (quality, or a "
        "faster latency) is not finished (epsilon-dominance; 0: plain dominance)",
    )
    informed_starts: StrictBool = Field(
        False,
        description="enqueue FLAP-global, depth+width and profile starting points, and sample with multivariate "
        "TPE: a better front after 25-50 trials, a worse one after 100 (docs/benchmarks.md)",
    )
    fill: StrictBool = Field(
        True,
        description="spend the last trials on the best plan under each latency budget (`budgets`, the latency "
        "constraint, heal.budgets) with the cuts its budget still pays for taken back (docs/search.md)",
    )


class HealSpec(_Strict):
    """Heal-aware selection: after the trials, heal up to `top_k` Pareto candidates spread over the latency
    range for `tokens` tokens each (distillation from the dense model on the calibration text), and score them
    again with the search's own KL and perplexity."""

    top_k: StrictInt = Field(4, ge=1, le=64, description="how many front candidates to heal")
    tokens: StrictInt = Field(200_000, ge=64, le=100_000_000, description="training tokens per candidate")
    method: HealMethod = HealMethod.FULL
    lr: StrictFloat | None = Field(None, gt=0, le=1, description="peak learning rate (default: the method's)")
    seq_len: StrictInt = Field(_HEAL_DEFAULTS.seq_len, ge=8, le=32_768)
    batch: StrictInt = Field(_HEAL_DEFAULTS.batch, ge=1, le=1024)
    budgets: list[Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]] | None = Field(
        None,
        max_length=16,
        description="latency budgets as shares of dense latency: heal the front members just under each one "
        "(default: spread over the whole front)",
        exclude_if=lambda value: value is None,  # heal blocks stored before it existed dump as they did
    )
    rivals: StrictBool = Field(
        True,
        description="with budgets: also heal the strongest enqueued baseline under each budget (beyond top_k), so "
        "the healed front says whether the search's plan still wins once both are healed",
        exclude_if=lambda value: value,  # the default: heal blocks stored before it existed dump as they did
    )

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
    n_trials: StrictInt = Field(100, ge=1, le=100_000)
    timeout_s: StrictFloat | None = Field(None, gt=0)
    seed: StrictInt = 0
    baselines: StrictBool = True
    budgets: list[Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]] | None = Field(
        None,
        max_length=16,
        description="latency budgets as shares of dense latency that winners will be picked at: the search fills "
        "the best plan under each one (efficiency.fill); no constraint",
        exclude_if=lambda value: value is None,  # specs stored before it existed dump as they did
    )
    repair: Repair = Field(
        Repair.NONE,
        description="refit: score every candidate, and export every plan, after a least-squares map of its final "
        "hidden state onto the dense model's, folded into the LM head (training-free; docs/search.md, 'Repair')",
        exclude_if=lambda value: value == Repair.NONE,  # specs stored before it existed dump as they did
    )
    # Default efficiency settings are left out of the dump, so older specs and studies read back unchanged.
    efficiency: Efficiency = Field(default_factory=Efficiency, exclude_if=lambda value: value == Efficiency())
    # A spec without heal dumps exactly as before the field existed (stored specs, studies, job views).
    heal: HealSpec | None = Field(
        None,
        description="heal the best candidates after the search (default: off)",
        exclude_if=lambda value: value is None,
    )

    @model_validator(mode="after")
    def _stock_widths_everywhere(self) -> SearchSpec:
        space = self.space
        if self.constraints.deploy == DeployTarget.STOCK and space.layers is not None and (space.heads or space.ffn):
            raise ValueError(
                "deploy: stock prunes heads and MLP widths uniformly in every layer, so space.layers cannot limit "
                "them: drop space.layers, or set space.heads and space.ffn to false to remove only those layers"
            )
        return self

    @model_validator(mode="after")
    def _repair_not_for_drafts(self) -> SearchSpec:
        if self.repair != Repair.NONE and self.objectives.speculative is not None:
            raise ValueError("repair is for pruned replacements, not speculative drafts: set repair to 'none'")
        return self

    @property
    def stock_only(self) -> bool:
        """Only plans whose export loads with the stock classes (`constraints.deploy: stock`)."""
        return self.constraints.deploy == DeployTarget.STOCK

    def fill_budgets_ms(self, dense_ms: float) -> list[float]:
        """The latency budgets (ms) whose best plans the search fills: `budgets`, the latency constraint and
        heal.budgets, smallest first; none for drafts (their objective is speedup) or with efficiency.fill off."""
        if not self.efficiency.fill or self.objectives.speculative is not None:
            return []
        shares = [*(self.budgets or ()), *((self.heal.budgets or ()) if self.heal is not None else ())]
        found = {share * dense_ms for share in shares}
        constraint = self.latency_budget_ms(dense_ms)
        if constraint is not None:
            found = {b for b in found if b <= constraint} | {constraint}
        return sorted(found)

    def latency_budget_ms(self, dense_ms: float) -> float | None:
        """The latency budget in milliseconds, given the dense model's latency."""
        c = self.constraints
        if c.latency_budget_fraction is not None:
            return c.latency_budget_fraction * dense_ms
        return c.latency_budget_ms
