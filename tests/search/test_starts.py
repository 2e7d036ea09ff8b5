"""Informed starting points are valid plans of the space they are enqueued into."""

from __future__ import annotations

import random

import pytest

from prunesearch.pruning.plan import ModelShape
from prunesearch.search.parametrize import depth_violation, resolve, suggest_plan
from prunesearch.search.spec import SearchSpace
from prunesearch.search.starts import flap_global, informed_params

SHALLOW = ModelShape(
    num_layers=6, num_heads=8, num_kv_heads=4, head_dim=16, hidden_size=128, intermediate_size=688, vocab_size=4096
)
DEEP = ModelShape(
    num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, hidden_size=896, intermediate_size=4864, vocab_size=4096
)


class InBounds:
    """A trial stand-in that answers from `params` and fails on a missing or out-of-range parameter."""

    def __init__(self, params):
        self.params, self.asked = params, set()

    def _get(self, name):
        assert name in self.params, f"{name} is not set"
        self.asked.add(name)
        return self.params[name]

    def suggest_int(self, name, low, high):
        value = self._get(name)
        assert isinstance(value, int) and low <= value <= high, (name, value, low, high)
        return value

    def suggest_float(self, name, low, high):
        value = self._get(name)
        assert low <= value <= high, (name, value, low, high)
        return value

    def suggest_categorical(self, name, choices):
        value = self._get(name)
        assert value in choices, (name, value)
        return value


SPACES = [
    {},
    {"depth": "layers"},
    {"depth": "none", "vocab": True},
    {"parametrization": "profile"},
    {"parametrization": "profile", "depth": "layers", "heads": False},
    {"layers": [1, 2, 3], "min_keep": {"heads": 0.5, "ffn": 0.5}},
]


@pytest.mark.parametrize("shape", [SHALLOW, DEEP], ids=["shallow", "deep"])
@pytest.mark.parametrize("space", SPACES, ids=str)
def test_every_starting_point_is_a_valid_plan_of_the_space(shape, space):
    rng = random.Random(0)
    knobs = resolve(shape, SearchSpace.model_validate(space), [rng.random() for _ in range(shape.num_layers)])
    kv = [[rng.random() * (i + 1) for _ in range(shape.num_kv_heads)] for i in range(shape.num_layers)]
    channels = [[rng.random() for _ in range(shape.intermediate_size)] for _ in range(shape.num_layers)]
    points = informed_params(knobs, kv, channels)
    names = [name for name, _ in points]
    assert len(set(names)) == len(names) and points
    if knobs.space.parametrization == "per_layer":
        assert any(name.startswith("flap-global") for name in names)
    assert any(name.startswith("profile") for name in names) == (len(knobs.touchable) >= 12)
    for name, params in points:
        stand_in = InBounds(params)
        plan = suggest_plan(stand_in, knobs)
        assert stand_in.asked == set(params), name  # complete: exactly the space's parameters
        plan.validate_for(shape)
        assert depth_violation(plan, knobs) <= 0, name
        assert plan != plan.dense(shape), name


def test_flap_global_follows_each_layers_score_distribution_and_grows_with_sparsity():
    knobs = resolve(SHALLOW, SearchSpace(depth="none"))
    kv = [[float(j) for j in range(4)] for _ in range(6)]
    spread = [j / 687 for j in range(688)]
    bimodal = [1.0 if j % 10 == 0 else 0.0 for j in range(688)]  # 90% equally weak: z = -1/3, none in the tail
    channels = [spread] * 5 + [bimodal]
    light, heavy = (flap_global(knobs, kv, channels, s) for s in (0.1, 0.6))
    assert light["ffn_cuts_5"] == 0 and all(light[f"ffn_cuts_{i}"] > 0 for i in range(5))
    assert heavy["ffn_cuts_5"] > 0  # its weak 90% go once the threshold passes z = -1/3
    assert sum(heavy.values()) > sum(light.values())
