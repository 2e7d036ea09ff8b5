"""Filling a budget: give a plan back the capacity its latency budget still pays for. Pure logic.

A sampled plan under a latency budget often carries cuts that buy almost no latency: on a launch-bound device
an MLP a few channels narrower runs the same kernels in nearly the same time. Such cuts still cost quality, one
shot and after healing, where capacity is what distillation has to work with (docs/benchmarks.md, "Healed
searched plans against healed ShortGPT"). `fill` takes a plan's parameters back towards the dense model's, one
move at a time, the move with the most parameters regained per millisecond first, for as long as the plan stays
priced at or under the limit and within the job's other constraints. A move sets one parameter to its dense
value, or (integers) halfway there.

The search spends its last trials on the filled plans of the best plan under each budget (`search/engine.py`):
the proxy then says whether the filled plan is better, and the front keeps whichever is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# What `fill` prices a candidate with: (latency in ms, parameter count), or None when it breaks a constraint
# other than the latency limit (memory, depth).
Pricer = Callable[[Mapping[str, Any]], "tuple[float, float] | None"]
# User attribute of a filled plan's trial (and metric): the number of the trial whose plan it fills.
FILLED_FROM_ATTR = "filled_from"
# Pricing calls one fill may make (each move of each step is priced): bounds its cost on deep models.
MAX_PRICINGS = 20_000


@dataclass(frozen=True)
class Filled:
    """A filled plan's parameters, its price, and how many moves it took from the plan it started at."""

    params: dict[str, Any]
    latency_ms: float
    size: float
    moves: int


def restoring_moves(params: Mapping[str, Any], dense: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Every single-parameter move towards the dense values: to the dense value, and for an integer halfway."""
    moves = []
    for name, value in params.items():
        target = dense.get(name, value)
        if value == target:
            continue
        moves.append((name, target))
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(target, int):
            halfway = (value + target) // 2
            if halfway not in (value, target):
                moves.append((name, halfway))
    return moves


def fill(params: Mapping[str, Any], dense: Mapping[str, Any], price: Pricer, limit_ms: float) -> Filled | None:
    """`params` with every affordable move made, greedily by parameters regained per millisecond (moves that
    cost no latency first); None when `params` itself is over `limit_ms` or breaks a constraint."""
    current = dict(params)
    priced = price(current)
    if priced is None or priced[0] > limit_ms:
        return None
    latency, size = priced
    moves, pricings = 0, 1
    while pricings < MAX_PRICINGS:
        best, best_key = None, None
        for name, value in restoring_moves(current, dense):
            if pricings >= MAX_PRICINGS:
                break
            candidate = current | {name: value}
            priced, pricings = price(candidate), pricings + 1
            if priced is None or priced[0] > limit_ms or priced[1] <= size:
                continue
            key = _worth(priced[1] - size, priced[0] - latency)
            if best_key is None or key > best_key:
                best, best_key = (candidate, priced), key
        if best is None:
            break
        current, (latency, size), moves = best[0], best[1], moves + 1
    return Filled(params=current, latency_ms=latency, size=size, moves=moves)


def _worth(gained: float, added_ms: float) -> tuple[bool, float]:
    """How good a move is: free moves (no added latency) before the rest, then parameters per millisecond (or
    parameters, among free moves)."""
    if added_ms <= 0:
        return True, gained
    return False, gained / added_ms
