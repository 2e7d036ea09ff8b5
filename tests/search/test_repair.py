"""`repair: refit`: candidates scored after the training-free repair, cross-fitted, and exported with it."""

from __future__ import annotations

import pydantic
import pytest
import torch
import torch.nn.functional as F

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.modeling import load_pruned
from prunesearch.pruning.modules import decoder, lm_head
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.refit import MapStatistics
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.pruning.surgery import apply_plan
from prunesearch.search.context import SearchContext
from prunesearch.search.engine import run_search
from prunesearch.search.evaluator import CandidateEvaluator
from prunesearch.search.results import export_trial, list_trials, pareto_front
from prunesearch.search.spec import SearchSpec

from ..factories import ARCHS, LLAMA_DOCS, PYDOCS_CALIB, tiny_model


def _evaluator(arch: str, refit: bool) -> CandidateEvaluator:
    model = tiny_model(arch)
    blocks = torch.randint(3, model.config.vocab_size, (12, 16), generator=torch.Generator().manual_seed(1))
    scores = compute_importance(model, "flap", collect_activation_stats(model, blocks, progress=False))
    return CandidateEvaluator(model, blocks, scores, batch_size=4, refit=refit)


def _cut(config) -> PrunePlan:
    full = LayerPlan(config.num_attention_heads, config.intermediate_size)
    return PrunePlan(layers=(full, LayerPlan(0, 0), LayerPlan(0, config.intermediate_size // 2), full))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_dense_plan_scores_zero_after_a_refit(arch):
    evaluator = _evaluator(arch, refit=True)
    dense = PrunePlan.dense(model_shape(evaluator.model.config))
    assert evaluator.evaluate(dense).kl == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_refit_scores_match_their_definition(arch):
    """KL(p || q) with q from the candidate's hidden states mapped by a map fitted on the other batch parity."""
    evaluator = _evaluator(arch, refit=True)
    plan = _cut(evaluator.model.config)
    candidate = apply_plan(evaluator.model, plan, evaluator.scores)
    batches = evaluator.batches()
    hidden = [decoder(candidate)(input_ids=b).last_hidden_state[:, :-1] for b in batches]
    dense = [decoder(evaluator.model)(input_ids=b).last_hidden_state[:, :-1] for b in batches]
    halves = [MapStatistics(evaluator.model.config.hidden_size) for _ in range(2)]
    for index, (h, d) in enumerate(zip(hidden, dense, strict=True)):
        halves[index % 2].add(h, d)
    maps = [halves[1].solve(), halves[0].solve()]
    head = lm_head(evaluator.model)
    kls = []
    for index, (h, d) in enumerate(zip(hidden, dense, strict=True)):
        log_p, log_q = F.log_softmax(head(d), -1), F.log_softmax(head(h @ maps[index % 2]), -1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1).flatten())
    expected = float(torch.cat(kls).mean())
    scoring = evaluator.start(plan).run()
    assert scoring.quality().kl == pytest.approx(expected, rel=1e-4)
    plain = _evaluator(arch, refit=False).evaluate(plan).kl
    assert abs(plain - expected) > 1e-3  # the map changed the score: not the unrepaired KL


def test_a_refit_scoring_read_part_way_fits_on_what_it_scored():
    evaluator = _evaluator("llama", refit=True)
    plan = _cut(evaluator.model.config)
    staged = evaluator.start(plan).run(1)
    assert staged.fraction == pytest.approx(4 / 12)
    one_batch = staged.quality().kl  # one batch: no batch of the other parity, so the identity map
    assert one_batch == pytest.approx(_evaluator("llama", refit=False).start(plan).run(1).quality().kl, rel=1e-5)
    assert staged.run().quality().kl == pytest.approx(evaluator.evaluate(plan).kl, rel=1e-6)


def test_the_spec_keeps_repair_out_of_older_dumps_and_off_drafts():
    body = {"model": "m", "calibration": "c"}
    assert "repair" not in SearchSpec.model_validate(body).model_dump(mode="json")
    assert SearchSpec.model_validate(body | {"repair": "refit"}).model_dump(mode="json")["repair"] == "refit"
    with pytest.raises(pydantic.ValidationError, match="repair"):
        SearchSpec.model_validate(body | {"repair": "refit", "objectives": {"speculative": {}}})
    with pytest.raises(pydantic.ValidationError):
        SearchSpec.model_validate(body | {"repair": "retrain"})


def test_a_refit_search_scores_in_full_and_exports_what_it_scored(tmp_path, prunesearch_home):
    calibration = tmp_path / "calib.txt"
    calibration.write_text(PYDOCS_CALIB.read_text()[:20_000])
    body = {
        "model": str(LLAMA_DOCS),
        "calibration": str(calibration),
        "calibration_settings": {"tokens": 2048, "seq_len": 64},
        "constraints": {"latency_budget_fraction": 0.8},
        "workload": {"engine": "eager"},
        "sampler": "random",
        "n_trials": 10,
        "seed": 0,
        "repair": "refit",
    }
    spec = SearchSpec.model_validate(body)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    run_search(spec, storage=storage, study_name="s")
    scored = [r for r in list_trials(storage, "s", limit=100) if "kl" in r["metrics"]]
    assert scored and all(r["metrics"]["fidelity"] == 1.0 and "kl_low" not in r["metrics"] for r in scored)
    member = max(pareto_front(storage, "s"), key=lambda x: x["metrics"]["kl"])  # the deepest cut on the front
    summary = export_trial(storage, "s", member["trial"], tmp_path / "export")
    assert summary["repair"] == "refit"
    plain = SearchSpec.model_validate(body | {"repair": "none"})
    context = SearchContext(plain)
    exported = context.evaluator.evaluate_model(load_pruned(tmp_path / "export"))
    unrepaired = context.evaluator.evaluate(PrunePlan.from_dict(member["plan"]))
    # fitted on all the blocks it is scored on, the export does at least as well as the cross-fitted score, and
    # clearly better than the same plan without the map
    assert exported.kl <= member["metrics"]["kl"] * 1.02
    assert exported.kl < 0.9 * unrepaired.kl
