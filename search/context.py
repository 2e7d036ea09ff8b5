"""Everything one worker loads once per search job, and the evaluation of one trial."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from prunesearch.choices import Repair
from prunesearch.profilers.latency import LatencyEstimate, LatencyModel, Workload
from prunesearch.profilers.registry import latency_model_for, recommended_ffn_step
from prunesearch.pruning.architectures import get_spec, model_shape
from prunesearch.pruning.calibration import load_calibration, token_blocks
from prunesearch.pruning.deploy import stock_head_counts
from prunesearch.pruning.export import load_base_model
from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.stats import cached_activation_stats
from prunesearch.pruning.vocab import draft_reads, mandatory_token_count, select_kept_tokens, token_frequencies

from . import fidelity
from .baselines import baseline_params
from .draft import DraftPricing, draft_memory_violation, draft_pricing
from .evaluator import CandidateEvaluator, VocabChoice
from .fidelity import FrontMember
from .fill import Filled, fill
from .parametrize import FixedParams, Knobs, TrialLike, complete_params, depth_violation, resolve, suggest_plan
from .spec import SearchSpec
from .starts import informed_params
from .vocabfit import VocabFolds, vocab_folds

# Quality recorded for trials that violate a constraint: the expensive proxy is never run for them.
INFEASIBLE_QUALITY = 1e6
# Informed starting points take at most 1 / INFORMED_SHARE of a search's trials.
INFORMED_SHARE = 4
LATENCY_FIELDS = {"prefill": "prefill_ms", "decode": "decode_ms_per_token", "total": "total_ms"}


def latency_value(estimate: LatencyEstimate, objective: str) -> float:
    """The minimised latency of an objective; `throughput` is ms per generated token over the whole batch."""
    if objective == "throughput":
        return 1e3 / estimate.tokens_per_s
    return float(getattr(estimate, LATENCY_FIELDS[objective]))


@dataclass
class TrialOutcome:
    plan: PrunePlan
    values: list[float]
    metrics: dict[str, Any]
    constraints: dict[str, float]
    feasible: bool = field(init=False)
    blocks: list[float] | None = None  # per-block quality values of a candidate scored in full

    def __post_init__(self) -> None:
        self.feasible = all(value <= 0 for value in self.constraints.values())


def _first_of(metrics: dict[str, Any], keys: Sequence[str], default: Any) -> Any:
    """The first of `keys` present in `metrics` (a full score, else a stopped candidate's estimate)."""
    return next((metrics[key] for key in keys if key in metrics), default)


def proxy_batch_size(n_blocks: int) -> int:
    """Up to 8 blocks a batch, but at least 4 batches where there are enough blocks, so that a quarter of them
    can be scored as the low-fidelity stage."""
    return max(1, min(8, math.ceil(n_blocks / 4)))


class SearchContext:
    """The dense model, calibration, importance scores, proxy evaluator and latency model of one job."""

    def __init__(self, spec: SearchSpec, *, progress: bool = False):
        self.spec = spec
        if not Path(spec.model).is_dir():
            raise FileNotFoundError(f"model directory {spec.model} does not exist")
        self.model, self.tokenizer = load_base_model(spec.model)
        self.shape = model_shape(self.model.config, num_special_tokens=len(self.tokenizer.all_special_ids))
        docs = load_calibration(spec.calibration, self.tokenizer)
        settings = spec.calibration_settings
        blocks = token_blocks(self.tokenizer, docs, settings.seq_len, settings.tokens)
        stats, _ = cached_activation_stats(self.model, blocks, progress=progress)
        architecture = get_spec(self.model.config.model_type)
        self.scores = compute_importance(self.model, settings.criterion, stats)
        stock_heads = None
        if spec.stock_only:  # deploy: stock: the space holds stock-loadable plans only (see parametrize)
            self.scores = self.scores.stock_compensation(architecture)
            stock_heads = stock_head_counts(architecture, self.shape)
        step = recommended_ffn_step(spec.hardware) if spec.space.ffn_step == "hardware" else None
        influence = stats.influence.tolist()
        min_vocab = mandatory_token_count(self.tokenizer) if spec.space.vocab else 0
        self.knobs: Knobs = resolve(
            self.shape, spec.space, influence, step, stock_heads=stock_heads, min_vocab=min_vocab
        )
        self.frequencies = token_frequencies(self.tokenizer, [doc.coverage_text for doc in docs])  # coverage
        self.vocab_weights: Mapping[int, float] = self.frequencies  # what a vocabulary of k tokens keeps the top of
        # drafts with a vocabulary knob: keep what the target emits, scored out of sample (search/vocabfit.py)
        self.folds: VocabFolds | None = None
        speculative = spec.objectives.speculative
        if speculative is not None and spec.space.vocab:
            self.folds = vocab_folds(
                self.model, self.tokenizer, docs, settings.seq_len, len(blocks), speculative.temperature
            )
            self.vocab_weights = self.folds.total
        self.evaluator = CandidateEvaluator(
            self.model,
            blocks,
            self.scores,
            batch_size=proxy_batch_size(len(blocks)),
            prefix_cache_bytes=spec.efficiency.prefix_cache_mib << 20,
            temperature=spec.objectives.speculative.temperature if spec.objectives.speculative else None,
            folds=self.folds.block_fold if self.folds is not None else None,
            refit=spec.repair == Repair.REFIT,
        )
        self.latency_model: LatencyModel = latency_model_for(spec.hardware, spec.workload.engine)
        self.config = self.model.config.to_dict()
        self.workload: Workload = spec.workload
        # drafts: the target's prices; a candidate's latency is then its decode step (`_latency`)
        self.draft: DraftPricing | None = None
        if spec.objectives.speculative is not None:
            self.draft = draft_pricing(self.latency_model, self.config, self.workload, spec.objectives.speculative)
        self.dense_latency = self._latency(self.latency_model.estimate(self.config, None, self.workload))
        self.budget_ms = spec.latency_budget_ms(self.dense_latency)
        self.kept_tokens = lru_cache(maxsize=256)(self._kept_tokens)
        self.scored_vocabulary = lru_cache(maxsize=64)(self._scored_vocabulary)

    def _latency(self, estimate: LatencyEstimate) -> float:
        """The minimised latency: the objective's, or for a draft its decode step (draft_ms)."""
        if self.draft is not None:
            return estimate.decode_ms_per_token
        return latency_value(estimate, self.spec.objectives.latency)

    def _kept_tokens(self, size: int | None) -> tuple[int, ...] | None:
        if size is None or size >= self.shape.vocab_size:
            return None
        return tuple(select_kept_tokens(self.tokenizer, self.vocab_weights, size))

    def _scored_vocabulary(self, size: int | None):
        """What the proxy scores a vocabulary of `size` with: for drafts, per fold of the calibration blocks, the
        kept tokens chosen without that fold's region and the ids the draft reads in place of the others
        (search/vocabfit.py); otherwise the kept tokens (`kept_tokens`)."""
        kept = self.kept_tokens(size)
        if kept is None or self.folds is None:
            return kept
        choices = {}
        for fold in self.folds.used:
            fold_kept = select_kept_tokens(self.tokenizer, self.folds.weights[fold], size)
            reads = draft_reads(self.tokenizer, fold_kept, self.shape.vocab_size)
            choices[fold] = VocabChoice(kept=tuple(fold_kept), reads=tuple(reads))
        return choices

    def draft_inputs(self, kept: Sequence[int] | None) -> list[int] | None:
        """For a draft search, the ids a draft keeping `kept` reads in place of every token (None otherwise):
        what `evaluator.evaluate_model` feeds a materialised draft (a healed one) so it reads as it will run."""
        if self.draft is None or kept is None:
            return None
        return draft_reads(self.tokenizer, kept, self.shape.vocab_size)

    def starting_points(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, complete params) of the baselines, then of the informed starting points (search/starts.py), at
        most a quarter of `n_trials` of those, so that they never crowd out the sampler."""
        points = baseline_params(self.knobs)
        if self.spec.efficiency.informed_starts:
            kv = [s.tolist() for s in self.scores.kv_groups]
            informed = informed_params(self.knobs, kv, [s.tolist() for s in self.scores.channels])
            points += informed[: self.spec.n_trials // INFORMED_SHARE]
        return points

    def price_params(self, params: Mapping[str, Any]) -> tuple[float, float] | None:
        """The latency and parameter count of the plan `params` describe; None when it breaks a constraint other
        than the latency budget's (depth, memory, coverage). Prices only: no proxy runs."""
        plan = suggest_plan(FixedParams(params), self.knobs)
        if depth_violation(plan, self.knobs) > 0:
            return None
        estimate = self.latency_model.estimate(self.config, plan, self.workload)
        latency = self._latency(estimate)
        constraints = self._constraints(estimate, latency, self.coverage(self.kept_tokens(plan.vocab)))
        if any(value > 0 for name, value in constraints.items() if name != "latency"):
            return None
        return latency, float(estimate.params)

    def fill(self, params: Mapping[str, Any], limit_ms: float) -> Filled | None:
        """`params` with the cuts that `limit_ms` still pays for taken back (search/fill.py)."""
        return fill(params, complete_params(self.knobs, {}), self.price_params, limit_ms)

    def coverage(self, kept: tuple[int, ...] | None) -> float:
        total = sum(self.frequencies.values())
        if kept is None or not total:
            return 1.0
        return sum(self.frequencies.get(token, 0) for token in kept) / total

    def evaluate(self, trial: TrialLike, front: Sequence[FrontMember | Sequence[float]] | None = None) -> TrialOutcome:
        """Suggest a plan, check its shape, price it, and run the proxy only if every constraint holds.

        `front`: the current Pareto front (`fidelity.FrontMember`s, or bare objective values). With one, the proxy
        runs in two stages and stops after the first when the candidate cannot enter it (`fidelity`); without
        (baselines), in full. A finished candidate's per-block quality values are `outcome.blocks`."""
        plan = suggest_plan(trial, self.knobs)
        depth = depth_violation(plan, self.knobs)
        if depth > 0:  # too shallow (possibly empty): neither priced nor scored
            return self._rejected(plan, depth)
        estimate = self.latency_model.estimate(self.config, plan, self.workload)
        latency = self._latency(estimate)
        kept = self.kept_tokens(plan.vocab)
        metrics: dict[str, Any] = {
            "latency_ms": latency,
            "latency_fraction": latency / self.dense_latency,
            "prefill_ms": estimate.prefill_ms,
            "decode_ms_per_token": estimate.decode_ms_per_token,
            "total_ms": estimate.total_ms,
            "tokens_per_s": estimate.tokens_per_s,
            "params": estimate.params,
            "weight_bytes": estimate.weight_bytes,
            "vocab_coverage": self.coverage(kept),
        }
        constraints = self._constraints(estimate, latency, metrics["vocab_coverage"]) | {"depth": depth}
        outcome = TrialOutcome(plan=plan, values=[], metrics=metrics, constraints=constraints | {"fidelity": -1.0})
        extra = self._extra_values(estimate)
        if outcome.feasible:
            scored = self.scored_vocabulary(plan.vocab)
            outcome.blocks = self._score(plan, scored, metrics, [latency, *extra], front)
            if outcome.blocks is None:
                outcome.constraints["fidelity"] = 1.0  # stopped early: kept off the front and the hypervolume
                outcome.feasible = False
        if self.draft is not None and "acceptance" in metrics:
            metrics.update(self._draft_metrics(metrics["acceptance"], latency, metrics["vocab_coverage"]))
        outcome.values = [self._first_value(metrics, latency), latency, *extra]
        return outcome

    def _draft_metrics(self, acceptance: float, draft_ms: float, coverage: float) -> dict[str, Any]:
        """A scored draft's figures (docs/drafts.md): acceptance, lookahead, speedup, costs, coverage."""
        score = self.draft.score(acceptance, draft_ms)
        return score.metrics() | {"draft_ms": draft_ms, "target_ms": self.draft.target_ms, "coverage": coverage}

    def _first_value(self, metrics: dict[str, Any], latency: float) -> float:
        """The quality objective, or a draft's (`search/draft.py`); its low-fidelity estimate when it stopped
        early; the infeasible value when it was never scored."""
        if self.draft is None:
            quality = self.spec.objectives.quality
            return _first_of(metrics, (quality, f"{quality}_estimate", f"{quality}_low"), INFEASIBLE_QUALITY)
        acceptance = _first_of(metrics, ("acceptance", "acceptance_estimate", "acceptance_low"), None)
        if acceptance is None:
            return INFEASIBLE_QUALITY
        return self.draft.objective(acceptance, latency)

    def _score(self, plan: PrunePlan, kept, metrics: dict[str, Any], rest: list[float], front) -> list[float] | None:
        """Run the proxy into `metrics`; its per-block quality values, or None when it stopped after the
        low-fidelity stage (its `kl_low` and `ppl_low` are then the only scores; a finished candidate has those too
        when it was staged)."""
        settings = self.spec.efficiency
        scoring = self.evaluator.start(plan, kept, reuse=settings.prefix_cache_mib > 0)
        metrics["resume_layer"] = scoring.resume
        # a refitted score needs every batch (the map is fitted on them), so such candidates are scored in full
        staged = front and not self.evaluator.refit
        low = fidelity.low_fidelity_batches(self.evaluator.n_batches, settings.low_fidelity) if staged else 0
        if low:
            scoring.run(low)
            partial = scoring.quality()
            metrics.update(low_fidelity=scoring.fraction, kl_low=partial.kl, ppl_low=partial.ppl)
            if partial.acceptance is not None:
                metrics["acceptance_low"] = partial.acceptance
            blocks = scoring.block_values(self.block_objective)
            total, tolerance = len(self.evaluator.blocks), settings.tolerance
            verdict = fidelity.judge(blocks, total, rest, front, self._optimistic, tolerance)
            if not verdict.enter:
                metrics.update(fidelity=scoring.fraction, stopped_early=True)
                metrics[f"{self.block_objective}_estimate"] = self._on_scale(verdict.estimate.mean)
                return None
        quality = scoring.run().quality()
        metrics.update(kl=quality.kl, ppl=quality.ppl, fidelity=1.0, stopped_early=False)
        if quality.acceptance is not None:
            metrics["acceptance"] = quality.acceptance
        return scoring.block_values(self.block_objective)

    @property
    def block_objective(self) -> str:
        """The per-block quality the early-stopping rule compares: acceptance for drafts, else the quality."""
        return "acceptance" if self.draft is not None else self.spec.objectives.quality

    def _on_scale(self, block_mean: float) -> float:
        """A block mean on its metric's scale: perplexity from mean NLL, acceptance within [0, 1]."""
        if self.block_objective == "ppl":
            return math.exp(block_mean)
        return min(max(block_mean, 0.0), 1.0) if self.block_objective == "acceptance" else block_mean

    def _optimistic(self, guess: fidelity.Estimate, latency: float) -> float:
        """The first objective value at the optimistic end (`margin` standard errors) of a block-mean estimate."""
        margin = self.spec.efficiency.margin
        if self.draft is not None:  # optimistic = more acceptance; both draft objectives fall as it rises
            return self.draft.objective(min(1.0, guess.optimistic(margin, higher_is_better=True)), latency)
        optimistic = guess.optimistic(margin)
        return math.exp(optimistic) if self.spec.objectives.quality == "ppl" else optimistic

    def _rejected(self, plan: PrunePlan, depth: float) -> TrialOutcome:
        """A plan that breaks the depth bound: recorded at the dense latency and the infeasible quality."""
        constraints = {"latency": -1.0, "depth": depth, "vocab_coverage": -1.0, "memory": -1.0, "fidelity": -1.0}
        if self.draft is not None:
            constraints["draft_memory"] = -1.0
        extra = [INFEASIBLE_QUALITY] * len(self.spec.objectives.extra)
        values = [INFEASIBLE_QUALITY, self.dense_latency, *extra]
        return TrialOutcome(plan=plan, values=values, metrics={"rejected": "depth"}, constraints=constraints)

    def _constraints(self, estimate, latency: float, coverage: float) -> dict[str, float]:
        c = self.spec.constraints
        constraints = {
            "latency": latency - self.budget_ms if self.budget_ms is not None else -1.0,
            "vocab_coverage": (c.vocab_coverage - coverage) if c.vocab_coverage is not None else -1.0,
            "memory": 1.0 if c.fit_in_memory and not estimate.fits_in_memory else -1.0,
        }
        if self.draft is not None:
            constraints["draft_memory"] = draft_memory_violation(self.draft.speculative, estimate.weight_bytes)
        return constraints

    def _extra_values(self, estimate: LatencyEstimate) -> list[float]:
        w = self.workload
        kv_bytes = estimate.kv_bytes_per_token * w.batch * (w.prompt_tokens + w.generate_tokens)
        by_name = {"params": float(estimate.params), "memory": float(estimate.weight_bytes + kv_bytes)}
        return [by_name[name] for name in self.spec.objectives.extra]
