"""The search engine end to end on llama-docs with a small calibration set."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState

from prunesearch.cli import main
from prunesearch.pruning.export import export_checkpoint
from prunesearch.pruning.modeling import load_pruned
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.surgery import apply_plan
from prunesearch.search.callbacks import SearchCallbacks
from prunesearch.search.context import INFEASIBLE_QUALITY, SearchContext
from prunesearch.search.engine import run_search
from prunesearch.search.evaluator import CandidateEvaluator
from prunesearch.search.parametrize import FixedParams
from prunesearch.search.results import (
    front_trials,
    hypervolume,
    hypervolume_history,
    list_trials,
    load_study,
    pareto_front,
)
from prunesearch.search.spec import SearchSpec

from ..factories import LLAMA_DOCS, PYDOCS_CALIB


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(PYDOCS_CALIB.read_text()[:20_000])
    return path


def _spec(calibration, **overrides) -> SearchSpec:
    body = {
        "model": str(LLAMA_DOCS),
        "calibration": str(calibration),
        "calibration_settings": {"tokens": 512, "seq_len": 64},
        "constraints": {"latency_budget_fraction": 0.8},
        # eager: a model this small is all fixed cost under a CUDA-graph engine, where no plan reaches 0.8
        "workload": {"engine": "eager"},
        "sampler": "random",
        "n_trials": 14,
        "seed": 0,
    }
    return SearchSpec.model_validate(body | overrides)


@pytest.fixture(scope="module")
def context(calibration, tmp_path_factory):
    import os

    os.environ["PRUNESEARCH_HOME"] = str(tmp_path_factory.mktemp("home"))
    return SearchContext(_spec(calibration, space={"vocab": True}))


def test_dense_plan_has_zero_kl_and_the_dense_latency(context):
    assert context.evaluator.evaluate(PrunePlan.dense(context.shape)).kl == pytest.approx(0.0, abs=1e-5)
    outcome = context.evaluate(FixedParams({}))
    assert outcome.metrics["latency_fraction"] == pytest.approx(1.0)
    assert not outcome.feasible  # over the 0.8 latency budget: infeasible
    assert outcome.constraints["latency"] > 0


def test_over_budget_plans_skip_the_proxy(context, monkeypatch):
    calls = []
    monkeypatch.setattr(context.evaluator, "start", lambda *a, **k: calls.append(a))
    outcome = context.evaluate(FixedParams({"ffn_cuts_0": 1}))
    assert not outcome.feasible and not calls
    assert outcome.values[0] == INFEASIBLE_QUALITY and "kl" not in outcome.metrics


def test_candidate_kl_equals_the_exported_checkpoints_kl(context, tmp_path):
    """What the search scores is what export writes: recompute KL from the reloaded checkpoint."""
    plan = PrunePlan(
        layers=(
            LayerPlan(8, 688),
            LayerPlan(4, 256),
            LayerPlan(0, 512),
            LayerPlan(0, 0),
            LayerPlan(8, 0),
            LayerPlan(6, 600),
        )
    )
    scored = context.evaluator.evaluate(plan)
    export_checkpoint(apply_plan(context.model, plan, context.scores), None, plan, tmp_path, {})
    exported = load_pruned(tmp_path)
    blocks = context.evaluator.blocks
    with torch.no_grad():
        log_p = F.log_softmax(context.model(blocks).logits[:, :-1], -1)
        log_q = F.log_softmax(exported(blocks).logits[:, :-1], -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert scored.kl == pytest.approx(kl, rel=1e-4)


def test_teacher_cache_does_not_change_the_scores(context):
    plan = PrunePlan(layers=tuple(LayerPlan(4, 344) for _ in range(6)), vocab=2048)
    kept = context.kept_tokens(2048)
    uncached = CandidateEvaluator(context.model, context.evaluator.blocks, context.scores, teacher_cache_bytes=0)
    assert uncached.teacher_cache is None and context.evaluator.teacher_cache is not None
    expected = context.evaluator.evaluate(plan, kept)
    got = uncached.evaluate(plan, kept)
    assert got.kl == pytest.approx(expected.kl, rel=1e-5) and got.ppl == pytest.approx(expected.ppl, rel=1e-5)


def test_trimmed_scores_match_their_definition(context):
    """The one-log-sum-exp formulas equal KL(p_K || q) - log p(K) and the kept-target NLL computed directly."""
    plan = PrunePlan(layers=tuple(LayerPlan(4, 344) for _ in range(6)), vocab=1024)
    kept = torch.tensor(context.kept_tokens(1024))
    scored = context.evaluator.evaluate(plan, kept.tolist())
    blocks = context.evaluator.blocks
    candidate = apply_plan(context.model, PrunePlan(layers=plan.layers), context.scores)
    with torch.no_grad():
        log_p = F.log_softmax(context.model(blocks).logits[:, :-1], -1)[..., kept]
        log_q = F.log_softmax(candidate(blocks).logits[:, :-1][..., kept], -1)
    log_mass = torch.logsumexp(log_p, -1, keepdim=True)
    log_p_k = log_p - log_mass
    kl = (log_p_k.exp() * (log_p_k - log_q)).sum(-1) - log_mass.squeeze(-1)
    targets = blocks[:, 1:]
    in_kept = torch.isin(targets, kept)
    new_id = torch.full((context.shape.vocab_size,), -1, dtype=torch.long)
    new_id[kept] = torch.arange(len(kept))
    nll = -log_q.gather(-1, new_id[targets].clamp_min(0).unsqueeze(-1)).squeeze(-1)[in_kept]
    assert scored.kl == pytest.approx(float(kl.mean()), rel=1e-4)
    assert scored.ppl == pytest.approx(float(nll.mean().exp()), rel=1e-4)


def test_trimmed_vocabulary_kl_charges_the_lost_mass(context):
    plan = PrunePlan.dense(context.shape)
    full = context.evaluator.evaluate(plan)
    kept = context.kept_tokens(1024)
    trimmed = context.evaluator.evaluate(PrunePlan(layers=plan.layers, vocab=1024), kept)
    assert full.kl == pytest.approx(0.0, abs=1e-5)
    assert trimmed.kl > 0.01  # the dense mass on dropped tokens is charged
    assert 0.9 < context.coverage(kept) < 1.0


def test_search_runs_exactly_n_trials_baselines_first(calibration, tmp_path, prunesearch_home):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration)
    seen = []
    progress = run_search(spec, storage=storage, study_name="s", callbacks=SearchCallbacks(on_trial=seen.append))
    assert progress.trials_done == 14 and len(seen) == 14
    trials = list_trials(storage, "s", limit=100)
    assert len(trials) == 14
    assert trials[0]["baseline"] == "dense"
    assert all(t["state"] == "complete" for t in trials)
    # feasible trials were scored, infeasible ones were not
    for t in trials:
        assert ("kl" in t["metrics"]) == t["feasible"]
        if t["feasible"]:
            assert t["metrics"]["latency_fraction"] <= 0.8 + 1e-9
    front = pareto_front(storage, "s")
    assert front and all(x["metrics"]["latency_fraction"] <= 0.8 + 1e-9 for x in front)
    # the front is never worse than a feasible baseline: each is weakly dominated by a front member
    for t in trials:
        if t["baseline"] and t["feasible"]:
            assert any(
                f["metrics"]["kl"] <= t["metrics"]["kl"] + 1e-12
                and f["metrics"]["latency_ms"] <= t["metrics"]["latency_ms"] + 1e-12
                for f in front
            )
    study = load_study(storage, "s")
    assert {t.number for t in front_trials(study)} == {t.number for t in study.best_trials}  # Optuna's own front
    assert hypervolume(study) > 0
    history = hypervolume_history(study, every=5)
    assert [h["trials"] for h in history] == [5, 10, 14]
    values = [h["hypervolume"] or 0.0 for h in history]
    assert values == sorted(values) and values[-1] == pytest.approx(hypervolume(study))
    # a second call on the same study adds nothing: the quota is spent
    assert run_search(spec, storage=storage, study_name="s").trials_done == 14


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_samplers_are_seeded_and_reproducible(calibration, tmp_path, sampler, prunesearch_home):
    spec = _spec(calibration, sampler=sampler, n_trials=13, baselines=False)
    plans = []
    for name in ("a", "b"):
        run_search(spec, storage=f"sqlite:///{tmp_path / name}.db", study_name=name)
        plans.append([t["plan"] for t in list_trials(f"sqlite:///{tmp_path / name}.db", name, limit=100)])
    assert plans[0] == plans[1]
    assert len(plans[0]) == 13
    # without baselines the study still records the hypervolume's unit (the dense latency)
    study = load_study(f"sqlite:///{tmp_path / 'a'}.db", "a")
    assert study.user_attrs["dense_latency_ms"] > 0 and "baselines" not in study.user_attrs


def test_cli_search_then_export(calibration, tmp_path, capsys, prunesearch_home):
    out = tmp_path / "run"
    own_calibration = tmp_path / "calib.txt"  # removed below: an export must then fail as a user error
    shutil.copyfile(calibration, own_calibration)
    code = main(
        [
            "search",
            "--model",
            str(LLAMA_DOCS),
            "--calibration",
            str(own_calibration),
            "--trials",
            "10",
            "--sampler",
            "random",
            "--engine",
            "eager",
            "--latency-budget",
            "0.8",
            "--calibration-tokens",
            "512",
            "--out",
            str(out),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out / "pareto.json").is_file() and (out / "pareto.png").stat().st_size > 1000
    history = json.loads((out / "convergence.json").read_text())
    assert [h["trials"] for h in history] == [10]
    assert history[-1]["hypervolume"] == summary["progress"]["hypervolume"]
    front = json.loads((out / "pareto.json").read_text())
    assert [x["trial"] for x in front] == [x["trial"] for x in summary["front"]]
    chosen = front[0]["trial"]
    code = main(
        [
            "export",
            "--storage",
            summary["storage"],
            "--study",
            summary["study"],
            "--trial",
            str(chosen),
            "--out",
            str(tmp_path / "ckpt"),
        ]
    )
    exported = json.loads(capsys.readouterr().out)
    assert code == 0 and exported["trial"] == chosen
    assert json.loads((tmp_path / "ckpt" / "prune_plan.json").read_text()) == front[0]["plan"]
    assert load_pruned(tmp_path / "ckpt").generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3).shape == (
        1,
        6,
    )

    code = main(
        [
            "export",
            "--storage",
            summary["storage"],
            "--study",
            summary["study"],
            "--trial",
            "999",
            "--out",
            str(tmp_path / "none"),
        ]
    )
    assert code == 2 and "trial 999 is not a finished trial" in capsys.readouterr().err

    local = ["export", "--storage", summary["storage"], "--study", summary["study"], "--trial", str(chosen)]
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    code = main([*local, "--out", str(in_the_way)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be used as a directory" in err and "Traceback" not in err
    own_calibration.unlink()
    code = main([*local, "--out", str(tmp_path / "moved")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # stderr may also hold transformers' loading bars
    assert code == 2 and "Traceback" not in err and last.startswith("prunesearch export: error:")
    assert "calibration file not found" in last


def test_cli_export_of_an_unknown_study_exits_2(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    code = main(["export", "--storage", storage, "--study", "nope", "--trial", "0", "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "no study named 'nope'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["search", "export"])
def test_cli_storage_must_be_a_database_url(command, calibration, tmp_path, capsys):
    if command == "search":
        argv = ["search", "--model", str(LLAMA_DOCS), "--calibration", str(calibration), "--out", str(tmp_path)]
    else:
        argv = ["export", "--study", "s", "--trial", "0", "--out", str(tmp_path / "ckpt")]
    code = main([*argv, "--storage", "not-a-url"])
    err = capsys.readouterr().err
    assert code == 2 and "--storage 'not-a-url' is not a database URL" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ckpt").exists()


def test_cli_search_rejects_a_bad_budget(calibration, tmp_path, capsys):
    code = main(
        [
            "search",
            "--model",
            str(LLAMA_DOCS),
            "--calibration",
            str(calibration),
            "--latency-budget",
            "1.5",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2 and "latency_budget_fraction" in capsys.readouterr().err


def test_cli_search_rejects_a_workload_without_generated_tokens(calibration, tmp_path, capsys):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"workload": {"prompt_tokens": 64, "generate_tokens": 0}}))
    argv = ["search", "--model", str(LLAMA_DOCS), "--calibration", str(calibration), "--spec", str(spec)]
    code = main([*argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "workload.generate_tokens: must be at least 1 (got 0)" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # refused before any model or study was touched


def test_tpe_lies_about_running_trials_only_when_workers_share_the_study(calibration):
    from prunesearch.search.engine import make_sampler

    spec = _spec(calibration, sampler="tpe")
    assert make_sampler(spec, shared=True)._constant_liar
    assert not make_sampler(spec)._constant_liar


def test_a_lone_search_fails_trials_left_running_and_still_runs_n_trials(calibration, tmp_path, prunesearch_home):
    from prunesearch.search.engine import open_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration, n_trials=12, baselines=False)
    open_study(spec, storage, "s").ask()  # a search killed mid-trial
    progress = run_search(spec, storage=storage, study_name="s")
    trials = load_study(storage, "s").get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["abandoned"]
    assert progress.trials_done == 12 and len(trials) == 13


def test_an_interrupted_trial_is_failed_not_left_running(calibration, tmp_path, prunesearch_home, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration, n_trials=3, baselines=False)
    context = SearchContext(spec)

    def interrupt(trial, front=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(context, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, storage=storage, study_name="s", context=context)
    (trial,) = load_study(storage, "s").get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL and trial.user_attrs["abandoned"]


def test_an_abandoned_baseline_is_enqueued_again(calibration, tmp_path, prunesearch_home):
    from prunesearch.search.engine import _prepare, open_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration, n_trials=14)
    context = SearchContext(spec)
    study = open_study(spec, storage, "s")
    _prepare(study, context)
    assert study.ask().user_attrs["baseline"] == "dense"  # then its worker died
    run_search(spec, storage=storage, study_name="s", context=context)
    dense = [t for t in load_study(storage, "s").get_trials(deepcopy=False) if t.user_attrs.get("baseline") == "dense"]
    assert [(t.state, bool(t.user_attrs.get("abandoned"))) for t in dense] == [
        (TrialState.FAIL, True),
        (TrialState.COMPLETE, False),
    ]


def test_shared_searches_leave_running_trials_alone(calibration, tmp_path, prunesearch_home):
    from prunesearch.search.engine import open_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration, n_trials=3, baselines=False)
    running = open_study(spec, storage, "s").ask()  # another process's trial, still running
    run_search(spec, storage=storage, study_name="s", shared=True)
    assert load_study(storage, "s").get_trials(deepcopy=False)[running.number].state == TrialState.RUNNING


def test_a_trial_failed_elsewhere_mid_evaluation_is_dropped_not_fatal(calibration, tmp_path, prunesearch_home):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration, n_trials=3, baselines=False)
    context = SearchContext(spec)
    evaluate = context.evaluate

    def failed_by_another_worker_first(trial, front=None):
        if trial.number == 0:
            load_study(storage, "s").tell(0, state=TrialState.FAIL)
        return evaluate(trial, front)  # its first suggest now raises UpdateFinishedTrialError

    context.evaluate = failed_by_another_worker_first
    run_search(spec, storage=storage, study_name="s", context=context)
    trials = load_study(storage, "s").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "plan" not in trials[0].user_attrs
