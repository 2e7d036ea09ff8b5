"""Zero-shot quality proxies of a candidate plan, computed with the same surgery code that exports it.

The dense model's outputs over the calibration blocks are computed once per job: the `Moments` of its next-token
distribution p at every position (sum_v p log p and the expected output embedding sum_v p(v) W_v), which is all
a candidate scored with the dense LM head over every token needs (see `Moments`); and, for the other cases
(a trimmed vocabulary, a sampling draft, a materialised checkpoint with its own head), p itself when it fits in
1 GiB, else its final hidden states, from which each trial re-derives p through the dense LM head (hidden states
are far smaller than logits, so this scales to large vocabularies). A candidate is built by `apply_plan` (the
export path, minus the vocabulary), and a trimmed vocabulary keeps only the kept rows of its LM head: this
equals the exported model on kept-token inputs (tests/test_surgery.py proves it).

- `kl`: mean over positions of KL(p_K || q) - log p(K), where p is the dense next-token distribution, p_K its
  renormalisation to the kept tokens K and q the candidate's. Without vocabulary trimming it is KL(p || q);
  with it, the second term charges the dense probability mass the trim throws away.
- `ppl`: exp of the candidate's mean NLL of the calibration targets that are in the kept vocabulary.

Both come from one log-softmax of the candidate's logits: KL(p || q) = sum p log p - p.log q, whose first
term is cached, and NLL(t) = -log q_t. With a trimmed vocabulary of kept mass m = p(K),
KL(p_K || q) - log m = (sum_K p log p - p_K.log q) / m - 2 log m. With the teacher cached, a trial thus costs
its forward pass, one log-softmax, a row-wise dot product and a gather (no exponentials of the teacher's
distribution); uncached, the teacher's chunk is re-derived alongside. Without a trim (and without a sampling
temperature) it is cheaper still: p.log q = e.h - lse(z) from the cached `Moments`, so a trial costs its forward
pass, one log-sum-exp, a dot product of hidden size and a gather, and p is never read nor re-derived. The fp32
difference of the two KL terms resolves KL to about 1e-6 nats per position, far below any candidate's (dense
scores 0 by definition).

Drafts (`temperature` set: a speculative objective, docs/drafts.md): the same pass also sums, per block, the
probability that the dense model accepts the candidate's token at each position (`pruning/speculative.acceptance`
on the kept tokens; trimmed tokens are never proposed, so their dense mass is rejected): greedy compares the
candidate's argmax with the dense argmax (cached beside the probabilities), sampling sums min(p_T, q_T) with the
dense distribution at temperature T cached too (the same tensor at T = 1). Without a temperature nothing of this
is computed. A draft's trimmed vocabulary comes as a `VocabChoice` per fold of the calibration blocks
(`search/vocabfit.py`: each fold scored with tokens chosen without its region of the text), with the ids the draft
reads in place of trimmed tokens (`pruning.vocab.draft_reads`, the exported draft's own input mapping): the
candidate reads those, the dense model and the targets stay the text's. A batch holds blocks of one fold.

Two savings per trial (docs/search.md, "Search efficiency"):
- Prefix reuse: the dense hidden states at a few layer boundaries are cached once per job (within
  `prefix_cache_bytes`); a candidate whose first `first_change` layers equal the dense ones starts its forward
  at the deepest cached boundary at or before that layer. Layers before it compute exactly what the dense
  model computes, so the scores equal a full forward's to numerical tolerance (tests/search/test_efficiency.py).
  A trimmed vocabulary read as the dense ids changes neither (only the LM head is restricted); one read as a
  draft reads it (`VocabChoice.reads`) changes the inputs, so such a candidate runs its forward from the
  embedding.
- Scoring in stages: `start` returns a `Scoring` that runs any number of batches, keeps per-block sums, and can
  be finished later, so a candidate scored on a fraction of the blocks is finished without recomputation. The
  blocks are put in a fixed random order once, so any prefix of batches samples the whole calibration text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.importance import ImportanceScores
from prunesearch.pruning.modules import decoder, decoder_layers, embedding, lm_head
from prunesearch.pruning.plan import ModelShape, PrunePlan
from prunesearch.pruning.refit import MapStatistics
from prunesearch.pruning.speculative import GREEDY
from prunesearch.pruning.surgery import apply_plan


@dataclass(frozen=True)
class Quality:
    kl: float
    ppl: float
    acceptance: float | None = None  # drafts only: mean acceptance of the candidate's tokens by the dense model


@dataclass(frozen=True)
class VocabChoice:
    """The trimmed vocabulary one fold of the calibration blocks is scored with (`search/vocabfit.py`)."""

    kept: Sequence[int]  # original ids the candidate keeps, ascending
    # drafts: per original id, the original id the draft reads in its place (`pruning.vocab.draft_reads`);
    # None: every token is read as itself (the dense embedding of a trimmed one)
    reads: Sequence[int] | None = None


# What `start` takes for a trimmed vocabulary: one kept set for every block, or a choice per fold.
Vocabulary = Sequence[int] | Mapping[int, VocabChoice] | None


@dataclass(frozen=True)
class Teacher:
    """The dense next-token distribution over one batch of calibration positions."""

    probs: torch.Tensor  # [batch, positions, vocab]
    neg_entropy: torch.Tensor  # [batch, positions]: sum_v p log p
    # drafts only (see `acceptance_of`): the dense argmax (greedy), or the distribution at the sampling temperature
    top: torch.Tensor | None = None
    tempered: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, temperature: float | None = None) -> Teacher:
        log_p = F.log_softmax(logits.float(), dim=-1)
        probs = log_p.exp()
        top = tempered = None
        if temperature == GREEDY:
            top = logits.argmax(-1)
        elif temperature == 1.0:
            tempered = probs
        elif temperature is not None:
            tempered = F.softmax(logits.float() / temperature, dim=-1)
        return cls(probs, torch.linalg.vecdot(probs, log_p), top, tempered)

    def rows(self, rows: slice) -> Teacher:
        """The teacher of a row chunk (its tensors flattened to [positions, ...])."""

        def flat(x: torch.Tensor | None, trailing: int) -> torch.Tensor | None:
            return None if x is None else x.reshape(-1, *x.shape[x.dim() - trailing :])[rows]

        return Teacher(flat(self.probs, 1), flat(self.neg_entropy, 0), flat(self.top, 0), flat(self.tempered, 1))


@dataclass(frozen=True)
class Moments:
    """What the proxy needs of the dense distribution p at each position when the candidate scores with the
    dense LM head (weight W, bias b): no vocabulary trim, no sampling temperature. Since log q(v) = z_v - lse(z)
    and z = W h + b, sum_v p(v) log q(v) = e.h + p.b - lse(z) with e = sum_v p(v) W_v, so KL(p || q) needs the
    candidate's log-normaliser and a dot product of hidden size, never p itself."""

    neg_entropy: torch.Tensor  # [rows]: sum_v p log p
    expected: torch.Tensor  # [rows, hidden]: sum_v p(v) W_v
    expected_bias: torch.Tensor | None  # [rows]: sum_v p(v) b_v (None: the head has no bias)
    top: torch.Tensor | None  # [rows]: the dense argmax (greedy drafts only)

    @classmethod
    def of(cls, head: torch.nn.Linear, hidden: torch.Tensor, greedy: bool) -> Moments:
        """Moments of the dense distribution over `hidden` ([rows, hidden]), computed in row chunks."""
        weight = head.weight.float()
        bias = head.bias.float() if head.bias is not None else None
        parts = []
        for rows in hidden.split(_chunk_rows(weight.shape[0])):
            logits = F.linear(rows, head.weight, head.bias).float()
            log_p = F.log_softmax(logits, dim=-1)
            p = log_p.exp()
            parts.append(
                (
                    torch.linalg.vecdot(p, log_p),
                    p @ weight,
                    p @ bias if bias is not None else None,
                    logits.argmax(-1) if greedy else None,
                )
            )
        neg_entropy, expected, expected_bias, top = (
            None if part[0] is None else torch.cat(part) for part in zip(*parts, strict=True)
        )
        return cls(neg_entropy, expected, expected_bias, top)

    def rows(self, rows: slice) -> Moments:
        fields = (self.neg_entropy, self.expected, self.expected_bias, self.top)
        return Moments(*(None if x is None else x[rows] for x in fields))


