"""The draft search end to end on llama-docs (small calibration): trial metrics, pareto.json, the CLI's errors,
and the space a draft may take (down to one layer)."""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from prunesearch.cli import main
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.speculative import MAX_LOOKAHEAD
from prunesearch.search.context import SearchContext
from prunesearch.search.draftjob import DRAFT_SPACES, draft_min_keep_layers, draft_spec, run_draft_search
from prunesearch.search.engine import objective_names
from prunesearch.search.parametrize import FixedParams, depth_violation, resolve
from prunesearch.search.results import load_study
from prunesearch.search.spec import SearchSpace, SearchSpec

from ..factories import LLAMA_DOCS, PYDOCS_CALIB

# small and eager: a model this small is all fixed cost under a CUDA-graph engine
BASE = {"calibration_settings": {"tokens": 512, "seq_len": 64}, "workload": {"engine": "eager"}, "sampler": "random"}
POINT_KEYS = {"trial", "plan", "acceptance", "lookahead", "speedup", "draft_ms", "coverage", "target_ms"}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(PYDOCS_CALIB.read_text()[:20_000])
    return path


@pytest.fixture(scope="module")
def context(calibration, tmp_path_factory):
    import os

    os.environ["PRUNESEARCH_HOME"] = str(tmp_path_factory.mktemp("home"))
    return SearchContext(draft_spec(LLAMA_DOCS, calibration, lookahead=3, space="joint", base=BASE))


def test_the_dense_model_as_its_own_draft(context):
    outcome = context.evaluate(FixedParams({}))
    metrics, pricing = outcome.metrics, context.draft
    assert outcome.feasible and metrics["acceptance"] == 1.0 and metrics["lookahead"] == 3
    assert metrics["draft_ms"] == pytest.approx(metrics["target_ms"]) and metrics["draft_cost"] == pytest.approx(1.0)
    v = pricing.verify_costs[2]
    assert metrics["verify_cost"] == v and v >= 1.0 and pricing.verify_priced
    assert metrics["speedup"] == pytest.approx(4 / (3 * 1.0 + v))
    assert outcome.values == pytest.approx([(3 + v) / 4, metrics["target_ms"]])
    assert context.dense_latency == pytest.approx(pricing.target_ms)


def test_a_one_layer_draft_is_in_the_space(context):
    layers = context.shape.num_layers
    assert context.knobs.max_removed_sublayers == layers - 1
    one = {f"keep_layer_{i}": i == 0 for i in range(layers)}
    outcome = context.evaluate(FixedParams(one))
    assert outcome.feasible and sum(not layer.removed for layer in outcome.plan.layers) == 1
    assert outcome.metrics["draft_cost"] < 0.5 and 0.0 < outcome.metrics["acceptance"] < 1.0
    no_layer = context.evaluate(FixedParams(dict.fromkeys(one, False)))
    assert not no_layer.feasible and no_layer.metrics == {"rejected": "depth"}


@pytest.mark.parametrize("layers", [1, 2, 6, 7, 32, 80, 126])
def test_draft_min_keep_allows_a_single_layer(layers):
    shape = model_shape(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers}
        | {"num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256}
    )
    space = SearchSpace(depth="layers", min_keep={"layers": draft_min_keep_layers(layers)})
    knobs = resolve(shape, space)
    assert knobs.max_removed_sublayers == layers - 1
    dense = LayerPlan(shape.num_heads, shape.intermediate_size)
    one = PrunePlan(layers=(dense, *[LayerPlan(0, 0)] * (layers - 1)))
    assert depth_violation(one, knobs) <= 0


def test_vocabulary_coverage_and_memory_constraints(context):
    small = context.evaluate(FixedParams({"vocab_cuts": 120}))  # 512 of 8192 tokens kept
    coverage = small.metrics["vocab_coverage"]
    assert 0 < coverage < 1 and small.metrics["coverage"] == coverage
    assert small.constraints["draft_memory"] == -1.0


