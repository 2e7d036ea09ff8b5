"""The heal stage on the bundled tiny Llama: healed scores use the proxy's definitions, candidates are healed
once and recorded on the study, a killed stage resumes with the rest, and no temporary folder is left."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from prunesearch.cli import main
from prunesearch.pruning.export import read_token_map
from prunesearch.pruning.healsettings import HealProgress
from prunesearch.pruning.modeling import load_pruned
from prunesearch.search import healstage
from prunesearch.search.callbacks import SearchCallbacks
from prunesearch.search.context import SearchContext
from prunesearch.search.engine import run_search
from prunesearch.search.fill import FILLED_FROM_ATTR
from prunesearch.search.healselect import (
    CANDIDATES_ATTR,
    baseline_rivals,
    claim_key,
    pick_candidates,
    progress_key,
    result_key,
)
from prunesearch.search.results import (
    export_trial,
    feasible_baselines,
    front_record,
    front_trials,
    heal_status,
    healed_front,
    load_study,
    trial_plan,
)
from prunesearch.search.spec import SearchSpec

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny-llama"


def _spec(**overrides) -> SearchSpec:
    body = {
        "model": str(TINY),
        "calibration": str(TINY / "calib.txt"),
        "calibration_settings": {"tokens": 512, "seq_len": 64},
        "space": {"vocab": True},
        "sampler": "random",
        "n_trials": 8,
        "heal": {"top_k": 3, "tokens": 256, "seq_len": 32, "batch": 2},
    }
    return SearchSpec.model_validate(body | overrides)


@pytest.fixture
def scratch(tmp_path, monkeypatch, prunesearch_home) -> Path:
    """Temporary folders go here, so the test sees any the stage leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_healed_scores_use_the_proxys_definitions(scratch, tmp_path, monkeypatch):
    """Scored as a materialised checkpoint, an unhealed export gets the KL and perplexity the search recorded
    for its trial (full and trimmed vocabularies), so healed and proxy scores compare."""
    # every trial scored in full and no informed starts: the same trial mix (with trimmed vocabularies) as before
    spec = _spec(heal=None, n_trials=14, efficiency={"informed_starts": False, "low_fidelity": 1.0})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    context = SearchContext(spec)
    run_search(spec, storage=storage, study_name="s", context=context)
    study = load_study(storage, "s")
    scored = [t for t in study.get_trials(deepcopy=False) if "kl" in t.user_attrs.get("metrics", {})]
    trimmed = [t for t in scored if trial_plan(study, t.number).vocab is not None]
    whole = [t for t in scored if trial_plan(study, t.number).vocab is None and t.user_attrs.get("baseline") != "dense"]
    assert trimmed and whole
    for trial in (trimmed[0], whole[0]):
        out = tmp_path / f"t{trial.number}"
        export_trial(storage, "s", trial.number, out)
        quality = context.evaluator.evaluate_model(load_pruned(out), read_token_map(out))
        assert (read_token_map(out) is None) == (trial in whole)
        assert quality.kl == pytest.approx(trial.user_attrs["metrics"]["kl"], rel=1e-4)
        assert quality.ppl == pytest.approx(trial.user_attrs["metrics"]["ppl"], rel=1e-4)
    assert "heal" not in study.user_attrs["prunesearch_spec"]  # a search without heal stores the spec as before
    assert heal_status(storage, "s") is None and healed_front(storage, "s") == []

    # a heal the calibration text cannot feed is recorded as an error, not retried, and leaves no folder
    too_big = _spec(heal={"top_k": 1, "tokens": 1 << 20, "seq_len": 8192, "batch": 128})
    record = healstage.heal_candidate(optuna.storages.RDBStorage(storage), study, SimpleNamespace(spec=too_big), 1)
    assert record["trial"] == 1 and "HealDataError" in record["error"] and "healed_kl" not in record
    assert not list(scratch.iterdir())

    # any failure of one candidate (here scores that are not finite, a full disk) is its record, not the job's
    nan = SimpleNamespace(kl=float("nan"), ppl=float("inf"))
    evaluator = SimpleNamespace(evaluate_model=lambda *a: nan)
    scorer = SimpleNamespace(spec=_spec(), evaluator=evaluator, draft_inputs=lambda token_map: None)
    record = healstage.heal_candidate(optuna.storages.RDBStorage(storage), study, scorer, whole[0].number)
    assert "not finite" in record["error"] and "healed_kl" not in record

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(healstage, "export_trial", disk_full)
    record = healstage.heal_candidate(optuna.storages.RDBStorage(storage), study, scorer, whole[0].number)
    assert record["error"] == "OSError: No space left on device"
    assert not list(scratch.iterdir())


