"""One contract suite that every importance criterion in `CRITERIA` runs, on every architecture."""

from __future__ import annotations

import pytest
import torch

from prunesearch.choices import CriterionName
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.importance import CRITERIA, Criterion, CriterionError, compute_importance, get_criterion
from prunesearch.pruning.modules import attention_parts, decoder_layers, mlp_parts, spec_of
from prunesearch.pruning.stats import collect_activation_stats

from .factories import ARCHS, tiny_model

CRITERION_NAMES = sorted(CRITERIA)


def _stats(model):
    blocks = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    return collect_activation_stats(model, blocks, progress=False)


def test_every_criterion_name_has_one_implementation():
    assert set(CRITERIA) == set(CriterionName)
    assert all(key == criterion.name for key, criterion in CRITERIA.items())


@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_implements_the_protocol(name):
    criterion = get_criterion(name)
    assert isinstance(criterion, Criterion)
    assert get_criterion(str(name)) is criterion
    # the table's facts belong to the class: an instance cannot be made to claim otherwise
    with pytest.raises(TypeError):
        type(criterion)(needs_calibration=not criterion.needs_calibration)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_scores_every_kv_group_and_channel(name, arch):
    model = tiny_model(arch)
    shape = model_shape(model.config)
    scores = compute_importance(model, name, _stats(model))
    assert scores.criterion == name
    assert len(scores.kv_groups) == len(scores.channels) == shape.num_layers
    for groups, channels in zip(scores.kv_groups, scores.channels, strict=True):
        assert groups.shape == (shape.num_kv_heads,) and channels.shape == (shape.intermediate_size,)
        assert torch.isfinite(groups).all() and (groups >= 0).all()
        assert torch.isfinite(channels).all() and (channels >= 0).all()
    assert scores.compensates_bias == get_criterion(name).compensates_bias
    if scores.compensates_bias:
        assert [m.shape for m in scores.mlp_input_mean] == [(shape.intermediate_size,)] * shape.num_layers


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_a_group_and_a_channel_without_weights_score_lowest(name, arch):
    """Zeroing every weight attached to KV group 1 and MLP channel 3 of each layer makes them the least
    important under any criterion."""
    model = tiny_model(arch)
    shape, spec = model_shape(model.config), spec_of(model)
    q_rows = slice(shape.group_size * shape.head_dim, 2 * shape.group_size * shape.head_dim)
    kv_rows = slice(shape.head_dim, 2 * shape.head_dim)
    with torch.no_grad():
        for layer in decoder_layers(model):
            attn, mlp = attention_parts(layer, spec), mlp_parts(layer, spec)
            for linear, rows in ((attn.q_proj, q_rows), (attn.k_proj, kv_rows), (attn.v_proj, kv_rows)):
                linear.weight[rows] = 0
                if linear.bias is not None:
                    linear.bias[rows] = 0
            attn.o_proj.weight[:, q_rows] = 0
            for linear in mlp.inputs:
                linear.weight[3] = 0
            mlp.output.weight[:, 3] = 0
    scores = compute_importance(model, name, _stats(model))
    for groups, channels in zip(scores.kv_groups, scores.channels, strict=True):
        assert int(groups.argmin()) == 1 and groups[1] == 0
        assert int(channels.argmin()) == 3 and channels[3] == 0


@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_calibration_is_required_exactly_when_declared(name):
    model = tiny_model("llama")
    if get_criterion(name).needs_calibration:
        with pytest.raises(CriterionError, match="needs calibration data"):
            compute_importance(model, name)
    else:
        assert compute_importance(model, name).criterion == name


def test_unknown_criterion_is_a_clear_error():
    with pytest.raises(CriterionError, match="unknown criterion 'taylor'; choose one of flap, wanda, magnitude"):
        compute_importance(tiny_model("llama"), "taylor")
