"""Zero-shot quality proxies of a candidate plan, computed with the same surgery code that exports it.

The dense model's outputs over the calibration blocks are computed once per job: its next-token
probabilities p and their negative entropy sum_v p log p when they fit in 1 GiB, else its final hidden states,
from which each trial re-derives them through the dense LM head (hidden states are far smaller than logits, so
this scales to large vocabularies). A candidate is built by `apply_plan` (the export path, minus the
vocabulary), and a trimmed vocabulary keeps only the kept rows of its LM head: this equals the exported model
on kept-token inputs (tests/test_surgery.py proves it).

- `kl`: mean over positions of KL(p_K || q) - log p(K), where p is the dense next-token distribution, p_K its
  renormalisation to the kept tokens K and q the candidate's. Without vocabulary trimming it is KL(p || q);
  with it, the second term charges the dense probability mass the trim throws away.
- `ppl`: exp of the candidate's mean NLL of the calibration targets that are in the kept vocabulary.

Both come from one log-softmax of the candidate's logits: KL(p || q) = sum p log p - p.log q, whose first
term is cached, and NLL(t) = -log q_t. With a trimmed vocabulary of kept mass m = p(K),
KL(p_K || q) - log m = (sum_K p log p - p_K.log q) / m - 2 log m. With the teacher cached, a trial thus costs
its forward pass, one log-softmax, a row-wise dot product and a gather (no exponentials of the teacher's
distribution); uncached, the teacher's chunk is re-derived alongside. The fp32 difference of the two KL terms
resolves KL to about 1e-6 nats per position, far below any candidate's (dense scores 0 by definition).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prunesearch.pruning.importance import ImportanceScores
from prunesearch.pruning.modules import decoder, embedding, lm_head
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.surgery import apply_plan


@dataclass(frozen=True)
class Quality:
    kl: float
    ppl: float


@dataclass(frozen=True)
class Teacher:
    """The dense next-token distribution over one batch of calibration positions."""

    probs: torch.Tensor  # [batch, positions, vocab]
    neg_entropy: torch.Tensor  # [batch, positions]: sum_v p log p

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> Teacher:
        log_p = F.log_softmax(logits.float(), dim=-1)
        probs = log_p.exp()
        return cls(probs, torch.linalg.vecdot(probs, log_p))


class _Sums:
    """Running fp64 sums on the evaluation device (read back once per candidate, not once per chunk)."""

    def __init__(self, device: torch.device):
        self.kl, self.nll, self.nll_count, self.positions = (
            torch.zeros((), dtype=torch.float64, device=device) for _ in range(4)
        )


# The teacher's probabilities are kept (fp32) when they fit in this many bytes; else re-derived per trial.
TEACHER_CACHE_BYTES = 1 << 30
# Logits are scored in row chunks of about this size, so the log-softmax and the dot product read them from cache.
_CHUNK_BYTES = 16 << 20


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
        hidden = self._teacher_hidden()
        cached = blocks.numel() * model.config.vocab_size * 4 <= teacher_cache_bytes
        self.teacher_cache = self._teacher_cache(hidden) if cached else None
        self.teacher_hidden = None if cached else hidden

    @torch.inference_mode()
    def _teacher_hidden(self) -> list[torch.Tensor]:
        """The dense final hidden states of every position that predicts a next token."""
        stack = decoder(self.model)
        return [
            stack(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
            for batch in self.blocks.split(self.batch_size)
        ]

    @torch.inference_mode()
    def _teacher_cache(self, hidden: list[torch.Tensor]) -> list[Teacher]:
        return [Teacher.from_logits(lm_head(self.model)(h)) for h in hidden]

    def _teacher(self, index: int) -> Callable[[slice], Teacher]:
        """The dense distribution over a row chunk of batch `index` (rows: its positions, flattened)."""
        if self.teacher_cache is not None:
            cached = self.teacher_cache[index]
            probs = cached.probs.reshape(-1, cached.probs.shape[-1])
            neg_entropy = cached.neg_entropy.reshape(-1)
            return lambda rows: Teacher(probs[rows], neg_entropy[rows])
        hidden = self.teacher_hidden[index].reshape(-1, self.teacher_hidden[index].shape[-1])
        dense_head = lm_head(self.model)
        return lambda rows: Teacher.from_logits(dense_head(hidden[rows]))

    @torch.inference_mode()
    def evaluate(self, plan: PrunePlan, kept_token_ids: Sequence[int] | None = None) -> Quality:
        """KL and perplexity of `plan` (vocabulary restricted to `kept_token_ids` when given)."""
        candidate = apply_plan(self.model, replace(plan, vocab=None), self.scores)
        kept = torch.tensor(list(kept_token_ids), device=self.device) if kept_token_ids is not None else None
        head = _LogitHead(lm_head(candidate), kept)
        stack = decoder(candidate)
        sums = _Sums(self.device)
        for index, batch in enumerate(self.blocks.split(self.batch_size)):
            hidden = stack(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
            head.accumulate(sums, hidden, self._teacher(index), batch[:, 1:])
        return _quality(sums)

    @torch.inference_mode()
    def evaluate_model(self, model, token_map: Sequence[int] | None = None) -> Quality:
        """KL and perplexity of a materialised model (an exported or healed checkpoint) on the same blocks and
        by the same definitions as `evaluate`, so its scores compare with the proxy's.

        `token_map` (new id -> dense id) for a trimmed vocabulary: as `evaluate` does for a candidate, the
        model reads every calibration token (the dense embedding row for one the trim dropped, its own for a
        kept one) and its LM head scores the kept tokens only."""
        model = model.to(self.device).eval()
        stack = decoder(model)
        if token_map is None:
            inputs, head = (lambda batch: {"input_ids": batch}), _LogitHead(lm_head(model), None)
        else:
            kept = torch.tensor(list(token_map), device=self.device)
            table = embedding(self.model).weight.detach().clone()
            table[kept] = embedding(model).weight.to(table.dtype)
            head = _widened(lm_head(model), kept, table.shape[0])
            inputs = lambda batch: {"inputs_embeds": F.embedding(batch, table)}  # noqa: E731
        sums = _Sums(self.device)
        for index, batch in enumerate(self.blocks.split(self.batch_size)):
            hidden = stack(**inputs(batch), use_cache=False).last_hidden_state[:, :-1]
            head.accumulate(sums, hidden, self._teacher(index), batch[:, 1:])
        return _quality(sums)


def _quality(sums: _Sums) -> Quality:
    kl, nll, nll_count, positions = (float(x) for x in (sums.kl, sums.nll, sums.nll_count, sums.positions))
    ppl = math.exp(nll / nll_count) if nll_count else math.inf
    # KL >= 0; the cached-entropy form can land a hair below zero in fp32 when the candidate equals the teacher
    return Quality(kl=max(kl / positions, 0.0), ppl=ppl)


def _widened(head: torch.nn.Linear, kept: torch.Tensor, vocab_size: int) -> _LogitHead:
    """A trimmed model's LM head, its rows placed at their dense ids, restricted to those ids."""
    wide = torch.nn.Linear(head.in_features, vocab_size, bias=head.bias is not None, device=kept.device)
    wide.weight.zero_()
    wide.weight[kept] = head.weight.to(wide.weight.dtype)
    if head.bias is not None:
        wide.bias.zero_()
        wide.bias[kept] = head.bias.to(wide.bias.dtype)
    return _LogitHead(wide, kept)


