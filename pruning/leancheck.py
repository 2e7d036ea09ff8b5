"""Measure a draft in the lean speculative loop (`specdecode.py`) against lean plain decoding of the target.

`measure_lean(target, draft, prompts, lookaheads=(1, 2, 3, 4), ...)`: for each prompt and repeat, lean plain
decoding of the target, lean plain decoding of the draft and lean speculative decoding at every lookahead run
back to back, their order rotating with the repeat; one untimed warm-up of each first. Per lookahead:

- `measured_speedup`: median over runs of speculative / plain target tokens/s (same prompt, same repeat);
- `alpha_from_rounds`: the alpha whose expected tokens per round equals the measured mean
  (`draftcheck.alpha_from_tokens_per_round`), comparable with teacher-forced alpha;
- `draft_cost` c: median lean draft step / median lean target step (seconds per token of the plain runs);
- `predicted_speedup`: `speculative.speedup(alpha_from_rounds, g, c)`, verification priced as one target step
  (the paper's formula);
- `verify_cost` v: median over runs of the target's verification forward (g + 1 tokens) / one plain target step;
  `prefill_share`: both models reading the prompt, per round, in target steps (the plain step carries the
  target's prefill spread over its tokens the same way); `round_overhead`: the rest of a round (acceptance rule,
  cache cropping, the loop) in target steps;
- `predicted_speedup_priced`: `speculative.speedup(alpha_from_rounds, g, c, v)`, verification at its real cost.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .draftcheck import alpha_from_tokens_per_round
from .specdecode import GREEDY, AssistStats, plain_generate_lean, speculative_generate
from .speculative import speedup


@dataclass
class _LookaheadRuns:
    ratios: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    verify_costs: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)
    prefills: list[float] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    new_tokens: int = 0

    def add(self, stats: AssistStats, plain_tps: float) -> None:
        step = 1.0 / plain_tps  # one plain target step, seconds (prefill included, as in the speculative run)
        rest = stats.seconds - stats.draft_seconds - stats.verify_seconds - stats.prefill_seconds
        self.verify_costs.append(stats.verify_seconds / stats.rounds / step)
        self.prefills.append(stats.prefill_seconds / stats.rounds / step)
        self.overheads.append(rest / stats.rounds / step)
        self.ratios.append(stats.tokens_per_second / plain_tps)
        self.tokens_per_second.append(stats.tokens_per_second)
        self.drafted += stats.drafted
        self.accepted += stats.accepted
        self.rounds += stats.rounds
        self.new_tokens += stats.new_tokens


def measure_lean(
    target,
    draft,
    prompts: Sequence[torch.Tensor],
    *,
    lookaheads: Sequence[int] = (1, 2, 3, 4),
    max_new_tokens: int = 32,
    temperature: float = GREEDY,
    repeats: int = 3,
) -> dict[str, Any]:
    """Lean speculative against lean plain decoding: the plain figures and one row per lookahead (medians)."""
    per_lookahead = {g: _LookaheadRuns() for g in lookaheads}
    target_step: list[float] = []
    draft_step: list[float] = []
    _one_prompt(target, draft, prompts[0], 0, 0, 4, temperature, {g: _LookaheadRuns() for g in lookaheads}, [], [])
    for repeat in range(repeats):
        for index, prompt in enumerate(prompts):
            seed = repeat * len(prompts) + index
            _one_prompt(
                target, draft, prompt, seed, repeat, max_new_tokens, temperature, per_lookahead, target_step, draft_step
            )
    draft_cost = statistics.median(draft_step) / statistics.median(target_step)
    return {
        "temperature": temperature,
        "prompts": len(prompts),
        "repeats": repeats,
        "max_new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "plain_tokens_per_second": round(1.0 / statistics.median(target_step), 2),
        "draft_tokens_per_second": round(1.0 / statistics.median(draft_step), 2),
        "draft_cost": round(draft_cost, 4),
        "lookaheads": [_row(g, runs, draft_cost) for g, runs in per_lookahead.items()],
    }


def _one_prompt(
    target, draft, prompt, seed, repeat, max_new_tokens, temperature, per_lookahead, target_step, draft_step
):
    """Plain target, plain draft and speculative decoding at every lookahead, in an order rotating with `repeat`."""
    kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    jobs: dict[Any, Callable[[], tuple[torch.Tensor, AssistStats]]] = {
        "plain": lambda: plain_generate_lean(target, prompt, **kwargs),
        "draft": lambda: plain_generate_lean(draft, prompt, **kwargs),
    }
    for g in per_lookahead:
        jobs[g] = lambda g=g: speculative_generate(target, draft, prompt, lookahead=g, **kwargs)
    names = list(jobs)
    shift = repeat % len(names)
    results = {name: jobs[name]()[1] for name in names[shift:] + names[:shift]}
    plain, drafted = results.pop("plain"), results.pop("draft")
    target_step.append(plain.seconds / plain.new_tokens)
    draft_step.append(drafted.seconds / drafted.new_tokens)
    for g, stats in results.items():
        per_lookahead[g].add(stats, plain.tokens_per_second)


def _row(lookahead: int, runs: _LookaheadRuns, draft_cost: float) -> dict[str, Any]:
    per_round = runs.new_tokens / runs.rounds if runs.rounds else 1.0
    alpha_rounds = alpha_from_tokens_per_round(per_round, lookahead)
    verify_cost = statistics.median(runs.verify_costs)
    return {
        "lookahead": lookahead,
        "acceptance": round(runs.accepted / runs.drafted, 4) if runs.drafted else 0.0,
        "alpha_from_rounds": round(alpha_rounds, 4),
        "tokens_per_round": round(per_round, 3),
        "speculative_tokens_per_second": round(statistics.median(runs.tokens_per_second), 2),
        "measured_speedup": round(statistics.median(runs.ratios), 3),
        "predicted_speedup": round(speedup(alpha_rounds, lookahead, draft_cost), 3),
        "verify_cost": round(verify_cost, 3),
        "prefill_share": round(statistics.median(runs.prefills), 3),
        "round_overhead": round(statistics.median(runs.overheads), 3),
        "predicted_speedup_priced": round(speedup(alpha_rounds, lookahead, draft_cost, verify_cost), 3),
    }
