"""Pricing a draft: the verification step from the latency model, and the expected speedup of a candidate."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from prunesearch.choices import Engine
from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.hardware import get_profile
from prunesearch.profilers.latency import LatencyEstimate, Workload
from prunesearch.profilers.measured import MeasuredLatencyModel
from prunesearch.profilers.verify import multi_token_step_ms, verification_costs
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.speculative import MAX_LOOKAHEAD, speedup
from prunesearch.search.draft import (
    DraftPricing,
    draft_memory_violation,
    draft_points,
    draft_pricing,
    objective_names,
)
from prunesearch.search.spec import Speculative

# a 7B-like config: at batch 32 on an H100 its decode GEMMs approach the compute roof
BIG = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
}


@pytest.mark.parametrize("engine", [Engine.EAGER, Engine.GRAPHS])
@pytest.mark.parametrize("batch", [1, 16])
def test_one_token_is_a_plain_decode_step(engine, batch):
    model = RooflineModel(get_profile("h100-sxm"))
    workload = Workload(batch=batch, prompt_tokens=256, generate_tokens=32, engine=engine)
    plan = PrunePlan(layers=tuple(LayerPlan(16, 5504) for _ in range(32)))
    for candidate in (None, plan):
        expected = model.estimate(BIG, candidate, workload).decode_ms_per_token
        assert multi_token_step_ms(model, BIG, candidate, workload, 1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("engine", [Engine.EAGER, Engine.GRAPHS])
def test_verification_grows_with_the_lookahead_where_compute_matters(engine):
    model = RooflineModel(get_profile("h100-sxm"))
    workload = Workload(batch=128, prompt_tokens=512, generate_tokens=64, engine=engine)
    costs = verification_costs(model, BIG, workload, MAX_LOOKAHEAD)
    assert len(costs) == MAX_LOOKAHEAD
    assert all(b > a for a, b in itertools.pairwise(costs))
    assert costs[0] > 1.0 and costs[-1] > 1.8  # 9 tokens per sequence at batch 128 are far from free
    # memory-bound at batch 1: verifying a few tokens costs about one step, never less
    small = verification_costs(model, BIG, Workload(batch=1, engine=engine), 8)
    assert all(1.0 <= v < 1.05 for v in small) and all(b >= a for a, b in itertools.pairwise(small))


class FixedStep:
    """A latency model with a 2 ms decode step and no roofline."""

    def estimate(self, config, plan, workload) -> LatencyEstimate:
        return LatencyEstimate(1.0, 2.0, 3.0, 1.0, 1, 1, 1, True, "fixed")


@dataclass(frozen=True)
class SelfPriced(FixedStep):
    """... that prices verification itself."""

    costs: tuple[float, ...]

    def verification_costs(self, config, workload, max_lookahead: int) -> tuple[float, ...]:
        return self.costs[:max_lookahead]


def test_a_model_pricing_verification_itself_is_asked_first():
    own = tuple(1.0 + g / 8 for g in range(1, MAX_LOOKAHEAD + 1))
    assert verification_costs(SelfPriced(own), BIG, Workload(), 3) == own[:3]
    assert verification_costs(FixedStep(), BIG, Workload(), 3) is None
    priced, unpriced = (draft_pricing(m, BIG, Workload(), Speculative()) for m in (SelfPriced(own), FixedStep()))
    assert priced.verify_priced and priced.verify_costs == own and priced.target_ms == 2.0
    assert not unpriced.verify_priced and unpriced.verify_costs == (1.0,) * MAX_LOOKAHEAD


def test_measured_hardware_prices_verification_by_timing_it():
    tiny = json.loads((Path(__file__).parents[1] / "profilers" / "tiny_configs.json").read_text())["qwen3"]
    measured = MeasuredLatencyModel(warmup=0, repeats=2, verify_rounds=2)
    pricing = draft_pricing(measured, tiny, Workload(1, 8, 2, "fp32"), Speculative())
    assert pricing.verify_priced and len(pricing.verify_costs) == MAX_LOOKAHEAD
    assert all(0 < v < math.inf for v in pricing.verify_costs)


def _pricing(lookahead="search", goal="speedup", costs=(1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8)) -> DraftPricing:
    return DraftPricing(
        Speculative(lookahead=lookahead, goal=goal), target_ms=2.0, verify_costs=costs, verify_priced=True
    )


def test_score_is_the_best_lookahead_by_the_formula():
    pricing = _pricing()
    score = pricing.score(0.8, 0.5)  # c = 0.25
    by_hand = {g: (1 - 0.8 ** (g + 1)) / ((1 - 0.8) * (g * 0.25 + (1.0 + g / 10))) for g in range(1, 9)}
    best = max(by_hand, key=by_hand.get)
    assert (score.lookahead, score.draft_cost) == (best, 0.25)
    assert score.speedup == pytest.approx(by_hand[best]) and score.verify_cost == pytest.approx(1 + best / 10)
    fixed = _pricing(lookahead=2).score(0.8, 0.5)
    assert fixed.lookahead == 2 and fixed.speedup == pytest.approx(by_hand[2])
    assert pricing.objective(0.8, 0.5) == pytest.approx(1 / by_hand[best])
    assert _pricing(goal="pareto").objective(0.8, 0.5) == pytest.approx(0.2)


def test_dense_draft_speedup_is_g_plus_1_over_g_c_plus_v():
    pricing = _pricing(lookahead=3)
    score = pricing.score(1.0, pricing.target_ms)
    assert score.speedup == pytest.approx(4 / (3 * 1.0 + 1.3))
    assert score.speedup == pytest.approx(speedup(1.0, 3, 1.0, 1.3))


def test_objective_names_and_memory_constraint():
    assert objective_names(Speculative()) == ["inverse_speedup", "draft_ms"]
    assert objective_names(Speculative(goal="pareto")) == ["rejection", "draft_ms"]
    assert draft_memory_violation(Speculative(), 10 << 20) == -1.0
    assert draft_memory_violation(Speculative(max_draft_mib=8.0), 10 << 20) == pytest.approx(2.0)
    assert draft_memory_violation(Speculative(max_draft_mib=16.0), 10 << 20) < 0


def test_draft_points_best_speedup_first():
    metrics = {"acceptance": 0.5, "lookahead": 2, "draft_ms": 1.0, "target_ms": 2.0, "coverage": 1.0}
    metrics |= {"verify_cost": 1.0, "draft_cost": 0.5, "weight_bytes": 3 << 20}
    front = [
        {"trial": 1, "plan": {}, "metrics": metrics | {"speedup": 1.1}},
        {"trial": 2, "plan": {}, "metrics": metrics | {"speedup": 1.4}, "baseline": "dense"},
    ]
    points = draft_points(front)
    assert [p["trial"] for p in points] == [2, 1]
    assert points[0]["draft_mib"] == 3.0 and points[0]["baseline"] == "dense" and points[1]["baseline"] is None
