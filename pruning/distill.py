"""The heal's distillation loss: KL(teacher || student) over next-token distributions, in row chunks.

Per position, with temperature T and cross-entropy weight w:

    loss = (1 - w) * T^2 * KL(p_T || q_T) + w * CE(q, target)

where p_T = softmax(teacher logits / T) and q_T = softmax(student logits / T). For a trimmed vocabulary the
teacher's head keeps only the kept tokens' rows (`LogitHead.restricted`), so p is the dense distribution
restricted to the kept tokens K and renormalised, p_K; this is the KL(p_K || q) term of the search's proxy
(`search/evaluator.py`). The other term there, -log p(K), does not depend on the student, so it has no place in
a training loss.

Logits never exist for all positions at once: positions go through the heads in row chunks of about
`CHUNK_BYTES` of fp32 logits, each chunk under activation checkpointing, so backward recomputes that chunk's
logits instead of keeping every chunk's alive (a 128k vocabulary fits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# fp32 logits per chunk (student and teacher each); small enough for any vocabulary, large enough for speed.
CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class LogitHead:
    """An LM head as weight and bias, optionally restricted to some vocabulary rows."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> LogitHead:
        return cls(linear.weight, linear.bias)

    @classmethod
    def restricted(cls, linear: torch.nn.Linear, kept_ids: Sequence[int] | None) -> LogitHead:
        """The head over `kept_ids` only (original ids, in the student's order); the whole head if None."""
        if kept_ids is None:
            return cls.of(linear)
        rows = torch.as_tensor(list(kept_ids), device=linear.weight.device)
        bias = linear.bias[rows] if linear.bias is not None else None
        return cls(linear.weight[rows].detach(), bias.detach() if bias is not None else None)

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight.to(hidden.dtype), _cast(self.bias, hidden.dtype)).float()


def _cast(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return bias.to(dtype) if bias is not None else None


def distill_loss(
    student_hidden: torch.Tensor,
    student_head: LogitHead,
    teacher_hidden: torch.Tensor,
    teacher_head: LogitHead,
    targets: torch.Tensor | None,
    *,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean per-position loss (see the module docstring) over final hidden states of shape [..., hidden].

    `targets` holds the next token of each position in the student's vocabulary (needed when `ce_weight` > 0).
    """
    if ce_weight and targets is None:
        raise ValueError("a cross-entropy weight needs the targets")
    if student_head.vocab_size != teacher_head.vocab_size:
        raise ValueError(
            f"student head has {student_head.vocab_size} tokens, teacher head {teacher_head.vocab_size}: "
            "restrict the teacher to the student's kept tokens"
        )
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    flat_targets = (
        targets.reshape(-1) if targets is not None else torch.empty(hs.shape[0], dtype=torch.long, device=hs.device)
    )
    step = chunk_rows or max(1, CHUNK_BYTES // (4 * student_head.vocab_size))
    total = hs.new_zeros((), dtype=torch.float32)
    for start in range(0, hs.shape[0], step):
        rows = slice(start, start + step)
        args = (hs[rows], ht[rows], flat_targets[rows], student_head, teacher_head, temperature, ce_weight)
        total = total + (
            checkpoint(_chunk_loss, *args, use_reentrant=False) if hs.requires_grad else _chunk_loss(*args)
        )
    return total / max(1, hs.shape[0])


def _chunk_loss(
    hs: torch.Tensor,
    ht: torch.Tensor,
    targets: torch.Tensor,  # ignored unless ce_weight > 0
    student_head: LogitHead,
    teacher_head: LogitHead,
    temperature: float,
    ce_weight: float,
) -> torch.Tensor:
    """Summed loss of one row chunk."""
    student_logits = student_head.logits(hs)
    with torch.no_grad():
        log_p = F.log_softmax(teacher_head.logits(ht) / temperature, dim=-1)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum() * temperature**2
    loss = (1.0 - ce_weight) * kl
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(student_logits, targets, reduction="sum")
    return loss