class _LogitHead:
    """A candidate's LM head, restricted to the kept tokens, and the proxy sums over its logits."""

    def __init__(self, linear: torch.nn.Linear, kept: torch.Tensor | None):
        self.kept = kept
        weight, bias = linear.weight, linear.bias
        if kept is not None:
            weight, bias = weight[kept], (bias[kept] if bias is not None else None)
            self.new_id = torch.full((linear.out_features,), -1, dtype=torch.long, device=weight.device)
            self.new_id[kept] = torch.arange(len(kept), device=weight.device)
        self.weight, self.bias = weight, bias

    def accumulate(
        self, sums: _Sums, hidden: torch.Tensor, teacher: Callable[[slice], Teacher], targets: torch.Tensor
    ) -> None:
        """Add one batch; its positions go through in row chunks whose logits stay in cache (about 16 MiB), and
        an uncached teacher is derived chunk by chunk too (never a whole batch of full-vocabulary logits)."""
        hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        if self.kept is not None:
            targets = self.new_id[targets]
        step = max(1, _CHUNK_BYTES // (4 * self.weight.shape[0]))
        for start in range(0, len(targets), step):
            rows = slice(start, start + step)
            self._accumulate_chunk(sums, hidden[rows], teacher(rows), targets[rows])

    def _accumulate_chunk(self, sums: _Sums, hidden: torch.Tensor, teacher: Teacher, targets: torch.Tensor) -> None:
        log_q = F.log_softmax(F.linear(hidden, self.weight, self.bias).float(), dim=-1)
        sums.kl += self._kl(log_q, teacher).double().sum()
        sums.positions += targets.numel()
        mask = targets >= 0
        target_log_q = log_q.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums.nll -= target_log_q[mask].double().sum()
        sums.nll_count += mask.sum()

    def _kl(self, log_q: torch.Tensor, teacher: Teacher) -> torch.Tensor:
        """Per position KL(p_K || q) - log p(K); KL(p || q) untrimmed."""
        if self.kept is None:
            return teacher.neg_entropy - torch.linalg.vecdot(teacher.probs, log_q)
        p_kept = teacher.probs[..., self.kept]
        mass = p_kept.sum(-1).clamp_min(torch.finfo(p_kept.dtype).tiny)
        p_log_p = torch.xlogy(p_kept, p_kept).sum(-1)
        return (p_log_p - torch.linalg.vecdot(p_kept, log_q)) / mass - 2 * mass.log()
