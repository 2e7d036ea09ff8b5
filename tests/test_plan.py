"""Plan parsing and validation: one clear message per problem."""

from __future__ import annotations

import json

import pytest

from prunesearch.pruning.architectures import UnsupportedArchitectureError, get_spec, model_shape
from prunesearch.pruning.plan import LayerPlan, ModelShape, PlanError, PrunePlan

SHAPE = ModelShape(
    num_layers=2,
    num_heads=8,
    num_kv_heads=2,
    head_dim=16,
    hidden_size=128,
    intermediate_size=256,
    vocab_size=1000,
    num_special_tokens=3,
)


def _problems(data, shape: ModelShape = SHAPE) -> list[str]:
    with pytest.raises(PlanError) as info:
        PrunePlan.from_dict(data).validate_for(shape)
    return info.value.problems


def test_round_trip_through_json():
    plan = PrunePlan(layers=(LayerPlan(8, 256), LayerPlan(0, 64)), vocab=500)
    assert PrunePlan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json()) == {
        "version": 1,
        "layers": [{"heads": 8, "ffn": 256}, {"heads": 0, "ffn": 64}],
        "vocab": 500,
    }


def test_dense_plan_is_valid_and_uniform():
    plan = PrunePlan.dense(SHAPE).validate_for(SHAPE)
    assert plan.is_uniform() and plan.is_dense_for(SHAPE)
    assert plan.kept_layer_indices() == [0, 1]


def test_wrong_layer_count():
    assert _problems({"layers": [{"heads": 8, "ffn": 256}]}) == ["plan has 1 layers but the model has 2"]


def test_heads_not_a_multiple_of_the_group_size_and_too_many():
    problems = _problems({"layers": [{"heads": 3, "ffn": 256}, {"heads": 12, "ffn": 257}]})
    assert any("layer 0: heads 3 is not a multiple of the GQA group size 4" in p for p in problems)
    assert "layer 1: heads 12 is more than the model's 8" in problems
    assert "layer 1: ffn 257 is more than the model's 256" in problems


def test_negative_values_unknown_keys_and_types_are_all_reported():
    problems = _problems({"layers": [{"heads": -4, "ffn": "x"}, {"heads": 8, "ffn": 1, "bias": 1}], "extra": 1})
    assert "layer 0: heads must not be negative, got -4" in problems
    assert "layer 0: ffn must be an integer, got 'x'" in problems
    assert "layer 1: unknown key 'bias' (allowed: heads, ffn)" in problems
    assert any(p.startswith("unknown key 'extra'") for p in problems)


def test_vocab_bounds():
    assert _problems({"layers": [{"heads": 8, "ffn": 8}] * 2, "vocab": 2}) == [
        "vocab 2 is smaller than the number of special tokens (3)"
    ]
    assert _problems({"layers": [{"heads": 8, "ffn": 8}] * 2, "vocab": 1001}) == [
        "vocab 1001 is larger than the model's vocabulary (1000)"
    ]
    assert any(
        "vocab must be a positive integer" in p for p in _problems({"layers": [{"heads": 8, "ffn": 8}] * 2, "vocab": 0})
    )


def test_removing_everything_is_rejected():
    assert _problems({"layers": [{"heads": 0, "ffn": 0}] * 2}) == [
        "the plan removes every layer; keep at least one attention or MLP sublayer"
    ]


def test_not_json_and_not_an_object():
    with pytest.raises(PlanError, match="not valid JSON"):
        PrunePlan.from_json("{layers: ")
    with pytest.raises(PlanError, match="must be a JSON object"):
        PrunePlan.from_json("[1, 2]")
    with pytest.raises(PlanError, match="unsupported plan version 7"):
        PrunePlan.from_dict({"version": 7, "layers": [{"heads": 8, "ffn": 8}]})


def test_uniformity():
    assert not PrunePlan(layers=(LayerPlan(8, 256), LayerPlan(4, 256))).is_uniform()
    assert not PrunePlan(layers=(LayerPlan(0, 256), LayerPlan(0, 256))).is_uniform()
    assert PrunePlan(layers=(LayerPlan(4, 128), LayerPlan(0, 0), LayerPlan(4, 128))).is_uniform()


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(
        UnsupportedArchitectureError, match="'gpt2' is not supported; supported: llama, mistral, qwen2, qwen3"
    ):
        get_spec("gpt2")


def test_model_shape_reads_gqa_and_head_dim_from_a_plain_dict():
    shape = model_shape(
        {
            "model_type": "qwen3",
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "hidden_size": 1024,
            "head_dim": 128,
            "num_hidden_layers": 28,
            "intermediate_size": 3072,
            "vocab_size": 151936,
        }
    )
    assert (shape.group_size, shape.head_dim, shape.num_layers) == (2, 128, 28)
