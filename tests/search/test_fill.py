"""Filling a budget (search/fill.py): the pure greedy, and the search's last trials on llama-docs."""

from __future__ import annotations

import contextlib
import json

import pytest

from prunesearch.cli import main
from prunesearch.search.engine import FILLS_ATTR, run_search
from prunesearch.search.fill import FILLED_FROM_ATTR, fill, restoring_moves
from prunesearch.search.results import list_trials, load_study
from prunesearch.search.spec import SearchSpec

from ..factories import LLAMA_DOCS, PYDOCS_CALIB

DENSE = {"cuts_a": 0, "cuts_b": 0, "keep": True}
# cuts of a cost 1 ms and 10 parameters each; cuts of b cost 0.01 ms and 5 each; dropping `keep` saves 20 ms, 100
WEIGHTS = {"cuts_a": (1.0, 10.0), "cuts_b": (0.01, 5.0)}


def toy_price(params):
    latency, size = 100.0, 1000.0
    for name, (ms, count) in WEIGHTS.items():
        latency, size = latency - ms * params[name], size - count * params[name]
    if not params["keep"]:
        latency, size = latency - 20.0, size - 100.0
    return latency, size


def test_moves_go_towards_dense_and_halfway_for_integers():
    moves = restoring_moves({"cuts_a": 4, "cuts_b": 1, "keep": False, "ratio": 0.5}, DENSE | {"ratio": 1.0})
    assert sorted(moves, key=str) == sorted(
        [("cuts_a", 0), ("cuts_a", 2), ("cuts_b", 0), ("keep", True), ("ratio", 1.0)], key=str
    )
    assert restoring_moves(DENSE, DENSE) == []


def test_fill_takes_back_the_cheapest_cuts_first_and_stays_under_the_limit():
    start = {"cuts_a": 4, "cuts_b": 6, "keep": False}
    latency, _ = toy_price(start)  # 100 - 4 - 0.06 - 20 = 75.94
    filled = fill(start, DENSE, toy_price, limit_ms=latency + 2.5)
    # b's cuts are nearly free: all taken back; then two of a's, one ms each; `keep` (20 ms) does not fit
    assert filled.params == {"cuts_a": 2, "cuts_b": 0, "keep": False}
    assert filled.latency_ms <= latency + 2.5
    assert (filled.latency_ms, filled.size) == toy_price(filled.params)
    assert filled.moves == 2  # b to 0, then a halfway (4 -> 2)


def test_fill_with_room_for_everything_returns_the_dense_values():
    filled = fill({"cuts_a": 3, "cuts_b": 3, "keep": False}, DENSE, toy_price, limit_ms=100.0)
    assert filled.params == DENSE


def test_fill_refuses_a_plan_over_the_limit_or_breaking_a_constraint():
    start = {"cuts_a": 1, "cuts_b": 0, "keep": True}
    assert fill(start, DENSE, toy_price, limit_ms=90.0) is None
    assert fill(start, DENSE, lambda params: None, limit_ms=1e9) is None


def test_fill_skips_moves_that_break_a_constraint():
    def capped(params):  # `keep` back on breaks a memory constraint
        return None if params["keep"] else toy_price(params)

    filled = fill({"cuts_a": 1, "cuts_b": 0, "keep": False}, DENSE, capped, limit_ms=100.0)
    assert filled.params == {"cuts_a": 0, "cuts_b": 0, "keep": False}


def _spec(calibration, **overrides) -> SearchSpec:
    body = {
        "model": str(LLAMA_DOCS),
        "calibration": str(calibration),
        "calibration_settings": {"tokens": 512, "seq_len": 64},
        "workload": {"engine": "eager"},
        "sampler": "random",
        "n_trials": 16,
        "seed": 0,
        "budgets": [0.7, 0.85],
    }
    return SearchSpec.model_validate(body | overrides)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(PYDOCS_CALIB.read_text()[:20_000])
    return path


