"""The heal's KD loss: zero on itself, chunking changes nothing, trimmed vocabularies use the restricted teacher."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from prunesearch.pruning.distill import LogitHead, distill_loss

from .factories import tiny_model

HIDDEN, VOCAB = 16, 40


def _head(seed: int, vocab: int = VOCAB) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(HIDDEN, vocab, bias=True)
    torch.nn.init.normal_(head.weight, std=0.5)
    return head


def _hidden(seed: int, rows: int = 2 * 7) -> torch.Tensor:
    return torch.randn(2, rows // 2, HIDDEN, generator=torch.Generator().manual_seed(seed))


def test_kd_loss_is_zero_when_student_is_teacher():
    model = tiny_model("llama")
    teacher = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = model.get_decoder()(input_ids=ids).last_hidden_state[:, :-1]
    ht = teacher.get_decoder()(input_ids=ids).last_hidden_state[:, :-1]
    for temperature in (1.0, 2.0):
        loss = distill_loss(
            hs, LogitHead.of(model.lm_head), ht, LogitHead.of(teacher.lm_head), ids[:, 1:], temperature=temperature
        )
        assert abs(float(loss)) < 1e-6
    other = tiny_model("llama", seed=1).lm_head
    different = distill_loss(hs, LogitHead.of(other), ht, LogitHead.of(teacher.lm_head), ids[:, 1:])
    assert float(different) > 1e-3  # the zero above is not a loss that is always zero


def test_kd_loss_is_the_mean_kl_with_temperature():
    student, teacher = _head(0), _head(1)
    hs, ht = _hidden(0), _hidden(1)
    temperature = 2.0
    loss = distill_loss(hs, LogitHead.of(student), ht, LogitHead.of(teacher), None, temperature=temperature)
    log_p = F.log_softmax(teacher(ht) / temperature, -1)
    log_q = F.log_softmax(student(hs) / temperature, -1)
    expected = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean() * temperature**2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_trimmed_vocabulary_kd_matches_the_restricted_teacher():
    """The student's vocabulary is K (original ids `kept`); the target is the dense p restricted to K and
    renormalised, p_K = p[K] / p(K), as in the search's KL(p_K || q)."""
    kept = [0, 3, 4, 9, 17, 18, 25, 39]
    teacher = _head(1)
    student = _head(0, vocab=len(kept))
    hs, ht = _hidden(0), _hidden(1)
    loss = distill_loss(hs, LogitHead.of(student), ht, LogitHead.restricted(teacher, kept), None)

    p = F.softmax(teacher(ht).reshape(-1, VOCAB), -1)[:, kept]
    p_kept = p / p.sum(-1, keepdim=True)
    log_q = F.log_softmax(student(hs).reshape(-1, len(kept)), -1)
    expected = (p_kept * (p_kept.log() - log_q)).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_cross_entropy_mix():
    student, teacher = _head(0), _head(1)
    hs, ht = _hidden(0), _hidden(1)
    targets = torch.randint(0, VOCAB, hs.shape[:-1], generator=torch.Generator().manual_seed(2))
    kd = distill_loss(hs, LogitHead.of(student), ht, LogitHead.of(teacher), targets)
    mixed = distill_loss(hs, LogitHead.of(student), ht, LogitHead.of(teacher), targets, ce_weight=0.25)
    ce = F.cross_entropy(student(hs).reshape(-1, VOCAB), targets.reshape(-1))
    torch.testing.assert_close(mixed, 0.75 * kd + 0.25 * ce, rtol=1e-5, atol=1e-6)


def test_row_chunks_change_neither_loss_nor_gradients():
    teacher = _head(1)
    ht = _hidden(1)
    results = []
    for chunk_rows in (None, 3):
        student = _head(0)
        hs = _hidden(0).requires_grad_(True)
        loss = distill_loss(
            hs, LogitHead.of(student), ht, LogitHead.of(teacher), torch.zeros(2, 7, dtype=torch.long),
            ce_weight=0.5, chunk_rows=chunk_rows,
        )  # fmt: skip
        loss.backward()
        results.append((loss.detach(), hs.grad, student.weight.grad, student.bias.grad))
    for whole, chunked in zip(*results, strict=True):
        torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-7)
    assert results[0][2].abs().sum() > 0


def test_a_teacher_head_of_another_vocabulary_is_refused():
    with pytest.raises(ValueError, match="restrict the teacher"):
        distill_loss(_hidden(0), LogitHead.of(_head(0, 8)), _hidden(1), LogitHead.of(_head(1)), None)


@pytest.mark.parametrize("head_trains", [True, False])
def test_fused_gradients_equal_autograd_through_the_plain_formula(head_trains):
    """The closed-form chunk gradients (KL with temperature plus cross-entropy) equal autograd's."""
    teacher, ht = _head(1), _hidden(1)
    targets = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    temperature, ce_weight = 2.0, 0.3
    grads = []
    for fused in (True, False):
        student = _head(0).requires_grad_(head_trains)
        hs = _hidden(0).requires_grad_(True)
        if fused:
            loss = distill_loss(
                hs, LogitHead.of(student), ht, LogitHead.of(teacher), targets,
                temperature=temperature, ce_weight=ce_weight, chunk_rows=4,
            )  # fmt: skip
        else:
            log_p = F.log_softmax(teacher(ht) / temperature, -1).detach()
            log_q = F.log_softmax(student(hs) / temperature, -1)
            kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean() * temperature**2
            ce = F.cross_entropy(student(hs).reshape(-1, VOCAB), targets.reshape(-1))
            loss = (1 - ce_weight) * kl + ce_weight * ce
        (3.0 * loss).backward()  # an upstream gradient other than 1 reaches every input
        grads.append((loss.detach(), hs.grad, student.weight.grad, student.bias.grad))
    for fused, plain in zip(*grads, strict=True):
        if plain is None:
            assert fused is None
        else:
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert grads[0][1].abs().sum() > 0