@dataclass(frozen=True)
class _BatchTeacher:
    """The dense model's side of one batch, by row chunk: its `moments` (always cached), or the full `teacher`
    (cached when it fits, else re-derived from the dense hidden states)."""

    moments: Callable[[slice], Moments]
    teacher: Callable[[slice], Teacher]


class _Sums:
    """Running fp64 sums per calibration block on the evaluation device (read back once per candidate, not once
    per chunk): KL, target NLL, scored targets, positions."""

    def __init__(self, device: torch.device, rows: int = 4):
        self.device, self.rows = device, rows
        self.batches: list[torch.Tensor] = []  # [rows, blocks of the batch] each

    def new_batch(self, blocks: int) -> torch.Tensor:
        self.batches.append(torch.zeros(self.rows, blocks, dtype=torch.float64, device=self.device))
        return self.batches[-1]

    def per_block(self) -> torch.Tensor:
        """[rows, blocks scored so far]: KL, NLL, NLL count, positions per block (and, for drafts, the sum of
        acceptance probabilities)."""
        return torch.cat(self.batches, dim=1) if self.batches else torch.zeros(self.rows, 0, dtype=torch.float64)


# The teacher's probabilities are kept (fp32) when they fit in this many bytes; else re-derived per trial.
TEACHER_CACHE_BYTES = 1 << 30
# Dense hidden states at layer boundaries are cached within this many bytes, for prefix reuse.
PREFIX_CACHE_BYTES = 1 << 30
# Logits are scored in row chunks of about this size, so the log-softmax and the dot product read them from cache,
_CHUNK_BYTES = 16 << 20
# but never fewer rows than this: each chunk reads the whole LM head, and for a large vocabulary (151,936 x 896)
# a chunk of 16 MiB is 27 rows, which made the head's matmul memory-bound (9 s instead of 4 s on 2,048 positions).
_MIN_CHUNK_ROWS = 256