def test_fill_budgets_come_from_budgets_the_constraint_and_heal():
    base = {"model": "m", "calibration": "c"}
    assert SearchSpec(**base).fill_budgets_ms(100.0) == []
    assert "budgets" not in SearchSpec(**base).model_dump()
    assert "efficiency" not in SearchSpec(**base).model_dump()  # the default fill dumps as before
    spec = SearchSpec(
        **base,
        budgets=[0.9, 0.5],
        constraints={"latency_budget_fraction": 0.8},
        heal={"top_k": 2, "tokens": 4096, "seq_len": 64, "batch": 2, "budgets": [0.6]},
    )
    assert spec.fill_budgets_ms(100.0) == pytest.approx([50.0, 60.0, 80.0])  # 0.9 is over the constraint
    assert SearchSpec(**base, budgets=[0.5], efficiency={"fill": False}).fill_budgets_ms(100.0) == []
    speculative = {"speculative": {"lookahead": 2}}
    assert SearchSpec(**base, budgets=[0.5], objectives=speculative).fill_budgets_ms(100.0) == []


def test_search_spends_its_last_trials_on_filled_plans(calibration, tmp_path, prunesearch_home):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(calibration)
    assert run_search(spec, storage=storage, study_name="s").trials_done == 16  # fills count towards n_trials
    study = load_study(storage, "s")
    fills = study.user_attrs[FILLS_ATTR]
    assert fills, "the random search leaves cuts that a budget pays for"
    trials = {t["trial"]: t for t in list_trials(storage, "s", limit=100)}
    dense_ms = study.user_attrs["dense_latency_ms"]
    by_number = {t.number: t for t in study.get_trials()}
    for record in fills:
        filled = next(t for t in by_number.values() if t.user_attrs.get(FILLED_FROM_ATTR) == record["from"])
        source = trials[record["from"]]
        assert filled.number >= 16 - len(spec.budgets)  # among the last trials
        metrics = trials[filled.number]["metrics"]
        assert metrics[FILLED_FROM_ATTR] == record["from"]
        assert metrics["fidelity"] == 1.0  # scored in full
        assert metrics["latency_ms"] <= record["budget_ms"] + 1e-9
        assert any(record["budget_ms"] == pytest.approx(share * dense_ms) for share in spec.budgets)
        assert metrics["params"] > source["metrics"]["params"]
        # every layer of the filled plan is at least as wide as the source's
        layers = zip(trials[filled.number]["plan"]["layers"], source["plan"]["layers"], strict=True)
        assert all(after["heads"] >= before["heads"] and after["ffn"] >= before["ffn"] for after, before in layers)


def test_fill_off_leaves_the_sampler_every_trial(calibration, tmp_path, prunesearch_home):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(_spec(calibration, efficiency={"fill": False}), storage=storage, study_name="s")
    study = load_study(storage, "s")
    assert FILLS_ATTR not in study.user_attrs
    assert not any(FILLED_FROM_ATTR in t.user_attrs for t in study.get_trials())


@pytest.mark.parametrize(("budgets", "message"), [("0.5,1.5", "budgets.1"), ("0.5,x", "comma-separated numbers")])
def test_cli_search_refuses_bad_budgets(calibration, tmp_path, capsys, budgets, message):
    argv = ["search", "--model", str(LLAMA_DOCS), "--calibration", str(calibration), "--budgets", budgets]
    with contextlib.suppress(SystemExit):  # argparse's own refusal exits 2 itself
        assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_search_fills_the_budgets_it_is_given(calibration, tmp_path, prunesearch_home):
    argv = ["search", "--model", str(LLAMA_DOCS), "--calibration", str(calibration), "--calibration-tokens", "512"]
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"workload": {"engine": "eager"}, "calibration_settings": {"seq_len": 64}}))
    argv += ["--spec", str(spec), "--sampler", "random", "--trials", "16", "--budgets", "0.7,0.85"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    study = load_study(f"sqlite:///{tmp_path / 'run' / 'study.db'}", "run")
    assert SearchSpec.model_validate(study.user_attrs["prunesearch_spec"]).budgets == [0.7, 0.85]
    assert study.user_attrs[FILLS_ATTR]