def test_stage_heals_the_candidates_once_and_a_killed_stage_resumes(scratch, tmp_path, monkeypatch):
    spec = _spec()
    storage = f"sqlite:///{tmp_path / 's.db'}"
    context = SearchContext(spec)
    healed_calls: list[int] = []
    real = healstage.heal_candidate

    def killed_on_the_second(storage_, study, context_, number, progress=None):
        if len(healed_calls) == 1:
            raise KeyboardInterrupt  # the worker dies while healing its second candidate
        healed_calls.append(number)
        return real(storage_, study, context_, number, progress)

    monkeypatch.setattr(healstage, "heal_candidate", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, storage=storage, study_name="s", context=context)
    study = load_study(storage, "s")
    candidates = study.user_attrs[CANDIDATES_ATTR]
    front = [front_record(t) for t in front_trials(study)]
    assert candidates == pick_candidates(front, 3, "kl") and len(candidates) == 3
    fastest = min((r for r in front if r["baseline"] != "dense"), key=lambda r: r["metrics"]["latency_ms"])
    assert fastest["trial"] in candidates
    first = healed_calls[0]
    assert heal_status(storage, "s") == {"candidates": candidates, "healed": [first], "current": None, "errors": {}}
    assert not list(scratch.iterdir())  # the interrupted heal's folder is gone too

    monkeypatch.setattr(healstage, "heal_candidate", lambda *a, **k: healed_calls.append(a[3]) or real(*a, **k))
    updates: list[dict] = []  # what the service turns into `heal` events
    callbacks = SearchCallbacks(on_heal=updates.append)
    run_search(spec, storage=storage, study_name="s", context=context, callbacks=callbacks)  # the resumed worker
    outcomes = [u["trial"] for u in updates if "healed" in u]
    assert sorted(outcomes) == sorted(set(candidates) - {first})
    assert any(u.get("step") == u.get("total_steps") == 4 for u in updates)  # each heal's last step is reported
    assert sorted(healed_calls) == sorted(candidates) and healed_calls.count(first) == 1
    assert len(load_study(storage, "s").trials) == len(study.trials)  # no trial ran again
    attrs = load_study(storage, "s").user_attrs
    for number in candidates:
        record = attrs[result_key(number)]
        proxy = next(t for t in study.trials if t.number == number).user_attrs["metrics"]
        assert record["healed_kl"] >= 0 and record["healed_ppl"] > 1
        assert record["healed_kl"] != pytest.approx(proxy["kl"], rel=1e-6)  # the heal changed the weights
        assert record["steps"] == 4 and record["tokens"] == 256 and record["method"] == "full"
    healed = healed_front(storage, "s")
    assert healed and {r["trial"] for r in healed} <= set(candidates)
    best = min(candidates, key=lambda n: attrs[result_key(n)]["healed_kl"])
    assert best in {r["trial"] for r in healed}  # the best healed score is always on the healed front
    assert heal_status(storage, "s")["healed"] == candidates
    assert not list(scratch.iterdir())
    before = len(healed_calls)
    run_search(spec, storage=storage, study_name="s", context=context)
    assert len(healed_calls) == before  # everything healed: nothing runs again


def _cli(tmp_path, *extra: str, heal: bool = True) -> list[str]:
    spec = tmp_path / "job.json"
    body = {"calibration_settings": {"seq_len": 64}} | ({"heal": {"seq_len": 32, "batch": 2}} if heal else {})
    spec.write_text(json.dumps(body))
    argv = ["search", "--model", str(TINY), "--calibration", str(TINY / "calib.txt"), "--trials", "10"]
    return [*argv, "--sampler", "random", "--calibration-tokens", "512", "--spec", str(spec), *extra]


