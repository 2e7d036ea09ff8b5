"""Multi-fidelity scoring: stop a candidate after a fraction of the calibration blocks when it cannot enter the
front. Pure logic: no torch, no storage.

Optuna's pruners do not support multi-objective studies, so the rule is our own. A candidate is scored on the
first `fraction` of the blocks (the evaluator puts the blocks in a fixed random order, so these sample the whole
calibration text). It is finished on the rest only if no member of the current front dominates it at its
optimistic quality (its estimate minus `margin` standard errors) and its exact latency (and extra objectives);
otherwise it stops early.

The estimate is paired with each front member (`paired`): every full-fidelity trial keeps its per-block quality
values, and the candidate's difference from the member on the blocks both have scored is what is estimated. Blocks
differ far more from each other in difficulty than two plans differ on one block, so the paired difference has a
much smaller standard error than the candidate's own mean (a control variate), and many more candidates that
cannot enter the front are recognised after the first stage. A member without per-block values (a trial stored
before they were kept) is compared with the unpaired estimate (`estimate`): the candidate's mean and the standard
error of a mean of blocks drawn without replacement.

A stopped candidate is stored as a complete trial whose `fidelity` constraint is violated, so it never reaches
the front or the hypervolume, yet counts towards `n_trials` and still informs the sampler with its estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A low-fidelity estimate of a candidate's quality objective on its own scale (KL, or NLL for ppl)."""

    mean: float
    stderr: float
    blocks: int

    def optimistic(self, margin: float, *, higher_is_better: bool = False) -> float:
        """`margin` standard errors towards the better end (no margin: the mean, even when the error is unknown)."""
        spread = margin * self.stderr if margin else 0.0
        return self.mean + spread if higher_is_better else self.mean - spread


def estimate(block_values: Sequence[float], total_blocks: int) -> Estimate:
    """Mean and standard error of the mean of `block_values`, a random sample of `total_blocks` blocks (with the
    finite-population correction: it is 0 once every block is scored)."""
    n = len(block_values)
    if n == 0:
        raise ValueError("no block scored")
    mean = sum(block_values) / n
    if n < 2:
        return Estimate(mean, math.inf, n)
    variance = sum((v - mean) ** 2 for v in block_values) / (n - 1)
    correction = max(0.0, 1 - n / total_blocks) if total_blocks else 0.0
    return Estimate(mean, math.sqrt(variance / n * correction), n)


@dataclass(frozen=True)
class FrontMember:
    """A front trial's objective values and, when kept, its per-block quality values at full fidelity."""

    values: tuple[float, ...]
    blocks: tuple[float, ...] | None = None

    @classmethod
    def of(cls, member: FrontMember | Sequence[float]) -> FrontMember:
        return member if isinstance(member, FrontMember) else cls(tuple(member))

    def block_mean(self) -> float:
        """Its quality on the per-block scale (mean of block values), comparable with a paired estimate."""
        assert self.blocks is not None
        return sum(self.blocks) / len(self.blocks)


def paired(candidate_blocks: Sequence[float], member_blocks: Sequence[float], total_blocks: int) -> Estimate:
    """The candidate's full-fidelity block mean estimated from its first blocks and a member's full ones: the
    member's block mean plus the mean candidate - member difference on the candidate's blocks; the standard error
    is that of the differences (the member's mean is exact)."""
    n = len(candidate_blocks)
    if len(member_blocks) != total_blocks or n > total_blocks:
        raise ValueError(f"a member scored on {len(member_blocks)} blocks cannot pair with {total_blocks}")
    differences = [c - m for c, m in zip(candidate_blocks, member_blocks[:n], strict=True)]
    diff = estimate(differences, total_blocks)
    return Estimate(sum(member_blocks) / total_blocks + diff.mean, diff.stderr, n)


def dominated(point: Sequence[float], front: Sequence[Sequence[float]]) -> bool:
    """Whether a front member is no worse than `point` in every objective and better in one (all minimised)."""
    return any(_dominates(member, point) for member in front)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    pairs = list(zip(a, b, strict=True))
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def could_enter_front(optimistic_values: Sequence[float], front: Sequence[Sequence[float]]) -> bool:
    """True unless the current front dominates the candidate even at its optimistic quality."""
    return not dominated(optimistic_values, front)


# (an estimate of the candidate's block mean, a latency) -> the first objective value at its optimistic end
Optimistic = Callable[[Estimate, float], float]


@dataclass(frozen=True)
class Verdict:
    """Whether a candidate may enter the front, and the best estimate of its block mean: paired with the member
    that stopped it, else the paired estimate with the smallest error, else its own mean."""

    enter: bool
    estimate: Estimate


def judge(
    candidate_blocks: Sequence[float],
    total_blocks: int,
    rest: Sequence[float],
    front: Sequence[FrontMember | Sequence[float]],
    optimistic: Optimistic,
    tolerance: float = 0.0,
) -> Verdict:
    """Stop the candidate when a front member dominates it within `tolerance` at its optimistic quality,
    estimated paired with that member where the member kept its blocks (compared on the block-mean scale),
    unpaired otherwise. `rest`: the candidate's exact other objective values, latency first.

    `tolerance` (epsilon-dominance, Laumanns et al. 2002): a member stops the candidate when none of its
    objective values exceeds the candidate's by more than that share, so a candidate that could improve on it by
    less than `tolerance` (a new latency at most that much faster, a quality at most that much better) is not
    finished. 0: plain dominance."""
    own = estimate(candidate_blocks, total_blocks)
    best = own
    for member in map(FrontMember.of, front):
        if member.blocks is not None and len(member.blocks) == total_blocks:
            guess = paired(candidate_blocks, member.blocks, total_blocks)
            exact = Estimate(member.block_mean(), 0.0, total_blocks)
            reference = [optimistic(exact, member.values[1]), *member.values[1:]]
            best = guess if guess.stderr < best.stderr else best
        else:
            guess, reference = own, list(member.values)
        if within_tolerance(reference, [optimistic(guess, rest[0]), *rest], tolerance):
            return Verdict(False, guess)
    return Verdict(True, best)


def within_tolerance(member: Sequence[float], point: Sequence[float], tolerance: float) -> bool:
    """Whether `member` dominates `point`, or (tolerance > 0) is nowhere worse than it by more than that share."""
    if not tolerance:
        return _dominates(member, point)
    return all(m <= p + tolerance * abs(p) for m, p in zip(member, point, strict=True))


def low_fidelity_batches(n_batches: int, fraction: float) -> int:
    """How many batches the first stage scores: at least one, fewer than all (0 when staging cannot save)."""
    if fraction >= 1 or n_batches < 2:
        return 0
    return min(n_batches - 1, max(1, round(n_batches * fraction)))
