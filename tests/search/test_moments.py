"""KL from the dense distribution's moments (`search.evaluator.Moments`) equals KL from the distribution itself."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.search.evaluator import CandidateEvaluator, Moments, _BatchTeacher, _chunk_rows, _LogitHead, _Sums

from ..factories import ARCHS, random_plan, tiny_model


def _evaluator(arch: str, temperature: float | None = None) -> CandidateEvaluator:
    model = tiny_model(arch)
    blocks = torch.randint(3, model.config.vocab_size, (12, 16), generator=torch.Generator().manual_seed(1))
    scores = compute_importance(model, "flap", collect_activation_stats(model, blocks, progress=False))
    return CandidateEvaluator(model, blocks, scores, batch_size=4, temperature=temperature)


@torch.inference_mode()
def test_moments_kl_with_a_biased_head_equals_the_definition():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=True)
    dense_hidden, candidate_hidden = torch.randn(10, 16), torch.randn(10, 16)
    targets = torch.randint(0, 40, (10,))
    sums = _Sums(torch.device("cpu"))
    moments = Moments.of(head, dense_hidden, greedy=False)
    teacher = _BatchTeacher(moments.rows, lambda rows: pytest.fail("the moments path never reads p"))
    logit_head = _LogitHead.of(head, None, dense=True)
    assert logit_head.by_moments
    logit_head.accumulate(sums, candidate_hidden.unsqueeze(0), teacher, targets.unsqueeze(0))
    kl, nll = sums.per_block()[:2, 0] / 10
    log_p, log_q = F.log_softmax(head(dense_hidden), -1), F.log_softmax(head(candidate_hidden), -1)
    assert float(kl) == pytest.approx(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()), abs=1e-5)
    assert float(nll) == pytest.approx(float(-log_q.gather(-1, targets[:, None]).mean()), abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [None, 0.0])
def test_moments_and_probabilities_score_every_block_alike(arch, temperature):
    evaluator = _evaluator(arch, temperature)
    plan = random_plan(evaluator.model, random.Random(arch))
    by_moments = evaluator.start(plan).run()
    assert all(head.by_moments for head in by_moments.heads.values())
    by_probabilities = evaluator.start(plan)
    for head in by_probabilities.heads.values():
        head.by_moments = False
    by_probabilities.run()
    objectives = ["kl", "ppl"] + (["acceptance"] if temperature is not None else [])
    for objective in objectives:
        got, expected = by_moments.block_values(objective), by_probabilities.block_values(objective)
        assert got == pytest.approx(expected, abs=1e-5), objective
    assert by_moments.quality().kl > 1e-3  # a real cut, 100x the tolerance: not the dense model


def test_sampling_and_trimmed_heads_keep_the_probabilities():
    """Moments hold only for the dense head over every token without a temperature."""
    head = torch.nn.Linear(8, 20)
    assert not _LogitHead.of(head, None, temperature=1.0, dense=True).by_moments
    assert not _LogitHead.of(head, torch.tensor([1, 3, 5]), dense=True).by_moments
    assert not _LogitHead.of(head, None).by_moments  # a healed or exported model's own head


def test_large_vocabularies_are_scored_in_chunks_of_many_rows():
    """Each chunk reads the whole LM head, so a 152k vocabulary is not cut into 27-row chunks."""
    assert _chunk_rows(151_936) >= 256
    assert _chunk_rows(8192) == 512  # small vocabularies: 16 MiB of logits a chunk, as before