def _chunk_rows(vocab: int) -> int:
    return max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // (4 * vocab))


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
        prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
        temperature: float | None = None,
        folds: Sequence[int] | None = None,
        refit: bool = False,
    ):
        """`folds`: the cross-fitting fold of each block (`search/vocabfit.py`); a batch then holds blocks of one
        fold only, and the folds take turns batch by batch, so any prefix of batches still samples them all.
        `refit`: score every candidate after the training-free repair of `pruning/refit.py` (see `Scoring`)."""
        self.model = model
        self.refit = refit
        self.temperature = temperature  # drafts: also score acceptance at this temperature (0: greedy)
        self.scores = scores
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))
        batches = _fold_batches(order.tolist(), list(folds) if folds is not None else [0] * len(blocks), batch_size)
        self.blocks = blocks[torch.tensor([i for _, batch in batches for i in batch])].to(self.device)
        self.batch_fold = [fold for fold, _ in batches]
        self.batch_sizes = [len(batch) for _, batch in batches]
        self.n_batches = len(batches)
        self.boundaries = prefix_boundaries(model, blocks, prefix_cache_bytes)
        self.prefix: dict[int, list[torch.Tensor]] = {b: [] for b in self.boundaries}
        hidden = self._teacher_hidden()
        copies = 2 if temperature not in (None, GREEDY, 1.0) else 1  # the tempered distribution is a second one
        cached = blocks.numel() * model.config.vocab_size * 4 * copies <= teacher_cache_bytes
        self.teacher_cache = self._teacher_cache(hidden) if cached else None
        self.teacher_hidden = None if cached else hidden
        self.dense_hidden = hidden if refit else None  # what a candidate's final hidden states are mapped onto
        self.moments = self._moments(hidden)

    @torch.inference_mode()
    def _teacher_hidden(self) -> list[torch.Tensor]:
        """The dense final hidden states of every position that predicts a next token (and, on the way, the
        hidden states at the cached layer boundaries)."""
        stack, layers = decoder(self.model), decoder_layers(self.model)
        hooks = [layers[b - 1].register_forward_hook(self._recorder(b)) for b in self.boundaries]
        try:
            return [stack(input_ids=batch, use_cache=False).last_hidden_state[:, :-1] for batch in self.batches()]
        finally:
            for hook in hooks:
                hook.remove()

    def _recorder(self, boundary: int):
        def record(module, args, output) -> None:
            self.prefix[boundary].append(_hidden_of(output).detach().clone())

        return record

    def batches(self) -> tuple[torch.Tensor, ...]:
        """The calibration blocks, batch by batch, in scoring order."""
        return self.blocks.split(self.batch_sizes)

    def resume_boundary(self, plan: PrunePlan) -> int:
        """The deepest cached boundary at or before the plan's first changed layer (0: a full forward)."""
        first = first_change(plan, model_shape_of(self.model))
        return max((b for b in self.boundaries if b <= first), default=0)

    @torch.inference_mode()
    def _teacher_cache(self, hidden: list[torch.Tensor]) -> list[Teacher]:
        return [Teacher.from_logits(lm_head(self.model)(h), self.temperature) for h in hidden]

    @torch.inference_mode()
    def _moments(self, hidden: list[torch.Tensor]) -> list[Moments]:
        head = lm_head(self.model)
        return [Moments.of(head, h.reshape(-1, h.shape[-1]), self.temperature == GREEDY) for h in hidden]

    def _teacher(self, index: int) -> _BatchTeacher:
        """The dense side of batch `index`, by row chunk (rows: its positions, flattened)."""
        moments = self.moments[index].rows
        if self.teacher_cache is not None:
            return _BatchTeacher(moments, self.teacher_cache[index].rows)
        hidden = self.teacher_hidden[index].reshape(-1, self.teacher_hidden[index].shape[-1])
        dense_head = lm_head(self.model)
        return _BatchTeacher(moments, lambda rows: Teacher.from_logits(dense_head(hidden[rows]), self.temperature))

    def start(self, plan: PrunePlan, vocabulary: Vocabulary = None, *, reuse: bool = True) -> Scoring:
        """A scoring of `plan` that has run no batch yet (`reuse`: start at a cached boundary where it can).

        `vocabulary`: None (all tokens), the kept ids (every block), or a `VocabChoice` per fold of `folds`.
        A choice that `reads` trimmed tokens as the draft does changes the candidate's inputs, so its forward
        starts at the embedding (the cached dense prefix read the dense inputs)."""
        choices = _choices(vocabulary, set(self.batch_fold))
        mapped = any(choice is not None and choice.reads is not None for choice in choices.values())
        return Scoring(self, plan, choices, self.resume_boundary(plan) if reuse and not mapped else 0)

    def evaluate(self, plan: PrunePlan, vocabulary: Vocabulary = None) -> Quality:
        """KL and perplexity of `plan` (vocabulary restricted as `start` says)."""
        return self.start(plan, vocabulary).run().quality()

    @torch.inference_mode()
    def evaluate_model(
        self, model, token_map: Sequence[int] | None = None, reads: Sequence[int] | None = None
    ) -> Quality:
        """KL and perplexity of a materialised model (an exported or healed checkpoint) on the same blocks and
        by the same definitions as `evaluate`, so its scores compare with the proxy's.

        `token_map` (new id -> dense id) for a trimmed vocabulary: the model reads every calibration token (a
        kept one as its own row; one the trim dropped as the dense embedding row, or with `reads`, as the draft
        reads it: its own row of `reads[token]`, `VocabChoice.reads`) and its LM head scores the kept tokens
        only."""
        model = model.to(self.device).eval()
        stack = decoder(model)
        if token_map is None:
            inputs = lambda batch: {"input_ids": batch}  # noqa: E731
            head = _LogitHead.of(lm_head(model), None, self.temperature)
        else:
            kept = torch.tensor(list(token_map), device=self.device)
            table = embedding(self.model).weight.detach().clone()
            table[kept] = embedding(model).weight.to(table.dtype)
            if reads is not None:  # every id reads the row of the kept id the draft reads in its place
                table = table[torch.tensor(list(reads), device=self.device)]
            head = _widened(lm_head(model), kept, table.shape[0], self.temperature)
            inputs = lambda batch: {"inputs_embeds": F.embedding(batch, table)}  # noqa: E731
        sums = self.new_sums()
        for index, batch in enumerate(self.batches()):
            hidden = stack(**inputs(batch), use_cache=False).last_hidden_state[:, :-1]
            head.accumulate(sums, hidden, self._teacher(index), batch[:, 1:])
        return _quality(sums)

    def new_sums(self) -> _Sums:
        return _Sums(self.device, rows=4 if self.temperature is None else 5)


