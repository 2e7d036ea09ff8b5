"""Speculative decoding arithmetic: how often a draft's tokens are accepted, and what that buys end to end.

Pure functions on tensors and floats, shared by the search's draft objective and the runtime checks.

- Acceptance per drafted token (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
  Decoding"): with sampling, a drafted token is accepted with probability `sum_v min(p(v), q(v))`, where p is the
  target's next-token distribution and q the draft's; with greedy decoding, when the draft's argmax equals the
  target's. A draft with a trimmed vocabulary proposes only kept tokens: `q` is zero elsewhere, so the target's
  mass on trimmed tokens is always rejected.
- Expected speedup: `g` drafted tokens per round, acceptance `alpha`, draft step cost `c` and verification cost
  `v` (the target scoring `g + 1` tokens in one pass), both relative to one plain target decoding step. A round
  yields `(1 - alpha^(g+1)) / (1 - alpha)` tokens on average and costs `g*c + v` target steps. With `v = 1`
  this is the paper's `(1 - alpha^(g+1)) / ((1 - alpha) * (g*c + 1))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prunesearch.choices import MAX_LOOKAHEAD

__all__ = ["GREEDY", "MAX_LOOKAHEAD", "acceptance", "best_lookahead", "expected_tokens", "speedup"]

GREEDY = 0.0  # temperature meaning "greedy decoding"


def _scattered(draft_logits: torch.Tensor, kept: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """Draft logits over the target's vocabulary: kept tokens at their original ids, -inf elsewhere."""
    if kept is None:
        return draft_logits
    full = draft_logits.new_full((*draft_logits.shape[:-1], vocab), float("-inf"))
    return full.index_copy_(-1, kept.to(draft_logits.device), draft_logits)


def acceptance(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor,
    kept: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Probability that the draft's token at each position is accepted, shape `target_logits.shape[:-1]`.

    `target_logits` cover the full vocabulary; `draft_logits` cover the draft's, which is the full one when
    `kept` is None, else `kept[i]` is the original id of the draft's token `i`. `temperature` 0 means greedy.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    vocab = target_logits.shape[-1]
    draft = _scattered(draft_logits.float(), kept, vocab)
    if temperature == GREEDY:
        return (draft.argmax(-1) == target_logits.argmax(-1)).float()
    p = F.softmax(target_logits.float() / temperature, dim=-1)
    q = F.softmax(draft / temperature, dim=-1)
    return torch.minimum(p, q).sum(-1)


def expected_tokens(alpha: float, lookahead: int) -> float:
    """Mean tokens produced per round (accepted drafts plus the target's own token): sum_{i=0..g} alpha^i."""
    _check(alpha, lookahead)
    if alpha >= 1.0:
        return float(lookahead + 1)
    return (1.0 - alpha ** (lookahead + 1)) / (1.0 - alpha)


def speedup(alpha: float, lookahead: int, draft_cost: float, verify_cost: float = 1.0) -> float:
    """Expected tokens/s of speculative decoding over plain target decoding.

    `draft_cost`: one draft step / one target step; `verify_cost`: the target scoring `lookahead + 1` tokens in
    one pass / one target step (1 reproduces the paper's formula, which prices verification as a plain step).
    """
    if draft_cost < 0 or verify_cost <= 0:
        raise ValueError("draft_cost must be >= 0 and verify_cost > 0")
    return expected_tokens(alpha, lookahead) / (lookahead * draft_cost + verify_cost)


def best_lookahead(
    alpha: float, draft_cost: float, verify_costs: Sequence[float], lookaheads: Sequence[int] | None = None
) -> tuple[int, float]:
    """The lookahead with the highest expected speedup and that speedup.

    `verify_costs[g - 1]` is the verification cost of lookahead `g`; `lookaheads` defaults to 1..len(verify_costs).
    """
    options = list(lookaheads) if lookaheads is not None else list(range(1, len(verify_costs) + 1))
    scored = [(speedup(alpha, g, draft_cost, verify_costs[g - 1]), -g) for g in options]
    value, neg_g = max(scored)
    return -neg_g, value


def _check(alpha: float, lookahead: int) -> None:
    if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 1 <= lookahead <= 64:
        raise ValueError(f"lookahead must be in 1..64, got {lookahead}")
