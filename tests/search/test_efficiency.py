"""Cheaper trials: prefix reuse equals a full forward, staged scoring, and early-stopped trials off the front."""

from __future__ import annotations

import math

import pytest
import torch

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.search import fidelity
from prunesearch.search.engine import BLOCKS_ATTR, run_search
from prunesearch.search.evaluator import CandidateEvaluator, first_change, prefix_boundaries
from prunesearch.search.results import front_trials, hypervolume, list_trials, load_study, pareto_front
from prunesearch.search.spec import SearchSpec

from ..factories import ARCHS, LLAMA_DOCS, PYDOCS_CALIB, tiny_model


def _evaluator(arch: str, **kwargs) -> CandidateEvaluator:
    model = tiny_model(arch)
    blocks = torch.randint(3, model.config.vocab_size, (12, 16), generator=torch.Generator().manual_seed(1))
    stats = collect_activation_stats(model, blocks, progress=False)
    return CandidateEvaluator(model, blocks, compute_importance(model, "flap", stats), batch_size=4, **kwargs)


def _plans(shape) -> list[PrunePlan]:
    dense = LayerPlan(shape.num_heads, shape.intermediate_size)
    narrow = LayerPlan(shape.num_heads - shape.group_size, shape.intermediate_size // 2)
    return [
        PrunePlan(layers=(dense, narrow, dense, dense)),  # first change at layer 1
        PrunePlan(layers=(dense, dense, LayerPlan(0, 0), narrow)),  # a removed layer after a dense prefix
        PrunePlan(layers=(dense, dense, dense, LayerPlan(0, shape.intermediate_size))),  # attention dropped
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_reuse_equals_a_full_forward(arch):
    evaluator = _evaluator(arch)
    shape = model_shape(evaluator.model.config)
    assert evaluator.boundaries == (1, 2, 3)  # the default budget holds every boundary of a tiny model
    for plan in _plans(shape):
        reused = evaluator.start(plan).run()
        assert reused.resume == first_change(plan, shape) > 0  # the forward did start past layer 0
        full = evaluator.start(plan, reuse=False).run()
        assert full.resume == 0
        assert reused.block_values("kl") == pytest.approx(full.block_values("kl"), rel=1e-5, abs=1e-7)
        assert reused.quality().ppl == pytest.approx(full.quality().ppl, rel=1e-5)


def test_prefix_reuse_with_a_trimmed_vocabulary_equals_a_full_forward():
    evaluator = _evaluator("qwen2")
    shape = model_shape(evaluator.model.config)
    plan = PrunePlan(layers=_plans(shape)[1].layers, vocab=64)
    kept = list(range(64))
    reused, full = evaluator.start(plan, kept).run(), evaluator.start(plan, kept, reuse=False).run()
    assert reused.resume == 2
    assert reused.quality().kl == pytest.approx(full.quality().kl, rel=1e-5)
    assert reused.quality().ppl == pytest.approx(full.quality().ppl, rel=1e-5)


def test_the_budget_limits_the_cached_boundaries():
    evaluator = _evaluator("llama", prefix_cache_bytes=12 * 16 * 64 * 4)  # one boundary's worth
    assert evaluator.boundaries == (2,) and len(evaluator.prefix[2]) == 3  # one tensor per batch
    dense = LayerPlan(8, 48)
    plan = PrunePlan(layers=(dense, dense, dense, LayerPlan(4, 24)))
    assert evaluator.resume_boundary(plan) == 2  # the deepest cached boundary at or before layer 3
    assert evaluator.resume_boundary(PrunePlan(layers=(dense, LayerPlan(4, 24), dense, dense))) == 0
    assert _evaluator("llama", prefix_cache_bytes=0).boundaries == ()
    assert prefix_boundaries(evaluator.model, torch.zeros(12, 16), 10**12) == (1, 2, 3)


def test_staged_scoring_equals_scoring_at_once():
    evaluator = _evaluator("mistral")
    plan = _plans(model_shape(evaluator.model.config))[0]
    staged = evaluator.start(plan).run(1)
    assert not staged.done and staged.fraction == pytest.approx(4 / 12)
    assert len(staged.block_values("kl")) == 4
    staged.run()
    at_once = evaluator.evaluate(plan)
    assert staged.done
    assert staged.quality().kl == pytest.approx(at_once.kl, rel=1e-6)
    # the per-block values average to the whole (every block has as many positions)
    assert sum(staged.block_values("kl")) / 12 == pytest.approx(at_once.kl, rel=1e-6)


def test_estimate_and_the_front_rule():
    guess = fidelity.estimate([1.0, 2.0, 3.0], total_blocks=12)
    assert guess.mean == 2.0 and guess.stderr == pytest.approx(math.sqrt(1 / 3 * (1 - 3 / 12)))
    assert fidelity.estimate([1.0, 2.0], total_blocks=2).stderr == 0.0  # every block scored: exact
    front = [[1.0, 5.0], [2.0, 3.0]]
    assert not fidelity.could_enter_front([2.5, 3.0], front)  # dominated by (2, 3)
    assert fidelity.could_enter_front([1.5, 3.0], front)  # better quality at that latency
    assert fidelity.could_enter_front([2.0, 3.0], front)  # equal points are not dominated
    assert fidelity.could_enter_front([9.0, 1.0], front) and fidelity.could_enter_front([9.0, 9.0], [])
    assert fidelity.low_fidelity_batches(8, 0.25) == 2 and fidelity.low_fidelity_batches(4, 0.1) == 1
    assert fidelity.low_fidelity_batches(1, 0.25) == 0 and fidelity.low_fidelity_batches(8, 1.0) == 0


def _kl_optimistic(margin: float):
    return lambda guess, latency: guess.optimistic(margin)


def test_paired_estimate_is_the_member_mean_plus_the_mean_difference():
    member = [1.0, 3.0, 2.0, 6.0]
    guess = fidelity.paired([1.5, 3.1], member, total_blocks=4)
    differences = [0.5, 0.1]
    assert guess.mean == pytest.approx(3.0 + 0.3) and guess.blocks == 2
    assert guess.stderr == pytest.approx(fidelity.estimate(differences, 4).stderr)
    with pytest.raises(ValueError, match="cannot pair"):
        fidelity.paired([1.0], member[:3], total_blocks=4)


def test_pairing_stops_a_candidate_the_unpaired_rule_keeps():
    """Blocks differ widely; the candidate is worse than the member by 0.2 on every block it scored. Alone its
    mean's error hides that; paired with the member's blocks it is plain."""
    member_blocks = [float(x) for x in (1, 9, 3, 7, 2, 8, 4, 6)]
    candidate = [b + 0.2 for b in member_blocks[:4]]
    mean_full = sum(member_blocks) / 8
    paired_member = fidelity.FrontMember((mean_full, 1.0), tuple(member_blocks))
    bare_member = fidelity.FrontMember((mean_full, 1.0))
    rule = _kl_optimistic(margin=2.0)
    assert not fidelity.judge(candidate, 8, [1.0], [paired_member], rule).enter
    assert fidelity.judge(candidate, 8, [1.0], [bare_member], rule).enter  # unpaired: 2 errors span the gap
    assert fidelity.judge(candidate, 8, [1.0], [[mean_full, 1.0]], rule).enter  # bare values work as before
    assert fidelity.judge(candidate, 8, [0.9], [paired_member], rule).enter  # faster: the member cannot dominate
    better = [b - 0.2 for b in member_blocks[:4]]
    assert fidelity.judge(better, 8, [1.0], [paired_member], rule).enter
    noisy = [b + d for b, d in zip(member_blocks[:4], (1.5, -1.0, 1.2, -0.9), strict=True)]  # +0.2 on average
    assert fidelity.judge(noisy, 8, [1.0], [paired_member], rule).enter  # the differences' own error keeps it


def test_tolerance_stops_a_candidate_that_could_improve_the_front_only_a_little():
    member = fidelity.FrontMember((1.0, 10.0), (1.0, 1.0, 1.0, 1.0))
    exact = lambda guess, latency: guess.mean  # noqa: E731
    slightly_better = [0.998, 0.998]  # 0.2% better quality at the same latency
    assert fidelity.judge(slightly_better, 4, [10.0], [member], exact).enter
    verdict = fidelity.judge(slightly_better, 4, [10.0], [member], exact, tolerance=0.005)
    assert not verdict.enter and verdict.estimate.mean == pytest.approx(0.998)
    assert not fidelity.judge([1.2, 1.2], 4, [9.96], [member], exact, tolerance=0.005).enter  # 0.4% faster only
    assert fidelity.judge([1.2, 1.2], 4, [9.9], [member], exact, tolerance=0.005).enter  # 1% faster: a new point
    assert fidelity.judge([0.99, 0.99], 4, [10.0], [member], exact, tolerance=0.005).enter  # 1% better


def test_pairing_compares_drafts_at_each_side_s_own_latency():
    """A draft objective depends on latency as well as on acceptance: the member's reference value is taken at
    the member's latency, the candidate's at its own."""
    objective = lambda guess, latency: latency / (1 + guess.optimistic(0.0, higher_is_better=True))  # noqa: E731
    member = fidelity.FrontMember((2.0 / 1.5, 2.0), (0.5, 0.5, 0.5, 0.5))
    assert not fidelity.judge([0.4, 0.4], 4, [3.0], [member], objective).enter  # slower and accepts less
    assert fidelity.judge([0.9, 0.9], 4, [2.5], [member], objective).enter  # slower but far better: 2.5 / 1.9


def _search_spec(calibration, **overrides) -> SearchSpec:
    body = {
        "model": str(LLAMA_DOCS),
        "calibration": str(calibration),
        "calibration_settings": {"tokens": 512, "seq_len": 16},  # 32 blocks: 4 batches, the first is a stage
        "constraints": {"latency_budget_fraction": 0.9},
        "sampler": "random",
        "n_trials": 20,
        "seed": 0,
        "efficiency": {"margin": 0.0, "informed_starts": False},
    }
    return SearchSpec.model_validate(body | overrides)


def test_early_stopped_trials_are_recorded_counted_and_never_on_the_front(tmp_path, prunesearch_home):
    calibration = tmp_path / "calib.txt"
    calibration.write_text(PYDOCS_CALIB.read_text()[:20_000])
    spec = _search_spec(calibration)
    assert "efficiency" in spec.model_dump() and "efficiency" not in SearchSpec.model_validate(
        spec.model_dump() | {"efficiency": {}}
    ).model_dump(mode="json")  # default settings stay out of stored specs
    storage = f"sqlite:///{tmp_path / 's.db'}"
    progress = run_search(spec, storage=storage, study_name="s")
    records = list_trials(storage, "s", limit=100)
    assert progress.trials_done == len(records) == spec.n_trials  # stopped trials count towards n_trials
    stopped = [r for r in records if r["metrics"].get("stopped_early")]
    finished = [r for r in records if r["metrics"].get("stopped_early") is False]
    assert stopped and finished
    for r in stopped:
        m = r["metrics"]
        assert m["fidelity"] == m["low_fidelity"] == pytest.approx(0.25) and "kl" not in m and m["kl_low"] >= 0
        assert m["kl_estimate"] > 0  # the paired estimate the sampler learns from (search/fidelity.py)
        assert not r["feasible"] and r["state"] == "complete"
    staged = [r for r in finished if "kl_low" in r["metrics"]]
    assert staged and all(r["metrics"]["fidelity"] == 1.0 and "kl" in r["metrics"] for r in staged)
    baselines = [r for r in records if r["baseline"] and r["metrics"].get("kl") is not None]
    assert baselines and all("kl_low" not in r["metrics"] for r in baselines)  # baselines are scored in full
    front = {x["trial"] for x in pareto_front(storage, "s")}
    assert front and not front & {r["trial"] for r in stopped}
    study = load_study(storage, "s")
    blocks = {t.number: t.user_attrs.get(BLOCKS_ATTR) for t in study.trials}
    assert all(len(blocks[r["trial"]]) == 32 for r in finished)  # kept for pairing (search/fidelity.py)
    assert all(blocks[r["trial"]] is None for r in stopped)
    for r in finished:
        assert sum(blocks[r["trial"]]) / 32 == pytest.approx(r["metrics"]["kl"], rel=1e-5)
    values = {t.number: t.values[0] for t in study.trials}
    assert all(values[r["trial"]] == r["metrics"]["kl_estimate"] for r in stopped)
    # the stopped trials' estimates are stored as values, yet dominate nothing on the reported front
    assert {t.number for t in front_trials(study)} == front and hypervolume(study) == progress.hypervolume


def test_low_fidelity_off_scores_every_trial_in_full(tmp_path, prunesearch_home):
    calibration = tmp_path / "calib.txt"
    calibration.write_text(PYDOCS_CALIB.read_text()[:20_000])
    spec = _search_spec(
        calibration, n_trials=6, baselines=False, efficiency={"low_fidelity": 1.0, "prefix_cache_mib": 0}
    )
    storage = f"sqlite:///{tmp_path / 's.db'}"
    run_search(spec, storage=storage, study_name="s")
    scored = [r for r in list_trials(storage, "s", limit=100) if "fidelity" in r["metrics"]]
    assert scored and all(r["metrics"]["fidelity"] == 1.0 and "kl_low" not in r["metrics"] for r in scored)
    assert all(r["metrics"]["resume_layer"] == 0 for r in scored)