def test_cli_heals_and_writes_both_fronts(scratch, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _cli(tmp_path, "--heal-top-k", "2", "--heal-tokens", "128", "--heal-method", "lora", "--out", str(out))
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    pareto = json.loads((out / "pareto.json").read_text())
    assert set(pareto) == {"front", "healed_front"} and pareto["front"] and pareto["healed_front"]
    assert [r["trial"] for r in pareto["healed_front"]] == [r["trial"] for r in summary["healed_front"]]
    first = pareto["healed_front"][0]
    assert first["healed"]["method"] == "lora" and first["healed"]["tokens"] == 128
    assert summary["healed_front"][0]["healed_kl"] == pytest.approx(first["healed"]["healed_kl"], abs=1e-5)
    assert (out / "pareto.png").stat().st_size > 1000
    assert not list(scratch.iterdir())


def test_cli_heal_flags_are_checked(tmp_path, capsys):
    for extra, message in (
        (["--heal-tokens", "128"], "--heal-tokens, --heal-method and --heal-budgets need --heal-top-k"),
        (["--heal-top-k", "0"], "heal.top_k"),
        (["--heal-top-k", "2", "--heal-method", "sgd"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) if "sgd" in extra else contextlib.nullcontext():
            code = main(_cli(tmp_path, *extra, "--out", str(tmp_path / "x"), heal=False))
            assert code == 2
        err = capsys.readouterr().err
        assert message in err
    assert not (tmp_path / "x").exists()


def test_claims_are_leases_a_live_worker_keeps_and_a_dead_ones_is_taken_over(tmp_path, monkeypatch):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", study_name="c")
    now = [1000.0]
    monkeypatch.setattr(healstage.time, "time", lambda: now[0])
    assert healstage._claim(study, 3, "a") == {"owner": "a", "at": 1000.0, "attempts": 1}
    assert healstage._claim(study, 3, "a")["attempts"] == 1  # its own claim: the same attempt
    now[0] += healstage.CLAIM_LEASE_S - 1
    assert healstage._claim(study, 3, "b") is None  # another live worker's (renewed within the lease)
    now[0] += 2
    assert healstage._claim(study, 3, "b") == {"owner": "b", "at": now[0], "attempts": 2}  # a stopped renewing
    assert study.user_attrs[claim_key(3)]["owner"] == "b"


def test_a_worker_joining_late_leaves_a_live_claim_alone(tmp_path, monkeypatch):
    """A second worker (the first one on the job alone used to take over every claim) heals only the candidates
    no live worker holds, and the reporter's renewals keep a claim live."""
    spec = _spec()
    storage = f"sqlite:///{tmp_path / 's.db'}"
    context = SearchContext(spec)
    calls: list[int] = []
    monkeypatch.setattr(healstage, "heal_candidate", lambda *a, **k: calls.append(a[3]) or {"trial": a[3]})
    run_search(spec.model_copy(update={"heal": None}), storage=storage, study_name="s", context=context)
    study = load_study(storage, "s")
    candidates = pick_candidates([front_record(t) for t in front_trials(study)], 3, "kl")
    study.set_user_attr(CANDIDATES_ATTR, candidates)
    reporter = healstage._Reporter(study, candidates[0], SearchCallbacks(), {"owner": "other", "attempts": 1})
    reporter.renew()  # another worker is healing the first candidate
    study.set_user_attr(claim_key(candidates[1]), {"owner": "dead", "at": 0.0, "attempts": 1})
    assert healstage.run_heal_stage(study, optuna.storages.RDBStorage(storage), context, SearchCallbacks()) == [
        *candidates[1:]
    ]
    assert calls == candidates[1:] and result_key(candidates[0]) not in study.user_attrs
    assert study.user_attrs[claim_key(candidates[1])]["attempts"] == 2


def test_stage_waits_while_trials_run_elsewhere(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="r")
    study.ask()  # another worker's trial, still running
    context = SimpleNamespace(spec=_spec())
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}")
    assert healstage.run_heal_stage(study, storage, context, SearchCallbacks()) == []
    assert CANDIDATES_ATTR not in study.user_attrs  # not even the candidates are picked yet


def test_a_heal_that_keeps_killing_its_worker_is_recorded_as_an_error(tmp_path, monkeypatch):
    spec = _spec(heal={"top_k": 1, "tokens": 256, "seq_len": 32, "batch": 2})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'k.db'}", study_name="k")
    study.set_user_attr(CANDIDATES_ATTR, [5, 6])
    calls: list[int] = []
    monkeypatch.setattr(healstage, "heal_candidate", lambda *a, **k: calls.append(a[3]) or {"trial": a[3]})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'k.db'}")
    context = SimpleNamespace(spec=spec)
    dead = {"owner": "dead", "at": 0.0, "attempts": healstage.MAX_HEAL_ATTEMPTS}
    study.set_user_attr(claim_key(5), dead | {"attempts": healstage.MAX_HEAL_ATTEMPTS - 1})  # one more try
    study.set_user_attr(claim_key(6), dead)  # its workers died three times
    assert healstage.run_heal_stage(study, storage, context, SearchCallbacks(), search_over=True) == [5]
    assert calls == [5] and study.user_attrs[claim_key(5)]["attempts"] == healstage.MAX_HEAL_ATTEMPTS
    assert study.user_attrs[result_key(6)] == {"trial": 6, "error": "its worker stopped 3 times while healing it"}
    assert heal_status(storage, "k")["errors"] == {"6": "its worker stopped 3 times while healing it"}


