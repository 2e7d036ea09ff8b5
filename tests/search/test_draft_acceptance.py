"""The evaluator's draft acceptance equals `pruning.speculative.acceptance` on the candidate's full logits, and a
trimmed vocabulary lowers it exactly by the rejection rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.speculative import acceptance
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.pruning.surgery import apply_plan
from prunesearch.search.evaluator import CandidateEvaluator

from ..factories import tiny_model

KEPT = [*range(0, 96, 2), 95]  # half the tiny vocabulary, ascending


def _evaluator(temperature: float | None, **kwargs) -> CandidateEvaluator:
    model = tiny_model("llama")
    blocks = torch.randint(3, model.config.vocab_size, (12, 16), generator=torch.Generator().manual_seed(1))
    stats = collect_activation_stats(model, blocks, progress=False)
    scores = compute_importance(model, "flap", stats)
    return CandidateEvaluator(model, blocks, scores, batch_size=4, temperature=temperature, **kwargs)


def _narrow_plan(evaluator: CandidateEvaluator, vocab: int | None) -> PrunePlan:
    shape = model_shape(evaluator.model.config)
    dense = LayerPlan(shape.num_heads, shape.intermediate_size)
    narrow = LayerPlan(shape.num_heads - shape.group_size, shape.intermediate_size // 2)
    return PrunePlan(layers=(dense, narrow, LayerPlan(0, 0), dense), vocab=vocab)


@torch.inference_mode()
def _reference(evaluator: CandidateEvaluator, plan: PrunePlan, kept: list[int] | None, temperature: float) -> float:
    """Mean acceptance by the definition: full logits of the candidate (the export, minus the trim) and of the
    dense model, through `pruning.speculative.acceptance`."""
    model, blocks = evaluator.model, evaluator.blocks
    candidate = apply_plan(model, replace(plan, vocab=None), evaluator.scores)
    target = model(input_ids=blocks, use_cache=False).logits[:, :-1]
    draft = candidate(input_ids=blocks, use_cache=False).logits[:, :-1]
    kept_ids = torch.tensor(kept) if kept is not None else None
    draft = draft[..., kept_ids] if kept_ids is not None else draft
    return float(acceptance(target, draft, kept_ids, temperature).mean())


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
@pytest.mark.parametrize("trimmed", [False, True])
def test_acceptance_equals_the_definition(temperature, trimmed):
    evaluator = _evaluator(temperature)
    kept = KEPT if trimmed else None
    plan = _narrow_plan(evaluator, len(KEPT) if trimmed else None)
    scored = evaluator.start(plan, kept).run().quality().acceptance
    assert scored == pytest.approx(_reference(evaluator, plan, kept, temperature), abs=1e-5)
    assert 0.0 < scored < 1.0


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_teacher_cache_does_not_change_acceptance(temperature):
    cached, uncached = _evaluator(temperature), _evaluator(temperature, teacher_cache_bytes=0)
    assert cached.teacher_cache is not None and uncached.teacher_cache is None
    plan = _narrow_plan(cached, len(KEPT))
    a = cached.start(plan, KEPT).run().quality().acceptance
    b = uncached.start(plan, KEPT).run().quality().acceptance
    assert a == pytest.approx(b, abs=1e-6)


@torch.inference_mode()
def test_dense_draft_accepts_everything_and_a_trim_rejects_exactly_the_trimmed_tokens():
    greedy, sampling = _evaluator(0.0), _evaluator(1.0)
    dense = PrunePlan.dense(model_shape(greedy.model.config))
    assert greedy.evaluate(dense).acceptance == 1.0
    assert sampling.evaluate(dense).acceptance == pytest.approx(1.0, abs=1e-5)
    logits = greedy.model(input_ids=greedy.blocks, use_cache=False).logits[:, :-1]
    kept = torch.tensor(KEPT)
    # greedy: the dense model's own draft is accepted exactly where the dense argmax survived the trim
    in_kept = torch.isin(logits.argmax(-1), kept).double().mean().item()
    assert greedy.evaluate(replace(dense, vocab=len(KEPT)), KEPT).acceptance == pytest.approx(in_kept, abs=1e-9)
    # sampling: q = p renormalised on the kept tokens, so sum_v min(p, q) = p(kept): the trimmed mass is rejected
    kept_mass = torch.softmax(logits.double(), -1)[..., kept].sum(-1).mean().item()
    trimmed = sampling.evaluate(replace(dense, vocab=len(KEPT)), KEPT).acceptance
    assert trimmed == pytest.approx(kept_mass, abs=1e-5)
    assert trimmed < 0.9


def test_staged_scoring_gives_per_block_acceptance():
    evaluator = _evaluator(0.0)
    scoring = evaluator.start(_narrow_plan(evaluator, None)).run(1)
    partial = scoring.block_values("acceptance")
    assert len(partial) == 4 and all(0.0 <= a <= 1.0 for a in partial)
    full = scoring.run().quality().acceptance
    assert sum(scoring.block_values("acceptance")) / 12 == pytest.approx(full)


def test_without_a_temperature_nothing_changes():
    plain, draft = _evaluator(None), _evaluator(0.0)
    plan = _narrow_plan(plain, len(KEPT))
    a, b = plain.evaluate(plan, KEPT), draft.evaluate(plan, KEPT)
    assert a.acceptance is None and plain.start(plan).sums.rows == 4
    assert (a.kl, a.ppl) == pytest.approx((b.kl, b.ppl), rel=1e-6)
