"""Heal-aware selection, the pure part: which candidates, the healed front, and the spec's heal block."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prunesearch.search.healselect import baseline_rivals, healed_front, pick_candidates
from prunesearch.search.spec import SearchSpec


def _front(latencies, kls, baselines=None):
    baselines = baselines or [None] * len(latencies)
    return [
        {"trial": 10 + i, "plan": {}, "metrics": {"latency_ms": lat, "kl": kl}, "baseline": b}
        for i, (lat, kl, b) in enumerate(zip(latencies, kls, baselines, strict=True))
    ]


def test_candidates_spread_over_latency_and_include_the_extremes():
    latencies = [1.0, 1.1, 1.2, 1.3, 2.0, 3.0, 4.0, 4.5, 5.0]
    front = _front(latencies, [0.9, 0.85, 0.8, 0.7, 0.5, 0.3, 0.2, 0.15, 0.1])
    picked = pick_candidates(front, 4, "kl")
    # the fastest (10), the best quality (18), and the members nearest the 1/3 and 2/3 latency quantiles
    assert picked == [10, 13, 15, 18]  # quantiles 1.27 and 3.33 ms
    assert pick_candidates(list(reversed(front)), 4, "kl") == picked  # order-independent
    assert pick_candidates(front, 1, "kl") == [10]
    assert pick_candidates(front, 2, "kl") == [10, 18]
    assert pick_candidates(front, 20, "kl") == [t["trial"] for t in front]
    assert len(set(pick_candidates(front, 6, "kl"))) == 6


def test_budgets_pick_the_members_just_under_each_budget_in_turns():
    latencies = [1.0, 1.1, 1.2, 1.3, 2.0, 3.0, 4.0, 4.5, 5.0]
    front = _front(latencies, [0.9, 0.85, 0.8, 0.7, 0.5, 0.3, 0.2, 0.15, 0.1])
    # budget 1.25 ms: 12 (1.2), then 11, 10; budget 4.2 ms: 16 (4.0), then 15, 14 -- alternating
    assert pick_candidates(front, 4, "kl", budgets_ms=[1.25, 4.2]) == [11, 12, 15, 16]
    assert pick_candidates(front, 3, "kl", budgets_ms=[1.25, 4.2]) == [11, 12, 16]
    # budgets whose members overlap take each member once; a budget no member meets adds nothing
    assert pick_candidates(front, 3, "kl", budgets_ms=[1.15, 1.25, 0.5]) == [10, 11, 12]
    assert pick_candidates(front, 20, "kl", budgets_ms=[1.05]) == [10]
    assert pick_candidates(front, 2, "kl", budgets_ms=[0.5]) == []


def test_rivals_are_the_slowest_baseline_under_each_budget():
    baselines = _front(
        [1.0, 2.0, 3.0, 3.5, 9.0],
        [0.0, 0.9, 0.6, 0.8, 0.1],
        ["dense", "shortgpt-3", "uniform-0.5", "shortgpt-2", "shortgpt-1"],
    )
    # 1.5 ms: only the dense model fits (never a rival); 3.2 ms: uniform-0.5 (3.0); 4 ms: shortgpt-2 (3.5)
    assert baseline_rivals(baselines, [1.5, 3.2, 4.0], "kl") == [12, 13]
    assert baseline_rivals(baselines, [4.0, 3.2], "kl") == [12, 13]  # fastest first, whatever the budgets' order
    assert baseline_rivals(baselines, [3.2, 3.3], "kl") == [12]  # two budgets with one rival heal it once
    assert baseline_rivals(baselines, [4.0], "kl", taken=[13]) == []  # already a front candidate
    assert baseline_rivals(baselines, [4.0], "ppl") == []  # no score of the search's quality


def test_spec_heal_rivals_default_on_and_dump_as_before():
    base = {"model": "m", "calibration": "c.txt", "hardware": "h100-sxm"}
    heal = {"top_k": 2, "tokens": 4096, "seq_len": 64, "batch": 2}
    assert SearchSpec(**base, heal=heal).heal.rivals is True
    assert "rivals" not in SearchSpec(**base, heal=heal).model_dump()["heal"]
    off = SearchSpec(**base, heal=heal | {"rivals": False})
    assert off.heal.rivals is False and off.model_dump()["heal"]["rivals"] is False


def test_spec_heal_budgets_are_shares_of_dense_and_omitted_when_unset():
    base = {"model": "m", "calibration": "c"}
    spec = SearchSpec(**base, heal={"top_k": 2, "tokens": 4096, "seq_len": 64, "batch": 2})
    assert "budgets" not in spec.model_dump()["heal"]
    spec = SearchSpec(**base, heal={"top_k": 2, "tokens": 4096, "seq_len": 64, "batch": 2, "budgets": [0.5, 0.7]})
    assert spec.heal.budgets == [0.5, 0.7]
    for budgets in ([0.0], [1.5], [float("nan")], [0.5] * 17):
        with pytest.raises(ValidationError):
            SearchSpec(**base, heal={"top_k": 2, "tokens": 4096, "seq_len": 64, "batch": 2, "budgets": budgets})


def test_best_quality_is_kept_even_when_it_is_not_the_slowest_and_dense_is_never_a_candidate():
    front = _front([1.0, 2.0, 3.0, 4.0, 9.0], [0.5, 0.4, 0.05, 0.3, 0.0], [None, None, None, None, "dense"])
    picked = pick_candidates(front, 2, "kl")
    assert picked == [10, 12]  # trial 12 scores best once the dense model is left out
    assert 14 not in pick_candidates(front, 5, "kl")


def test_healed_front_is_non_dominated_by_healed_quality():
    records = {r["trial"]: r for r in _front([1.0, 2.0, 3.0], [0.9, 0.5, 0.1])}
    healed = [
        {"trial": 10, "healed_kl": 0.3},
        {"trial": 11, "healed_kl": 0.35},  # slower and worse than 10 once healed: dominated
        {"trial": 12, "healed_kl": 0.05},
        {"trial": 99, "healed_kl": 0.0},  # not a trial of the study: ignored
        {"trial": 10, "error": "HealDataError: too small"} | {"trial": 13},  # failed heal: no score
        {"trial": 14, "healed_kl": float("nan")},  # faster than all, but NaN: no point on the front
    ]
    records[14] = _front([0.5], [0.01])[0] | {"trial": 14}
    front = healed_front(records, healed, "kl")
    assert [r["trial"] for r in front] == [10, 12]
    assert front[0]["healed"]["healed_kl"] == 0.3 and front[0]["metrics"]["kl"] == 0.9


def test_spec_heal_block_is_validated_and_off_by_default():
    base = {"model": "m", "calibration": "c"}
    assert SearchSpec(**base).heal is None and "heal" not in SearchSpec(**base).model_dump()
    spec = SearchSpec(**base, heal={"top_k": 3, "tokens": 4096, "method": "lora", "seq_len": 64, "batch": 2})
    assert spec.model_dump(mode="json")["heal"]["method"] == "lora"
    settings = spec.heal.settings(seed=7)
    got = (settings.method, settings.tokens, settings.seq_len, settings.batch, settings.seed)
    assert got == ("lora", 4096, 64, 2, 7)
    assert settings.learning_rate == 1e-3  # the heal CLI's default for LoRA
    bad = [{"top_k": 0}, {"tokens": 10}, {"method": "sgd"}, {"lr": -1}, {"extra": 1}, {"tokens": 1000}]
    for heal in bad:
        with pytest.raises(ValidationError):
            SearchSpec(**base, heal=heal)
