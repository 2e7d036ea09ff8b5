"""`constraints.deploy: stock`: the search space holds only plans whose export loads with the stock classes."""

from __future__ import annotations

import json

import optuna
import pytest
import transformers
from pydantic import ValidationError

from prunesearch.cli import main
from prunesearch.pruning.architectures import get_spec
from prunesearch.pruning.deploy import stock_head_counts, stock_problems
from prunesearch.pruning.plan import ModelShape
from prunesearch.search.baselines import baseline_params
from prunesearch.search.parametrize import FixedParams, resolve, suggest_plan
from prunesearch.search.results import list_trials
from prunesearch.search.spec import SearchSpace, SearchSpec
from prunesearch.service.settings import BUNDLED_EXAMPLES

# llama-docs' shape: 8 heads without GQA, hidden 256: stock head counts 8, 4, 2, 1 (they must divide 256)
SHAPE = ModelShape(
    num_layers=6, num_heads=8, num_kv_heads=8, head_dim=32, hidden_size=256, intermediate_size=688, vocab_size=8192
)
LLAMA = get_spec("llama")


def _space(**fields) -> SearchSpace:
    return SearchSpace.model_validate({"vocab": True} | fields)


@pytest.mark.parametrize("parametrization", ["per_layer", "profile"])
@pytest.mark.parametrize("depth", ["sublayers", "layers", "none"])
def test_every_sampled_plan_and_baseline_is_stock_loadable(parametrization, depth):
    space = _space(parametrization=parametrization, depth=depth)
    knobs = resolve(SHAPE, space, list(range(6)), stock_heads=stock_head_counts(LLAMA, SHAPE))
    assert knobs.stock_group_cuts == (0, 4, 6)  # 8, 4 and 2 heads; 1 head is below min_keep (25%)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []
    for _ in range(60):
        trial = study.ask()
        plans.append(suggest_plan(trial, knobs))
        study.tell(trial, 0.0)
    plans += [suggest_plan(FixedParams(params), knobs) for _, params in baseline_params(knobs)]
    for plan in plans:
        assert not plan.kept_layer_indices() or not stock_problems(LLAMA, SHAPE, plan), plan
    widths = {(layer.heads, layer.ffn) for plan in plans for layer in plan.layers if not layer.removed}
    assert {heads for heads, _ in widths} == {8, 4, 2}  # the space still reaches every allowed width
    assert len({ffn for _, ffn in widths}) > 5
    assert any(plan.vocab for plan in plans)  # vocabulary trimming stays: stock configs load it
    removed = any(layer.removed for plan in plans for layer in plan.layers)
    assert removed == (depth != "none")


def test_the_stock_space_has_one_width_parameter_per_knob():
    knobs = resolve(SHAPE, _space(), stock_heads=stock_head_counts(LLAMA, SHAPE))
    asked = FixedParams()
    suggest_plan(asked, knobs)
    assert {"group_cuts", "ffn_cuts", "vocab_cuts"} <= set(asked.asked)
    assert not any(name.startswith(("keep_attn", "keep_mlp", "group_cuts_", "ffn_cuts_")) for name in asked.asked)
    assert knobs.depth == "layers"  # sublayer removal becomes whole-layer removal


def test_the_spec_takes_deploy_stock_and_dumps_unchanged_without_it():
    base = {"model": "m", "calibration": "c"}
    assert "deploy" not in SearchSpec.model_validate(base).model_dump(mode="json")["constraints"]
    stock = SearchSpec.model_validate(base | {"constraints": {"deploy": "stock"}})
    assert stock.stock_only and stock.model_dump(mode="json")["constraints"]["deploy"] == "stock"
    with pytest.raises(ValidationError, match=r"space\.layers cannot limit"):
        SearchSpec.model_validate(base | {"constraints": {"deploy": "stock"}, "space": {"layers": [1, 2]}})
    only_layers = {"layers": [1, 2], "heads": False, "ffn": False, "depth": "layers"}
    assert SearchSpec.model_validate(base | {"constraints": {"deploy": "stock"}, "space": only_layers}).stock_only
    with pytest.raises(ValidationError):
        SearchSpec.model_validate(base | {"constraints": {"deploy": "gpu"}})


def test_cli_search_deploy_stock_then_every_trial_exports_stock(tmp_path, capsys, prunesearch_home):
    """A `--deploy stock` search on the bundled model: every trial is stock, and an exported one loads with
    AutoModelForCausalLM without remote code, its model card saying so (FLAP's biases are Llama-stock)."""
    out = tmp_path / "run"
    args = ["search", "--model", str(BUNDLED_EXAMPLES), "--calibration", str(BUNDLED_EXAMPLES / "calib.txt")]
    args += ["--trials", "12", "--sampler", "random", "--calibration-tokens", "512", "--deploy", "stock"]
    assert main([*args, "--hardware", "h100-sxm", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = json.loads((BUNDLED_EXAMPLES / "config.json").read_text())
    from prunesearch.pruning.architectures import model_shape
    from prunesearch.pruning.plan import PrunePlan

    shape = model_shape(config)
    trials = list_trials(summary["storage"], summary["study"], limit=100)
    assert len(trials) == 12
    for trial in trials:
        plan = PrunePlan.from_dict(trial["plan"])
        if not plan.kept_layer_indices():  # no layer left: rejected by the depth bound, and no export exists
            assert trial["metrics"] == {"rejected": "depth"} and not trial["feasible"]
            continue
        assert not stock_problems(LLAMA, shape, plan), trial["plan"]
    pruned = [t for t in trials if t["plan"] != PrunePlan.dense(shape).to_dict() and t["feasible"]]
    chosen = max(pruned, key=lambda t: sum(x["heads"] + x["ffn"] == 0 for x in t["plan"]["layers"]))
    ckpt = tmp_path / "ckpt"
    export = ["export", "--storage", summary["storage"], "--study", summary["study"], "--trial", str(chosen["trial"])]
    assert main([*export, "--out", str(ckpt)]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["stock_loadable"] and exported["runtimes"]["engines"]
    provenance = json.loads((ckpt / "provenance.json").read_text())
    assert provenance["search"]["trial"] == chosen["trial"] and provenance["search"]["deploy"] == "stock"
    assert provenance["search"]["metrics"] == chosen["metrics"] and provenance["search"]["hardware"] == "h100-sxm"
    assert not (ckpt / "modeling_pruned.py").exists()
    card = (ckpt / "README.md").read_text()
    assert f"trial {chosen['trial']}" in card and "h100-sxm" in card and "trust_remote_code=True)" not in card
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    kept = [x for x in chosen["plan"]["layers"] if x["heads"]]
    assert model.config.num_hidden_layers == len(kept) and model.config.intermediate_size == kept[0]["ffn"]
