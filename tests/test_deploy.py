"""Which runtimes load an export (pruning/deploy.py), its model card, and that both match the exported files."""

from __future__ import annotations

import json
import random

import pytest
import transformers
import yaml

from prunesearch.pruning.architectures import get_spec, model_shape
from prunesearch.pruning.deploy import (
    ENGINES,
    compensated_parts,
    runtimes_for,
    stock_head_counts,
    stock_problems,
)
from prunesearch.pruning.modelcard import render_model_card
from prunesearch.pruning.modeling import pruned_config
from prunesearch.pruning.plan import LayerPlan, ModelShape, PrunePlan
from prunesearch.service.settings import BUNDLED_EXAMPLES

from .factories import ARCHS, TINY_CONFIGS, random_plan, tiny_model

# A Llama-like shape: 8 query heads in 4 KV groups (group size 2), hidden 96, MLP 64.
SHAPE = ModelShape(
    num_layers=4, num_heads=8, num_kv_heads=4, head_dim=12, hidden_size=96, intermediate_size=64, vocab_size=100
)
LLAMA, QWEN2 = get_spec("llama"), get_spec("qwen2")


def _plan(*layers: tuple[int, int], vocab: int | None = None) -> PrunePlan:
    return PrunePlan(layers=tuple(LayerPlan(heads=h, ffn=f) for h, f in layers), vocab=vocab)


def test_uniform_widths_with_whole_layers_removed_load_everywhere():
    plan = _plan((6, 48), (0, 0), (6, 48), (6, 48), vocab=80)
    runtimes = runtimes_for(LLAMA, SHAPE, plan)
    assert runtimes.stock_transformers and runtimes.trust_remote_code
    assert runtimes.architecture == "LlamaForCausalLM"
    assert set(runtimes.engines) == {"vllm", "sglang", "tensorrt-llm"}
    assert not runtimes.reasons
    assert any("token_map.json" in note for note in runtimes.notes)  # the trimmed vocabulary is stock too
    assert any("head_dim" in note for note in runtimes.notes)  # heads were cut: engines must read head_dim


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        (_plan((8, 64), (6, 64), (8, 64), (8, 64)), "different widths"),
        (_plan((8, 64), (0, 64), (8, 64), (8, 64)), "only its attention or only its MLP"),
        (_plan((8, 0), (8, 64), (8, 64), (8, 64)), "only its attention or only its MLP"),
    ],
)
def test_heterogeneous_plans_need_remote_code_and_no_engine_loads_them(plan, reason):
    runtimes = runtimes_for(LLAMA, SHAPE, plan)
    assert not runtimes.stock_transformers and runtimes.trust_remote_code
    assert runtimes.engines == () and runtimes.architecture == "PrunedLlamaForCausalLM"
    assert any(reason in r for r in runtimes.reasons)


def test_llama_head_counts_must_divide_hidden_size():
    plan = _plan((6, 64), (6, 64), (6, 64), (6, 64))  # 96 % 6 == 0: stock
    assert not stock_problems(LLAMA, SHAPE, plan)
    odd = ModelShape(**{**SHAPE.__dict__, "hidden_size": 64})  # 64 % 6 != 0
    assert any("divide hidden_size" in p for p in stock_problems(LLAMA, odd, plan))
    assert not stock_problems(get_spec("mistral"), odd, plan)  # Mistral's config has no such rule
    assert stock_head_counts(LLAMA, odd) == [8, 4, 2]
    assert stock_head_counts(get_spec("mistral"), odd) == [8, 6, 4, 2]


def test_bias_compensation_is_stock_only_where_the_config_has_a_flag():
    plan = _plan((6, 48), (6, 48), (6, 48), (6, 48))
    parts = compensated_parts(LLAMA, SHAPE, plan, {"self_attn", "mlp"})
    assert parts == {"self_attn", "mlp"}
    assert runtimes_for(LLAMA, SHAPE, plan, parts).stock_transformers  # attention_bias / mlp_bias
    qwen = runtimes_for(QWEN2, SHAPE, plan, parts)
    assert not qwen.stock_transformers and "no config flag" in qwen.reasons[0]
    # nothing sliced, nothing compensated: the dense widths stay stock on every architecture
    full = _plan((8, 64), (0, 0), (8, 64), (8, 64))
    assert compensated_parts(QWEN2, SHAPE, full, {"self_attn", "mlp"}) == set()
    assert compensated_parts(QWEN2, SHAPE, plan, {"mlp"}) == {"mlp"}


def test_the_engine_table_cites_each_engines_support_page():
    for engine in ENGINES:
        assert engine.source.startswith("https://") and "LlamaForCausalLM" in engine.architectures
        assert {get_spec(t).causal_lm_class for t in ("llama", "mistral", "qwen2", "qwen3")} <= engine.architectures