class Scoring:
    """One candidate being scored batch by batch: `run` more batches, read `quality` (of the blocks scored so
    far) or `block_values` at any point; built once, so a stopped scoring can be finished without recomputing.

    With the evaluator's `refit`, the candidate is scored as its repaired export will run (`pruning/refit.py`):
    its final hidden states are kept batch by batch, and when scores are read each batch is scored after a map
    fitted on the *other* scored batches (even against odd batch indices: cross-fitted, so a map that only
    memorises the calibration text earns nothing). A map fitted on no batch is the identity."""

    def __init__(
        self, evaluator: CandidateEvaluator, plan: PrunePlan, choices: Mapping[int, VocabChoice | None], resume: int
    ):
        self.evaluator, self.resume = evaluator, resume
        self.candidate = apply_plan(evaluator.model, replace(plan, vocab=None), evaluator.scores)
        device, head = evaluator.device, lm_head(self.candidate)
        # per fold: the LM head restricted to its kept tokens, and the ids its blocks are read as (None: as they are)
        self.heads = {
            fold: _LogitHead.of(head, _tensor(choice and choice.kept, device), evaluator.temperature, dense=True)
            for fold, choice in choices.items()
        }
        self.reads = {fold: _tensor(choice and choice.reads, device) for fold, choice in choices.items()}
        self.stack = decoder(self.candidate)
        self._sums = evaluator.new_sums()
        self.kept_hidden: dict[int, torch.Tensor] = {}  # refit: the final hidden states of each scored batch
        self._refit_sums_at = -1  # refit: how many batches `_sums` covers
        self.batches_done = 0
        self._replay = _install_replay(self.candidate, evaluator.prefix.get(resume), resume)

    @property
    def done(self) -> bool:
        return self.batches_done >= self.evaluator.n_batches

    @property
    def fraction(self) -> float:
        """Share of the calibration blocks scored so far."""
        return sum(self.evaluator.batch_sizes[: self.batches_done]) / len(self.evaluator.blocks)

    @property
    def sums(self) -> _Sums:
        """The proxy sums of every batch scored so far (refit: recomputed with maps fitted on them all)."""
        if self.evaluator.refit and self._refit_sums_at != self.batches_done:
            self._sums, self._refit_sums_at = self._refitted_sums(), self.batches_done
        return self._sums

    @torch.inference_mode()
    def run(self, batches: int | None = None) -> Scoring:
        """Score up to `batches` more batches (all that remain when None)."""
        ev = self.evaluator
        stop = ev.n_batches if batches is None else min(ev.n_batches, self.batches_done + batches)
        batches = ev.batches()
        for index in range(self.batches_done, stop):
            batch, fold = batches[index], ev.batch_fold[index]
            if self._replay is not None:
                self._replay.index = index
            reads = self.reads[fold]
            inputs = batch if reads is None else reads[batch]  # the draft's view of the text; targets stay
            hidden = self.stack(input_ids=inputs, use_cache=False).last_hidden_state[:, :-1]
            if ev.refit:
                self.kept_hidden[index] = hidden
            else:
                self.heads[fold].accumulate(self._sums, hidden, ev._teacher(index), batch[:, 1:])
            self.batches_done = index + 1
        return self

    @torch.inference_mode()
    def _refitted_sums(self) -> _Sums:
        """Each scored batch through the map fitted on the scored batches of the other parity."""
        ev, sums = self.evaluator, self.evaluator.new_sums()
        halves = [MapStatistics(ev.model.config.hidden_size, ev.device) for _ in range(2)]
        for index, hidden in self.kept_hidden.items():
            halves[index % 2].add(hidden, ev.dense_hidden[index])
        maps = [halves[1].solve(), halves[0].solve()]  # batch parity -> the map fitted without it
        batches = ev.batches()
        for index, hidden in self.kept_hidden.items():
            mapped = hidden @ maps[index % 2].to(hidden.dtype)
            head = self.heads[ev.batch_fold[index]]
            head.accumulate(sums, mapped, ev._teacher(index), batches[index][:, 1:])
        return sums

    def quality(self) -> Quality:
        return _quality(self.sums)

    def block_values(self, objective: str) -> list[float]:
        """Per scored block: its mean KL (`kl`), its mean target NLL (`ppl`, whose exp of the mean is the
        perplexity), or (drafts) its mean acceptance (`acceptance`)."""
        sums = self.sums.per_block()
        kl, nll, nll_count, positions = sums[:4]
        if objective == "acceptance":
            return (sums[4] / positions).tolist()
        values = kl / positions if objective == "kl" else nll / nll_count.clamp_min(1)
        return values.tolist()


