"""Speculative-decoding arithmetic: acceptance and expected speedup (pruning/speculative.py)."""

import math

import pytest
import torch

from prunesearch.pruning.speculative import acceptance, best_lookahead, expected_tokens, speedup


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_a_draft_equal_to_its_target_is_always_accepted(temperature):
    logits = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))
    alpha = acceptance(logits, logits.clone(), temperature=temperature)
    assert alpha.shape == (3, 5)
    assert torch.allclose(alpha, torch.ones_like(alpha), atol=1e-6)


def test_sampling_acceptance_is_the_overlap_of_the_two_distributions():
    target = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    draft = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    assert acceptance(target, draft).item() == pytest.approx(0.2 + 0.3 + 0.2)


def test_trimmed_tokens_count_as_rejections():
    target = torch.zeros(1, 4)  # uniform over 4 tokens
    draft = torch.zeros(1, 2)  # uniform over the two kept ones
    kept = torch.tensor([1, 3])
    assert acceptance(target, draft, kept).item() == pytest.approx(0.5)
    # greedy: the target's argmax (token 2) is trimmed, so no draft token can match it
    peaked = torch.tensor([[0.0, 0.0, 5.0, 0.0]])
    assert acceptance(peaked, torch.tensor([[0.0, 9.0]]), kept, temperature=0.0).item() == 0.0
    # ... and a kept argmax maps back through the token map
    peaked = torch.tensor([[0.0, 0.0, 0.0, 5.0]])
    assert acceptance(peaked, torch.tensor([[0.0, 9.0]]), kept, temperature=0.0).item() == 1.0


def test_a_restricted_draft_equal_to_the_target_on_kept_tokens_accepts_their_mass():
    target = torch.randn(2, 30, generator=torch.Generator().manual_seed(1))
    kept = torch.tensor([0, 4, 7, 9, 20])
    alpha = acceptance(target, target[:, kept], kept)
    p = target.softmax(-1)
    assert torch.allclose(alpha, p[:, kept].sum(-1), atol=1e-6)


def test_speedup_matches_hand_computed_values():
    # Leviathan et al.: (1 - a^(g+1)) / ((1 - a)(g c + 1)); a=0.8, g=4, c=0.1: 3.3616 / 1.4
    assert speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8**5) / 0.2 / 1.4)
    assert speedup(0.8, 4, 0.1) == pytest.approx(2.401142857)
    # verification priced at its real cost: the target scoring 5 tokens costs 1.25 plain steps
    assert speedup(0.8, 4, 0.1, verify_cost=1.25) == pytest.approx(3.3616 / 1.65)
    assert speedup(0.0, 3, 0.2) == pytest.approx(1 / 1.6)  # nothing accepted: pure overhead
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.999999, 5) == pytest.approx(6.0, rel=1e-4)


def test_best_lookahead_trades_acceptance_against_draft_cost():
    verify = [1.0 + 0.05 * g for g in range(1, 9)]
    g_hi, s_hi = best_lookahead(0.9, 0.05, verify)
    g_lo, s_lo = best_lookahead(0.5, 0.05, verify)
    assert g_hi > g_lo and s_hi > s_lo
    assert s_hi == pytest.approx(max(speedup(0.9, g, 0.05, verify[g - 1]) for g in range(1, 9)))
    assert best_lookahead(0.9, 0.05, verify, lookaheads=[2])[0] == 2


@pytest.mark.parametrize("bad", [(-0.1, 2), (1.1, 2), (math.nan, 2), (0.5, 0)])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        expected_tokens(*bad)
