"""The search space: every sampled point is a valid plan inside the bounds; baselines are points of it."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import optuna
import pytest
from pydantic import ValidationError

from prunesearch.pruning.plan import ModelShape, PrunePlan
from prunesearch.search.baselines import MAX_DEPTH_BASELINES, baseline_params, depth_ladder
from prunesearch.search.parametrize import FixedParams, depth_violation, resolve, suggest_plan
from prunesearch.search.spec import SearchSpace, SearchSpec

SHAPE = ModelShape(
    num_layers=8,
    num_heads=8,
    num_kv_heads=4,
    head_dim=16,
    hidden_size=128,
    intermediate_size=2048,
    vocab_size=5000,
    num_special_tokens=2,
)
INFLUENCE = [0.5, 0.1, 0.3, 0.05, 0.2, 0.4, 0.15, 0.6]


def _sampled_plans(space: SearchSpace, count: int = 60) -> list[PrunePlan]:
    knobs = resolve(SHAPE, space, INFLUENCE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    plans = []
    for _ in range(count):
        trial = study.ask()
        plans.append(suggest_plan(trial, knobs))
        study.tell(trial, 0.0)
    return plans


@pytest.mark.parametrize("parametrization", ["per_layer", "profile"])
@pytest.mark.parametrize("depth", ["none", "layers", "sublayers"])
def test_sampled_plans_are_valid_and_within_bounds(parametrization, depth):
    space = SearchSpace(parametrization=parametrization, depth=depth, vocab=True)
    for plan in _sampled_plans(space):
        for layer in plan.layers:
            assert layer.heads == 0 or layer.heads >= SHAPE.group_size  # min_keep 0.25 of 4 groups = 1 group
            assert layer.heads % SHAPE.group_size == 0
            assert layer.ffn == 0 or 512 <= layer.ffn <= 2048
            assert layer.ffn == 0 or (2048 - layer.ffn) % 64 == 0
            if depth == "none":
                assert layer.heads and layer.ffn
            if depth == "layers":
                assert (layer.heads == 0) == (layer.ffn == 0)
        assert plan.vocab is None or 1250 <= plan.vocab < 5000


def test_untouchable_layers_stay_dense():
    space = SearchSpace(layers=[2, 3], depth="sublayers")
    for plan in _sampled_plans(space, 30):
        for index in (0, 1, 4, 5, 6, 7):
            assert (plan.layers[index].heads, plan.layers[index].ffn) == (8, 2048)


def test_layers_outside_the_model_are_rejected():
    with pytest.raises(ValueError, match=r"names layers \[9\]"):
        resolve(SHAPE, SearchSpace(layers=[1, 9]))


def test_dense_params_give_the_dense_plan():
    for parametrization in ("per_layer", "profile"):
        knobs = resolve(SHAPE, SearchSpace(parametrization=parametrization, vocab=True), INFLUENCE)
        assert suggest_plan(FixedParams({}), knobs) == PrunePlan.dense(SHAPE)


@pytest.mark.parametrize("parametrization", ["per_layer", "profile"])
def test_baselines_are_dense_uniform_and_shortgpt(parametrization):
    knobs = resolve(SHAPE, SearchSpace(parametrization=parametrization), INFLUENCE)
    plans = {name: suggest_plan(FixedParams(params), knobs) for name, params in baseline_params(knobs)}
    assert plans["dense"] == PrunePlan.dense(SHAPE)
    assert {(x.heads, x.ffn) for x in plans["uniform-0.5"].layers} == {(4, 1024)}
    # ShortGPT removes the least influential layers first: layer 3 (0.05), then layer 1 (0.1)
    removed = [i for i, x in enumerate(plans["shortgpt-2"].layers) if x.heads == 0 and x.ffn == 0]
    assert removed == [1, 3]
    assert max(int(name.split("-")[1]) for name in plans if name.startswith("shortgpt")) == 4  # min_keep 0.5


@pytest.mark.parametrize("most", [1, 4, MAX_DEPTH_BASELINES, MAX_DEPTH_BASELINES + 1, 18, 60])
def test_the_shortgpt_ladder_spans_every_depth_with_few_rungs(most):
    ladder = depth_ladder(most)
    assert ladder[0] == 1 and ladder[-1] == most and ladder == sorted(set(ladder))
    assert len(ladder) == min(most, MAX_DEPTH_BASELINES)
    gaps = [b - a for a, b in pairwise(ladder)]
    assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spread


def test_a_deep_model_gets_a_short_shortgpt_ladder():
    knobs = resolve(replace(SHAPE, num_layers=24), SearchSpace(min_keep={"layers": 0.25}))
    names = [name for name, _ in baseline_params(knobs) if name.startswith("shortgpt")]
    assert names == [f"shortgpt-{k}" for k in depth_ladder(18)]


def test_depth_violation_counts_sublayers_beyond_the_bound():
    knobs = resolve(SHAPE, SearchSpace(min_keep={"layers": 0.75}), INFLUENCE)
    plan = PrunePlan.dense(SHAPE)
    layers = list(plan.layers)
    for index in (0, 1, 2):
        layers[index] = type(layers[index])(heads=0, ffn=2048)
    assert depth_violation(PrunePlan(layers=tuple(layers)), knobs) == 1.0  # 3 attention removed, 2 allowed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"space": {"heads": False, "ffn": False, "depth": "none"}}, "no knob"),
        ({"constraints": {"latency_budget_fraction": 0.5, "latency_budget_ms": 3}}, "not both"),
        ({"sampler": "cmaes"}, "sampler"),
        ({"n_trials": 0}, "n_trials"),
        ({"space": {"typo": 1}}, "typo"),
    ],
)
def test_bad_specs_name_the_problem(body, message):
    with pytest.raises(ValidationError, match=message):
        SearchSpec.model_validate({"model": "m", "calibration": "c", **body})


def test_the_vocabulary_knob_never_goes_below_the_tokenizers_mandatory_tokens():
    space = SearchSpace(vocab=True, min_keep={"vocab": 0.01})  # 50 of 5000 tokens by the share alone
    assert resolve(SHAPE, space, INFLUENCE).vocab_bounds() == (50, 5000)
    knobs = resolve(SHAPE, space, INFLUENCE, min_vocab=1300)
    assert knobs.vocab_bounds() == (1300, 5000)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    sizes = [suggest_plan(study.ask(), knobs).vocab for _ in range(80)]
    assert all(size is None or 1300 <= size < 5000 for size in sizes) and min(s for s in sizes if s) < 1500