def test_draft_search_writes_its_front(calibration, tmp_path, prunesearch_home):
    spec = draft_spec(LLAMA_DOCS, calibration, trials=14, min_coverage=0.9, max_draft_mib=40.0, base=BASE)
    points = run_draft_search(spec, tmp_path / "out")
    stored = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert stored == points and points
    for point in points:
        assert point.keys() >= POINT_KEYS
        assert point["coverage"] >= 0.9 and point["draft_mib"] <= 40.0
        assert 1 <= point["lookahead"] <= MAX_LOOKAHEAD and 0.0 <= point["acceptance"] <= 1.0
        c, g, a = point["draft_ms"] / point["target_ms"], point["lookahead"], point["acceptance"]
        expected = (1 - a ** (g + 1)) / (1 - a) if a < 1 else g + 1
        assert point["speedup"] == pytest.approx(expected / (g * c + point["verify_cost"]))
    assert [p["speedup"] for p in points] == sorted((p["speedup"] for p in points), reverse=True)
    study = load_study(f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}", "out")
    assert study.metric_names == ["inverse_speedup", "draft_ms"]
    done = [t for t in study.trials if t.values is not None and "acceptance" in t.user_attrs["metrics"]]
    started = [t for t in study.trials if t.state != TrialState.WAITING]  # enqueued starts left over are not trials
    assert len(started) == 14 and done
    keys = {"acceptance", "lookahead", "speedup", "draft_ms", "target_ms", "coverage", "verify_cost"}
    assert all(keys <= t.user_attrs["metrics"].keys() for t in done)


def test_pareto_goal_is_acceptance_against_draft_cost(calibration):
    spec = draft_spec(LLAMA_DOCS, calibration, goal="pareto", space="depth", base=BASE)
    assert objective_names(spec) == ["rejection", "draft_ms"]
    assert spec.space.vocab is False and spec.space.heads is False and spec.space.depth == "layers"


def test_spaces_are_restricted_as_named(calibration):
    for name, knobs in DRAFT_SPACES.items():
        space = draft_spec(LLAMA_DOCS, calibration, space=name).space
        assert {k: getattr(space, k) for k in knobs} == knobs


def test_specs_without_drafts_are_unchanged(calibration):
    spec = SearchSpec.model_validate({"model": str(LLAMA_DOCS), "calibration": str(calibration)})
    assert objective_names(spec) == ["kl", "latency_ms"]
    assert "speculative" not in spec.model_dump(mode="json")["objectives"]


def test_cli_draft_writes_pareto_json(calibration, tmp_path, capsys, prunesearch_home):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(BASE))
    argv = ["draft", "--target", str(LLAMA_DOCS), "--calibration", str(calibration), "--trials", "3"]
    argv += ["--space", "vocab", "--lookahead", "2", "--temperature", "1.0", "--spec", str(spec)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    points = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert printed["best"]["trial"] == points[0]["trial"] and all(p["lookahead"] == 2 for p in points)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lookahead", "9"], "argument --lookahead: expected 1-8 or 'search', got 9"),
        (["--lookahead", "many"], "argument --lookahead: expected 1-8 or 'search', got 'many'"),
        (["--temperature", "-1"], "temperature"),
        (["--min-coverage", "1.5"], "vocab_coverage"),
        (["--max-draft-mib", "0"], "max_draft_mib"),
        (["--space", "all"], "argument --space: invalid choice"),
        (["--target", "/nonexistent/model"], "target directory /nonexistent/model does not exist"),
        (["--calibration", "/nonexistent.txt"], "calibration file /nonexistent.txt does not exist"),
    ],
)
def test_cli_draft_bad_input_exits_2_with_one_line(flags, message, calibration, tmp_path, capsys):
    argv = ["draft", "--target", str(LLAMA_DOCS), "--calibration", str(calibration), "--out", str(tmp_path / "o")]
    try:
        code = main([*argv, *flags])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1]
    assert not (tmp_path / "o" / "pareto.json").exists()