class _Replay(torch.nn.Module):
    """Stands in for the decoder layers before a cached boundary: the last of them returns the dense hidden
    states there (of batch `index`), the others pass their input on; nothing before the boundary is computed
    but the embedding lookup."""

    def __init__(self, cached: list[torch.Tensor] | None):
        super().__init__()
        self.cached, self.index = cached, 0

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.cached is None else self.cached[self.index]


def _install_replay(candidate, cached: list[torch.Tensor] | None, resume: int) -> _Replay | None:
    """Replace the candidate's first `resume` decoder layers (equal to the dense ones) by a replay of the cache."""
    if not resume or cached is None:
        return None
    layers = decoder_layers(candidate)
    last = _Replay(cached)
    for i in range(resume - 1):
        layers[i] = _Replay(None)
    layers[resume - 1] = last
    return last


def _fold_batches(order: list[int], folds: list[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """(fold, block indices) per batch: each fold's blocks in `order`, cut into batches, the folds taking turns
    (one fold: `order` cut into batches of `batch_size`)."""
    per_fold: dict[int, list[list[int]]] = {}
    for fold in sorted(set(folds)):
        mine = [i for i in order if folds[i] == fold]
        per_fold[fold] = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    turns = max(len(batches) for batches in per_fold.values()) if per_fold else 0
    return [(fold, batches[t]) for t in range(turns) for fold, batches in per_fold.items() if t < len(batches)]


def _choices(vocabulary: Vocabulary, folds: set[int]) -> dict[int, VocabChoice | None]:
    """A `VocabChoice` (or None: every token) per fold."""
    if vocabulary is None:
        return dict.fromkeys(folds)
    if isinstance(vocabulary, Mapping):
        missing = folds - vocabulary.keys()
        if missing:
            raise ValueError(f"no vocabulary for calibration folds {sorted(missing)}")
        return {fold: vocabulary[fold] for fold in folds}
    return dict.fromkeys(folds, VocabChoice(kept=vocabulary))


def _tensor(ids: Sequence[int] | None, device: torch.device) -> torch.Tensor | None:
    return None if ids is None else torch.as_tensor(list(ids), dtype=torch.long, device=device)


def _hidden_of(output) -> torch.Tensor:
    """A decoder layer's hidden states (transformers 5 returns the tensor; older layers returned a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def model_shape_of(model) -> ModelShape:
    return model_shape(model.config)


def first_change(plan: PrunePlan, shape: ModelShape) -> int:
    """Index of the first layer the plan changes (its heads or MLP width differ from the dense model's); the
    number of layers when none does. The vocabulary does not count: see the module docstring."""
    for i, layer in enumerate(plan.layers):
        if layer.heads != shape.num_heads or layer.ffn != shape.intermediate_size:
            return i
    return len(plan.layers)


def prefix_boundaries(model, blocks: torch.Tensor, budget_bytes: int) -> tuple[int, ...]:
    """Layer boundaries to cache (boundary b: the input of layer b, 1 <= b < layers), as many as the budget
    holds, spread evenly over the depth."""
    layers = model.config.num_hidden_layers
    element = next(model.parameters()).element_size()
    per_boundary = blocks.numel() * model.config.hidden_size * element
    count = min(layers - 1, budget_bytes // max(per_boundary, 1))
    if count <= 0:
        return ()
    return tuple(sorted({round(layers * (k + 1) / (count + 1)) for k in range(count)} - {0, layers}))


def _quality(sums: _Sums) -> Quality:
    totals = [float(x) for x in sums.per_block().sum(dim=1)]
    kl, nll, nll_count, positions = totals[:4]
    ppl = math.exp(nll / nll_count) if nll_count else math.inf
    acceptance = (totals[4] / positions if positions else 0.0) if len(totals) > 4 else None
    # KL >= 0; the cached-entropy form can land a hair below zero in fp32 when the candidate equals the teacher
    return Quality(kl=max(kl / positions, 0.0) if positions else math.inf, ppl=ppl, acceptance=acceptance)


def _widened(head: torch.nn.Linear, kept: torch.Tensor, vocab_size: int, temperature: float | None) -> _LogitHead:
    """A trimmed model's LM head (row i scores dense id kept[i]), restricted to those ids: its own rows are used
    as they are, never widened to the dense vocabulary (a 128k x hidden matrix of zeros)."""
    return _LogitHead(head.weight, head.bias, vocab_size, kept, temperature)


class _LogitHead:
    """A candidate's LM head, restricted to the kept tokens, and the proxy sums over its logits."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        vocab_size: int,
        kept: torch.Tensor | None,
        temperature: float | None = None,
        dense: bool = False,
    ):
        """`weight` and `bias` score the kept tokens in order (all `vocab_size` of them when `kept` is None);
        `dense`: they are the dense model's LM head (restricted to `kept`), so `Moments` apply."""
        self.kept, self.temperature = kept, temperature
        # KL from the dense distribution's moments: the dense head over every token, nothing tempered to compare
        self.by_moments = dense and kept is None and temperature in (None, GREEDY)
        if kept is not None:
            self.new_id = torch.full((vocab_size,), -1, dtype=torch.long, device=weight.device)
            self.new_id[kept] = torch.arange(len(kept), device=weight.device)
        self.weight, self.bias = weight, bias

    @classmethod
    def of(
        cls, linear: torch.nn.Linear, kept: torch.Tensor | None, temperature: float | None = None, dense: bool = False
    ) -> _LogitHead:
        """A dense-vocabulary LM head, restricted to `kept` (None: every token); `dense`: the dense model's own."""
        weight, bias = linear.weight, linear.bias
        if kept is not None:
            weight, bias = weight[kept], (bias[kept] if bias is not None else None)
        return cls(weight, bias, linear.out_features, kept, temperature, dense)

    def accumulate(self, sums: _Sums, hidden: torch.Tensor, teacher: _BatchTeacher, targets: torch.Tensor) -> None:
        """Add one batch; its positions go through in row chunks whose logits stay in cache (about 16 MiB), and
        an uncached teacher is derived chunk by chunk too (never a whole batch of full-vocabulary logits)."""
        blocks, positions = hidden.shape[0], hidden.shape[1]
        hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        if self.kept is not None:
            targets = self.new_id[targets]
        block_of = torch.arange(len(targets), device=targets.device) // positions
        per_block = sums.new_batch(blocks)
        step = _chunk_rows(self.weight.shape[0])
        for start in range(0, len(targets), step):
            rows = slice(start, start + step)
            if self.by_moments:
                self._accumulate_by_moments(
                    per_block, block_of[rows], hidden[rows], teacher.moments(rows), targets[rows]
                )
            else:
                self._accumulate_chunk(per_block, block_of[rows], hidden[rows], teacher.teacher(rows), targets[rows])

    def _accumulate_by_moments(
        self, per_block: torch.Tensor, block_of: torch.Tensor, hidden: torch.Tensor, moments: Moments, targets
    ) -> None:
        """`_accumulate_chunk` for the dense head over every token: KL(p || q) = sum p log p - (e.h + p.b -
        lse(z)) (`Moments`), so the dense distribution is never read and the logits only through lse."""
        logits = F.linear(hidden, self.weight, self.bias).float()
        log_norm = torch.logsumexp(logits, dim=-1)
        p_dot_z = torch.linalg.vecdot(moments.expected, hidden.float())
        if moments.expected_bias is not None:
            p_dot_z = p_dot_z + moments.expected_bias
        target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        rows = [
            (moments.neg_entropy - p_dot_z + log_norm).double(),
            (log_norm - target_logit).double(),
            torch.ones_like(log_norm, dtype=torch.float64),
            torch.ones_like(log_norm, dtype=torch.float64),
        ]
        if self.temperature == GREEDY:
            rows.append((logits.argmax(-1) == moments.top).double())
        per_block.index_add_(1, block_of, torch.stack(rows))

    def _accumulate_chunk(
        self, per_block: torch.Tensor, block_of: torch.Tensor, hidden: torch.Tensor, teacher: Teacher, targets
    ) -> None:
        logits = F.linear(hidden, self.weight, self.bias).float()
        log_q = F.log_softmax(logits, dim=-1)
        mask = targets >= 0
        target_log_q = log_q.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        rows = [
            self._kl(log_q, teacher).double(),
            torch.where(mask, -target_log_q, 0).double(),
            mask.double(),
            torch.ones_like(mask, dtype=torch.float64),
        ]
        if self.temperature is not None:
            rows.append(self._acceptance(logits, log_q, teacher).double())
        per_block.index_add_(1, block_of, torch.stack(rows))

    def _acceptance(self, logits: torch.Tensor, log_q: torch.Tensor, teacher: Teacher) -> torch.Tensor:
        """Per position, the probability that the dense model accepts this draft's token (`pruning.speculative.
        acceptance`, on the kept tokens only: the draft proposes nothing else, so the dense mass on trimmed tokens
        is rejected). Greedy: the draft's argmax (mapped to its dense id) equals the dense argmax; sampling:
        sum over kept v of min(p_T(v), q_T(v))."""
        if self.temperature == GREEDY:
            top = logits.argmax(-1)
            top = self.kept[top] if self.kept is not None else top
            return (top == teacher.top).float()
        q = log_q.exp() if self.temperature == 1.0 else F.softmax(logits / self.temperature, dim=-1)
        p = teacher.tempered if self.kept is None else teacher.tempered[..., self.kept]
        return torch.minimum(p, q).sum(-1)

    def _kl(self, log_q: torch.Tensor, teacher: Teacher) -> torch.Tensor:
        """Per position KL(p_K || q) - log p(K); KL(p || q) untrimmed."""
        if self.kept is None:
            return teacher.neg_entropy - torch.linalg.vecdot(teacher.probs, log_q)
        p_kept = teacher.probs[..., self.kept]
        mass = p_kept.sum(-1).clamp_min(torch.finfo(p_kept.dtype).tiny)
        p_log_p = torch.xlogy(p_kept, p_kept).sum(-1)
        return (p_log_p - torch.linalg.vecdot(p_kept, log_q)) / mass - 2 * mass.log()
