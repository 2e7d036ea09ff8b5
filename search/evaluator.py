"""Zero-shot quality proxies of a candidate plan, computed with the same surgery code that exports it.

The dense model's outputs over the calibration blocks are computed once per job: its log-probabilities when
they fit in 1 GiB, else its final hidden states, from which each trial re-derives them through the dense LM
head (hidden states are far smaller than logits, so this scales to large vocabularies). A candidate is built
by `apply_plan` (the export path, minus the vocabulary), and a trimmed vocabulary restricts its logits to the
kept tokens: this equals the exported model on kept-token inputs (tests/test_surgery.py proves it).

- `kl`: mean over positions of KL(p_K || q) - log p(K), where p is the dense next-token distribution, p_K its
  renormalisation to the kept tokens K and q the candidate's. Without vocabulary trimming it is KL(p || q);
  with it, the second term charges the dense probability mass the trim throws away.
- `ppl`: exp of the candidate's mean NLL of the calibration targets that are in the kept vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prunesearch.pruning.importance import ImportanceScores
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.surgery import apply_plan


@dataclass(frozen=True)
class Quality:
    kl: float
    ppl: float


# Teacher log-probabilities are kept (fp32) when they fit in this many bytes; else re-derived per trial.
TEACHER_CACHE_BYTES = 1 << 30


class CandidateEvaluator:
    """Scores plans against the dense model on fixed calibration blocks."""

    def __init__(
        self,
        model,
        blocks: torch.Tensor,
        scores: ImportanceScores,
        *,
        batch_size: int = 8,
        teacher_cache_bytes: int = TEACHER_CACHE_BYTES,
    ):
        self.model = model
        self.scores = scores
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.blocks = blocks.to(self.device)
        self.teacher_hidden = self._teacher_hidden()
        cache_bytes = blocks.numel() * model.config.vocab_size * 4
        self.teacher_log_probs = self._teacher_log_probs() if cache_bytes <= teacher_cache_bytes else None

    @torch.inference_mode()
    def _teacher_hidden(self) -> list[torch.Tensor]:
        decoder = self.model.get_decoder()
        return [
            decoder(input_ids=batch, use_cache=False).last_hidden_state for batch in self.blocks.split(self.batch_size)
        ]

    @torch.inference_mode()
    def _teacher_log_probs(self) -> list[torch.Tensor]:
        return [F.log_softmax(self.model.lm_head(h)[:, :-1].float(), dim=-1) for h in self.teacher_hidden]

    def _teacher(self, index: int) -> torch.Tensor:
        if self.teacher_log_probs is not None:
            return self.teacher_log_probs[index]
        return F.log_softmax(self.model.lm_head(self.teacher_hidden[index])[:, :-1].float(), dim=-1)

    @torch.inference_mode()
    def evaluate(self, plan: PrunePlan, kept_token_ids: Sequence[int] | None = None) -> Quality:
        """KL and perplexity of `plan` (vocabulary restricted to `kept_token_ids` when given)."""
        candidate = apply_plan(self.model, replace(plan, vocab=None), self.scores)
        kept = torch.tensor(list(kept_token_ids), device=self.device) if kept_token_ids is not None else None
        kl_sum, nll_sum, nll_count, positions = 0.0, 0.0, 0, 0
        for index, batch in enumerate(self.blocks.split(self.batch_size)):
            teacher = self._teacher(index)
            student = candidate(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            kl_sum += float(_truncated_kl(teacher, student, kept).sum())
            nll, count = _kept_target_nll(student, targets, kept)
            nll_sum, nll_count = nll_sum + nll, nll_count + count
            positions += targets.numel()
        ppl = math.exp(nll_sum / nll_count) if nll_count else math.inf
        return Quality(kl=kl_sum / positions, ppl=ppl)


def _truncated_kl(log_p: torch.Tensor, student: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """Per position KL(p_K || q) - log p(K) from the teacher's log-probabilities; KL(p || q) untrimmed."""
    if kept is None:
        log_q = F.log_softmax(student, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    log_p_kept = log_p[..., kept]
    log_mass = torch.logsumexp(log_p_kept, dim=-1, keepdim=True)
    log_p_k = log_p_kept - log_mass
    log_q = F.log_softmax(student[..., kept], dim=-1)
    return (log_p_k.exp() * (log_p_k - log_q)).sum(-1) - log_mass.squeeze(-1)


def _kept_target_nll(student: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor | None) -> tuple[float, int]:
    if kept is None:
        nll = F.cross_entropy(student.reshape(-1, student.shape[-1]), targets.reshape(-1), reduction="sum")
        return float(nll), targets.numel()
    new_id = torch.full((student.shape[-1],), -1, dtype=torch.long, device=student.device)
    new_id[kept] = torch.arange(len(kept), device=student.device)
    mapped = new_id[targets]
    mask = mapped >= 0
    logits = student[..., kept][mask]
    nll = F.cross_entropy(logits, mapped[mask], reduction="sum")
    return float(nll), int(mask.sum())
