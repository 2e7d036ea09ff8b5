"""The heal's distillation loss: KL(teacher || student) over next-token distributions, in row chunks.

Per position, with temperature T and cross-entropy weight w:

    loss = (1 - w) * T^2 * KL(p_T || q_T) + w * CE(q, target)

where p_T = softmax(teacher logits / T) and q_T = softmax(student logits / T). For a trimmed vocabulary the
teacher's head keeps only the kept tokens' rows (`LogitHead.restricted`), so p is the dense distribution
restricted to the kept tokens K and renormalised, p_K; this is the KL(p_K || q) term of the search's proxy
(`search/evaluator.py`). The other term there, -log p(K), does not depend on the student, so it has no place in
a training loss.

Logits never exist for all positions at once: positions go through the heads in row chunks of about
`CHUNK_BYTES` of fp32 logits (a 128k vocabulary fits). When the student needs gradients, each chunk's gradient
is computed in the forward pass, the way fused linear-cross-entropy kernels do it (Liger-Kernel's
FusedLinearCrossEntropy): the gradient of the loss with respect to the student's logits has a closed form,

    dloss/dz = (1 - w) * T * (q_T - p_T) + w * (softmax(z) - onehot(target)),

so the chunk's logits are used at once for the hidden-state and head gradients and then freed. Backward only
scales the stored gradients: no chunk is recomputed, and the teacher's logits are computed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    config = _ChunkConfig(teacher_head, temperature, ce_weight, step)
    weight, bias = student_head.weight, student_head.bias
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hs, weight, bias)):
        return _FusedDistill.apply(hs, weight, bias, ht, flat_targets, config)
    return _summed_loss(hs, student_head, ht, flat_targets, config) / max(1, hs.shape[0])


@dataclass(frozen=True)
class _ChunkConfig:
    """What every chunk shares besides the student's tensors."""

    teacher_head: LogitHead
    temperature: float
    ce_weight: float
    rows: int


def _summed_loss(
    hs: torch.Tensor, head: LogitHead, ht: torch.Tensor, targets: torch.Tensor, config: _ChunkConfig
) -> torch.Tensor:
    """The loss summed over positions, without gradients."""
    total = hs.new_zeros((), dtype=torch.float32)
    for start in range(0, hs.shape[0], config.rows):
        rows = slice(start, start + config.rows)
        total = total + _chunk_loss(
            hs[rows], ht[rows], targets[rows], head, config.teacher_head, config.temperature, config.ce_weight
        )
    return total


class _FusedDistill(torch.autograd.Function):
    """Mean loss over positions; each chunk's gradients are computed in forward from the closed-form logit
    gradient (module docstring) and only scaled in backward."""

    @staticmethod
    def forward(ctx, hs, weight, bias, ht, targets, config: _ChunkConfig):
        count = max(1, hs.shape[0])
        grad_hs = torch.zeros_like(hs) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        head = LogitHead(weight, bias)
        total = hs.new_zeros((), dtype=torch.float32)
        for start in range(0, hs.shape[0], config.rows):
            rows = slice(start, start + config.rows)
            loss, grad_logits = _chunk_loss_and_grad(hs[rows], ht[rows], targets[rows], head, config)
            total += loss
            grad_logits = grad_logits.to(hs.dtype)
            if grad_hs is not None:
                grad_hs[rows] = grad_logits @ weight.to(hs.dtype)
            if grad_w is not None:
                grad_w += (grad_logits.T @ hs[rows]).float()
            if grad_b is not None:
                grad_b += grad_logits.sum(0).float()
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_hs, grad_w, grad_b)))
        ctx.present = (grad_hs is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (hs.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.count = count
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        scale = grad_output / ctx.count
        grads = [
            (g * scale).to(dtype) if present else None
            for g, present, dtype in zip(ctx.saved_tensors, ctx.present, ctx.dtypes, strict=True)
        ]
        return grads[0], grads[1], grads[2], None, None, None


def _chunk_loss_and_grad(
    hs: torch.Tensor, ht: torch.Tensor, targets: torch.Tensor, head: LogitHead, config: _ChunkConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one row chunk and its gradient with respect to the student's (fp32) logits."""
    temperature, ce_weight = config.temperature, config.ce_weight
    logits = head.logits(hs)
    log_p = F.log_softmax(config.teacher_head.logits(ht) / temperature, dim=-1)
    log_q = F.log_softmax(logits / temperature, dim=-1)
    p = log_p.exp()
    loss = (1.0 - ce_weight) * (p * (log_p - log_q)).sum() * temperature**2
    grad = log_q.exp().sub_(p).mul_((1.0 - ce_weight) * temperature)
    if ce_weight:
        log_probs = F.log_softmax(logits, dim=-1)
        loss = loss + ce_weight * F.nll_loss(log_probs, targets, reduction="sum")
        probs = log_probs.exp_()
        probs[torch.arange(len(targets), device=probs.device), targets] -= 1.0
        grad.add_(probs, alpha=ce_weight)
    return loss, grad


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