@pytest.mark.parametrize("arch", ARCHS)
def test_the_decision_matches_the_config_surgery_writes(arch):
    """For random plans, `runtimes_for` says stock exactly when `pruned_config` writes no auto_map."""
    base = TINY_CONFIGS[arch]()
    spec, shape = get_spec(arch), model_shape(base)
    model, rng = tiny_model(arch), random.Random(arch)
    plans = [random_plan(model, rng) for _ in range(12)]
    group, ffn = shape.group_size, shape.intermediate_size
    plans += [_uniform(shape, heads, width) for heads in range(group, shape.num_heads + 1, group) for width in (8, ffn)]
    for plan in plans:
        for compensating in (set(), {spec.attention, spec.mlp}):
            parts = compensated_parts(spec, shape, plan, compensating)
            kept = plan.kept_layer_indices()
            config = pruned_config(base, plan, output_bias={part: kept for part in parts})
            assert runtimes_for(spec, shape, plan, parts).stock_transformers == ("auto_map" not in config.to_dict())


def _uniform(shape: ModelShape, heads: int, ffn: int) -> PrunePlan:
    layers = [LayerPlan(heads=heads, ffn=ffn)] * shape.num_layers
    layers[1] = LayerPlan(heads=0, ffn=0)
    return PrunePlan(layers=tuple(layers))


PROVENANCE = {
    "base_model": "/models/tiny-llama",
    "criterion": "flap",
    "bias_compensation": True,
    "search": {
        "study": "job-1",
        "trial": 7,
        "metrics": {"kl": 0.12345, "ppl": 31.2, "latency_ms": 1.5, "latency_fraction": 0.61},
        "hardware": "h100-sxm",
        "latency_model": "roofline from the h100-sxm datasheet profile",
        "latency_objective": "total",
        "workload": {"batch": 1, "prompt_tokens": 512, "generate_tokens": 128, "dtype": "bf16"},
    },
    "heals": [
        {
            "teacher": "/models/tiny-llama",
            "data_file": "/d.txt",
            "settings": {"method": "lora"},
            "steps": 9,
            "eval": {"/data/valid.txt": {"before": {"token_ppl": 118.4}, "after": {"token_ppl": 114.2}}},
        }
    ],
}


def _card(runtimes) -> tuple[dict, str]:
    plan = _plan((6, 48), (0, 0), (6, 48), (6, 48)).to_dict()
    provenance = PROVENANCE | {"runtimes": runtimes.to_dict()}
    card = render_model_card({"model_type": "llama", "architectures": [runtimes.architecture]}, plan, provenance)
    front, body = card.split("---\n", 2)[1:]
    return yaml.safe_load(front), body


def test_model_card_front_matter_metrics_pricing_heal_and_stock_loading_code():
    front, body = _card(runtimes_for(LLAMA, SHAPE, _plan((6, 48), (0, 0), (6, 48), (6, 48))))
    assert front["base_model"] == "tiny-llama" and front["library_name"] == "transformers"
    assert {"prunesearch", "pruned", "llama"} <= set(front["tags"]) and "custom_code" not in front["tags"]
    assert "| KL divergence to the dense model (nats/token, proxy) | 0.1235 |" in body
    assert "hardware: `h100-sxm`" in body and "prompt_tokens 512" in body and "latency objective: total" in body
    assert "## Healing" in body and "lora, 9 steps" in body and "measured before healing" in body
    assert "`valid.txt`: token ppl 118.4 before, 114.2 after" in body
    assert "query heads per kept layer: 6 (0" in body
    load = body.split("## How to load it")[1]
    assert "model = AutoModelForCausalLM.from_pretrained(path)\n" in load and "trust_remote_code" not in load
    assert "vllm serve path/to/this/folder" in body and "removed: 1" in body


def test_model_card_of_a_heterogeneous_export_loads_with_remote_code():
    front, body = _card(runtimes_for(LLAMA, SHAPE, _plan((8, 64), (6, 64), (8, 64), (8, 64))))
    assert "custom_code" in front["tags"]
    assert "from_pretrained(path, trust_remote_code=True)" in body and "load_pruned" in body
    assert "vllm" not in body.split("## How to load it")[1] and "different widths" in body


def test_a_uniform_export_loads_with_the_stock_class_as_its_card_says(tmp_path):
    """prunesearch prune on the bundled model: provenance, card and a stock load without remote code agree."""
    from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint

    config = json.loads((BUNDLED_EXAMPLES / "config.json").read_text())
    shape = model_shape(config)
    heads = stock_head_counts(LLAMA, shape)[1]
    plan = _uniform(shape, heads, shape.intermediate_size // 2)
    calibration = ImportanceCalibration(path=BUNDLED_EXAMPLES / "calib.txt", seq_len=64, max_tokens=1024)
    summary = prune_checkpoint(BUNDLED_EXAMPLES, plan, tmp_path / "out", calibration=calibration)
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert summary["stock_loadable"] and provenance["runtimes"] == summary["runtimes"]
    assert provenance["runtimes"]["stock_transformers"] and provenance["bias_compensation"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith('---\nbase_model: "tiny-llama"') and "no search priced or scored it" in card
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == shape.num_layers - 1 and model.config.num_attention_heads == heads