def test_stage_waits_for_n_trials_unless_the_search_timed_out(tmp_path):
    """A trial another worker claimed but has not asked for yet is neither running nor finished: until n_trials
    have finished the front may still change, so no candidates are picked (unless the search timed out)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}", study_name="n")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'n.db'}")
    context = SimpleNamespace(spec=_spec())
    assert healstage.run_heal_stage(study, storage, context, SearchCallbacks()) == []
    assert CANDIDATES_ATTR not in study.user_attrs
    assert healstage.run_heal_stage(study, storage, context, SearchCallbacks(), search_over=True) == []
    assert study.user_attrs[CANDIDATES_ATTR] == []  # timed out with no front: nothing to heal, and it is final


def test_workers_healing_side_by_side_report_progress_apart(tmp_path, monkeypatch):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p")
    study.set_user_attr(CANDIDATES_ATTR, [2, 7])
    now = [50.0]
    monkeypatch.setattr(healstage.time, "time", lambda: now[0])
    first, second = (healstage._Reporter(study, n, SearchCallbacks(), {"owner": n}) for n in (2, 7))
    first(HealProgress(step=3, total_steps=4, loss=1.5, tokens_per_second=9.0))
    now[0] += 1
    second(HealProgress(step=1, total_steps=4, loss=2.5, tokens_per_second=9.0))
    status = heal_status(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'p.db'}"), "p")
    assert status["current"] == {"trial": 7, "step": 1, "total_steps": 4, "loss": 2.5}  # the newest
    assert study.user_attrs[progress_key(2)]["step"] == 3  # the other heal's progress is still there


def test_stage_with_budgets_heals_the_members_just_under_them(scratch, tmp_path, monkeypatch):
    budgets = [0.6, 0.9]
    heal = {"top_k": 2, "tokens": 256, "seq_len": 32, "batch": 2, "budgets": budgets}
    # eager: under a serving engine's pricing a model this tiny is all fixed cost, no plan reaches the budgets
    spec = _spec(heal=heal, workload={"engine": "eager"})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    context = SearchContext(spec)
    healed: list[int] = []

    def recorded(storage_, study, context_, number, progress=None):
        healed.append(number)
        return {"trial": number, "healed_kl": 0.1, "healed_ppl": 2.0}

    monkeypatch.setattr(healstage, "heal_candidate", recorded)
    run_search(spec, storage=storage, study_name="s", context=context)
    study = load_study(storage, "s")
    front = [front_record(t) for t in front_trials(study)]
    budgets_ms = [b * context.dense_latency for b in budgets]
    expected = pick_candidates(front, 2, "kl", budgets_ms)
    baselines = [front_record(t) for t in feasible_baselines(study)]
    rivals = baseline_rivals(baselines, budgets_ms, "kl", taken=expected)
    filled = [front_record(t) for t in feasible_baselines(study, FILLED_FROM_ATTR)]
    rivals += baseline_rivals(filled, budgets_ms, "kl", taken=expected + rivals)
    assert study.user_attrs[CANDIDATES_ATTR] == expected + rivals and sorted(healed) == sorted(expected + rivals)
    latency = {r["trial"]: r["metrics"]["latency_ms"] for r in front + baselines}
    assert expected and all(latency[t] <= max(budgets) * context.dense_latency for t in expected + rivals)
    # the strongest baseline under the loosest budget is healed, unless the front's candidates hold it already
    strongest = max(
        (r for r in baselines if r["baseline"] != "dense" and latency[r["trial"]] <= budgets_ms[-1]),
        key=lambda r: latency[r["trial"]],
    )
    assert strongest["trial"] in expected + rivals


def _finished(number: int, kl: float, latency_ms: float, **attrs) -> optuna.trial.FrozenTrial:
    metrics = {"kl": kl, "latency_ms": latency_ms}
    return optuna.trial.create_trial(
        values=[kl, latency_ms],
        user_attrs={"plan": {"layers": [], "number": number}, "metrics": metrics, "feasible": True} | attrs,
        system_attrs={"constraints": [-1.0]},
    )


def test_a_filled_plan_the_proxy_ranks_behind_its_source_is_healed_beside_it():
    """Filling keeps capacity a heal can use, so a filled plan just off the front is healed as a rival."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    trials = [
        _finished(0, 0.0, 100.0, baseline="dense"),
        _finished(1, 0.50, 60.0, baseline="shortgpt-2"),
        _finished(2, 0.30, 68.0),  # the proxy's pick under 70
        _finished(3, 0.31, 68.0, filled_from=2),  # its filled plan: a hair worse one shot, off the front
        _finished(4, 0.20, 80.0),
    ]
    for trial in trials:
        study.add_trial(trial)
    heal = {"top_k": 1, "tokens": 256, "seq_len": 32, "batch": 2, "budgets": [0.7]}
    context = SimpleNamespace(spec=_spec(heal=heal), dense_latency=100.0)
    assert 3 not in {t.number for t in front_trials(study)}
    assert healstage._candidates(study, context) == [2, 1, 3]  # the pick, ShortGPT, the filled plan
    without = context.spec.model_copy(update={"heal": context.spec.heal.model_copy(update={"rivals": False})})
    assert healstage._candidates(study, SimpleNamespace(spec=without, dense_latency=100.0)) == [2]
