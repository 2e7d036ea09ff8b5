"""The target's emissions, which a draft's vocabulary keeps the top of (pruning/targetmass.py)."""

from __future__ import annotations

import pytest
import torch

from prunesearch.pruning.targetmass import as_weights, emissions, target_token_mass

from .factories import tiny_model


@pytest.fixture(scope="module")
def model_and_blocks():
    torch.manual_seed(0)
    model = tiny_model("qwen2")  # tied embeddings: the output head is the input one
    blocks = torch.randint(0, model.config.vocab_size, (5, 12))
    return model, blocks


def test_greedy_emissions_count_the_argmax_and_sampling_emissions_sum_the_probabilities():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    assert emissions(logits, 0.0).tolist() == [2.0, 1.0, 0.0]
    at_two = emissions(logits, 2.0)
    assert torch.allclose(at_two, torch.softmax(logits.double() / 2.0, -1).sum(0))
    assert float(at_two.sum()) == pytest.approx(3.0)  # one emission per position


@torch.inference_mode()
def test_mass_per_group_is_the_sum_over_its_blocks_whatever_the_batch(model_and_blocks):
    model, blocks = model_and_blocks
    groups = [0, 1, 1, 0, 2]
    for temperature in (0.0, 1.0):
        mass = target_token_mass(model, blocks, temperature, groups, batch_size=2)
        assert mass.shape == (3, model.config.vocab_size)
        logits = model(input_ids=blocks).logits
        for group in range(3):
            rows = [i for i, g in enumerate(groups) if g == group]
            expected = emissions(logits[rows].reshape(-1, logits.shape[-1]), temperature)
            assert torch.allclose(mass[group], expected, atol=1e-9)
        whole = target_token_mass(model, blocks, temperature, batch_size=5)
        assert torch.allclose(whole[0], mass.sum(0), atol=1e-9)
        assert float(whole.sum()) == pytest.approx(blocks.numel())


def test_weights_leave_out_tokens_never_emitted():
    weights = as_weights(torch.tensor([0.0, 2.0, 0.0, 0.5], dtype=torch.float64))
    assert weights == {1: 2.0, 3: 0.5}
