"""The draft objective: a candidate is a speculative-decoding draft of the dense model (the target), scored by
its expected acceptance and the end-to-end speedup of target + draft (docs/drafts.md, "Searching for a draft").

Costs come from the job's latency model (hardware, workload, engine), all relative to one plain decode step of
the target: `c` = the draft's decode step / the target's, `v(g)` = the target scoring `g + 1` tokens in one
forward (`profilers.verify`: priced by the roofline, or timed by a measured latency model). The lookahead `g` is
fixed, or (`"search"`) the best of 1..8 for each candidate, found analytically: given alpha, c and v(g), the
expected speedup of every g is known in closed form.

Objective values (all minimised, so the engine's front, hypervolume and early stopping apply unchanged):
- goal `speedup`: `[1 / speedup, draft_ms]`: the time per generated token relative to plain decoding, and the
  draft's step cost (the front's best point is the fastest draft pair; the rest trade speedup for a cheaper
  draft);
- goal `pareto`: `[1 - alpha, draft_ms]`: rejection rate against draft step cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunesearch.profilers.latency import LatencyModel, Workload
from prunesearch.profilers.verify import verification_costs
from prunesearch.pruning.speculative import MAX_LOOKAHEAD, best_lookahead, speedup

from .spec import Speculative

OBJECTIVE_NAMES = {"speedup": "inverse_speedup", "pareto": "rejection"}
MIB = 1 << 20


@dataclass(frozen=True)
class DraftScore:
    """One candidate's draft figures."""

    acceptance: float
    lookahead: int
    speedup: float
    draft_cost: float  # c: draft step / target step
    verify_cost: float  # v(g) at the chosen lookahead

    def metrics(self) -> dict[str, float | int]:
        return {
            "acceptance": self.acceptance,
            "lookahead": self.lookahead,
            "speedup": self.speedup,
            "draft_cost": self.draft_cost,
            "verify_cost": self.verify_cost,
        }


@dataclass(frozen=True)
class DraftPricing:
    """What a job knows about its target: its decode step and verification costs, and the lookaheads allowed."""

    speculative: Speculative
    target_ms: float
    verify_costs: tuple[float, ...]  # v(g) for g = 1..MAX_LOOKAHEAD
    verify_priced: bool  # False: the latency model cannot price verification, and v(g) = 1 (the paper's pricing)

    @property
    def lookaheads(self) -> tuple[int, ...]:
        g = self.speculative.lookahead
        return tuple(range(1, MAX_LOOKAHEAD + 1)) if g == "search" else (g,)

    def score(self, acceptance: float, draft_ms: float) -> DraftScore:
        """The expected speedup of this draft at its best allowed lookahead."""
        alpha = min(max(acceptance, 0.0), 1.0)
        c = draft_ms / self.target_ms
        g, value = best_lookahead(alpha, c, self.verify_costs, self.lookaheads)
        return DraftScore(alpha, g, value, c, self.verify_costs[g - 1])

    def objective(self, acceptance: float, draft_ms: float) -> float:
        """The first (minimised) objective value of a draft of this acceptance and step cost."""
        if self.speculative.goal == "pareto":
            return 1.0 - min(max(acceptance, 0.0), 1.0)
        return 1.0 / self.score(acceptance, draft_ms).speedup

    def predicted_speedup(self, acceptance: float, draft_ms: float, lookahead: int) -> float:
        return speedup(acceptance, lookahead, draft_ms / self.target_ms, self.verify_costs[lookahead - 1])


def draft_pricing(model: LatencyModel, config: Any, workload: Workload, speculative: Speculative) -> DraftPricing:
    """Price the target once per job: its decode step, and v(g) for every lookahead."""
    target_ms = model.estimate(config, None, workload).decode_ms_per_token
    costs = verification_costs(model, config, workload, MAX_LOOKAHEAD)
    priced = costs is not None
    return DraftPricing(speculative, target_ms, costs if priced else (1.0,) * MAX_LOOKAHEAD, priced)


def draft_memory_violation(speculative: Speculative, weight_bytes: int) -> float:
    """> 0 when the draft's weights exceed `max_draft_mib` (-1: no limit)."""
    if speculative.max_draft_mib is None:
        return -1.0
    return weight_bytes / MIB - speculative.max_draft_mib


def objective_names(speculative: Speculative) -> list[str]:
    return [OBJECTIVE_NAMES[speculative.goal], "draft_ms"]


POINT_FIELDS = ("acceptance", "lookahead", "speedup", "draft_ms", "target_ms", "coverage", "verify_cost", "draft_cost")


def draft_points(front: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pareto front records (`SearchProgress.front`, `pareto_front`) as draft points: {trial, baseline, plan,
    acceptance, lookahead, speedup, draft_ms, target_ms, coverage, verify_cost, draft_cost, draft_mib}, best
    predicted speedup first."""
    points = []
    for record in front:
        metrics = record["metrics"]
        point = {"trial": record["trial"], "baseline": record.get("baseline"), "plan": record["plan"]}
        point |= {name: metrics[name] for name in POINT_FIELDS}
        point["draft_mib"] = metrics["weight_bytes"] / MIB
        points.append(point)
    return sorted(points, key=lambda p: -p["speedup"])
