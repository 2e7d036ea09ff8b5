"""The roofline model: FLOPs against torch's counter, parameter counts, monotonicity, and bounds."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.hardware import get_profile
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.ops import forward_ops, matmul_flops, model_dims, param_count
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.modeling import build_pruned_model
from prunesearch.pruning.plan import LayerPlan, PrunePlan

HERE = Path(__file__).parent / "profilers"
TINY = json.loads((HERE / "tiny_configs.json").read_text())
LLAMA3_8B = json.loads((HERE / "llama3-8b-config.json").read_text())


def hf_config(name: str) -> transformers.PretrainedConfig:
    """A tiny config; eager attention because FlopCounterMode does not count the CPU flash-SDPA kernel."""
    data = dict(TINY[name])
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    config._attn_implementation = "eager"
    return config


def random_plan(config, rng: random.Random, vocab: bool = True) -> PrunePlan:
    shape = model_shape(config)
    layers = tuple(
        LayerPlan(
            heads=rng.randrange(0, shape.num_kv_heads + 1) * shape.group_size,
            ffn=rng.choice([0, rng.randrange(1, shape.intermediate_size + 1), shape.intermediate_size]),
        )
        for _ in range(shape.num_layers)
    )
    if all(x.removed for x in layers):
        layers = (LayerPlan(shape.num_heads, shape.intermediate_size), *layers[1:])
    kept_vocab = rng.randrange(shape.vocab_size // 2, shape.vocab_size + 1) if vocab else None
    return PrunePlan(layers=layers, vocab=kept_vocab)


def counted_flops(model, batch: int, seq: int) -> int:
    ids = torch.randint(0, 32, (batch, seq))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    return counter.get_total_flops()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_dense_prefill_flops_match_torch_counter(arch):
    config = hf_config(arch)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    predicted = matmul_flops(forward_ops(model_dims(config), 2, 24, 24, 4, logits_per_sequence=24))
    assert predicted == pytest.approx(counted_flops(model, 2, 24), rel=0.02)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_pruned_prefill_flops_match_torch_counter(arch):
    config = hf_config(arch)
    plan = random_plan(config, random.Random(arch))
    model = build_pruned_model(config, plan)
    for layer in model.model.layers:  # per-layer configs of heterogeneous models keep their own setting
        if layer.self_attn is not None:
            layer.self_attn.config._attn_implementation = "eager"
    predicted = matmul_flops(forward_ops(model_dims(config, plan), 1, 20, 20, 4, logits_per_sequence=20))
    assert predicted == pytest.approx(counted_flops(model, 1, 20), rel=0.02)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_param_count_matches_model(arch):
    config = hf_config(arch)
    plan = random_plan(config, random.Random(7))
    for p in (None, plan):
        model = build_pruned_model(config, p or PrunePlan.dense(model_shape(config)))
        assert param_count(model_dims(config, p)) == model.num_parameters()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_removing_anything_never_raises_latency(arch):
    config, rng = TINY[arch], random.Random(arch)
    shape = model_shape(config)
    model = RooflineModel(get_profile("h100-sxm"))
    workload = Workload(batch=2, prompt_tokens=64, generate_tokens=8)
    for _ in range(40):
        plan = random_plan(config, rng)
        smaller = _shrink_one(plan, shape, rng)
        if smaller is None:
            continue
        before, after = model.estimate(config, plan, workload), model.estimate(config, smaller, workload)
        assert after.prefill_ms <= before.prefill_ms + 1e-12
        assert after.decode_ms_per_token <= before.decode_ms_per_token + 1e-12
        assert after.params <= before.params


def _shrink_one(plan: PrunePlan, shape, rng: random.Random) -> PrunePlan | None:
    layers = list(plan.layers)
    i = rng.randrange(len(layers))
    what = rng.choice(["heads", "ffn", "layer", "vocab"])
    if what == "vocab":
        return PrunePlan(layers=plan.layers, vocab=max(1, (plan.vocab or shape.vocab_size) - rng.randrange(1, 9)))
    if what == "heads" and layers[i].heads:
        layers[i] = LayerPlan(layers[i].heads - shape.group_size, layers[i].ffn)
    elif what == "ffn" and layers[i].ffn:
        layers[i] = LayerPlan(layers[i].heads, rng.randrange(0, layers[i].ffn))
    elif what == "layer":
        layers[i] = LayerPlan(0, 0)
    if all(x.removed for x in layers):
        return None
    return PrunePlan(layers=tuple(layers), vocab=plan.vocab)


def test_llama3_8b_decode_is_memory_bound_on_h100():
    estimate = RooflineModel(get_profile("h100-sxm")).estimate(LLAMA3_8B, None, Workload(1, 512, 128, "bf16"))
    assert estimate.params == pytest.approx(8.03e9, rel=0.01)
    assert estimate.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2
    assert estimate.details["decode_memory_bound_share"] > 0.95
    assert estimate.details["prefill_memory_bound_share"] < 0.5
    # a memory-bound step cannot beat reading the weights once at the datasheet bandwidth
    assert estimate.decode_ms_per_token > estimate.weight_bytes / 3.35e12 * 1e3
    assert estimate.fits_in_memory


def test_70b_config_prices_in_milliseconds_and_does_not_fit_a_single_l4():
    config = dict(LLAMA3_8B, num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, intermediate_size=28672)
    model = RooflineModel(get_profile("l4"))
    start = time.perf_counter()
    estimate = model.estimate(config, None, Workload(8, 2048, 256))
    assert time.perf_counter() - start < 0.1
    assert estimate.params == pytest.approx(70.6e9, rel=0.01)
    assert not estimate.fits_in_memory


def test_decode_grows_with_context_and_lm_head_with_vocab():
    model = RooflineModel(get_profile("a100-80g"))
    short = model.estimate(LLAMA3_8B, None, Workload(16, 128, 16))
    long = model.estimate(LLAMA3_8B, None, Workload(16, 8192, 16))
    assert long.decode_ms_per_token > short.decode_ms_per_token
    small_vocab = PrunePlan(layers=PrunePlan.dense(model_shape(LLAMA3_8B)).layers, vocab=32000)
    assert model.estimate(LLAMA3_8B, small_vocab, Workload(1, 128, 16)).params < short.params


def test_qwen2_tied_embeddings_and_biases_counted():
    tied = param_count(model_dims(TINY["qwen2"]))
    untied = param_count(model_dims(dict(TINY["qwen2"], tie_word_embeddings=False)))
    assert untied - tied == 160 * 64
    llama = param_count(model_dims(dict(TINY["qwen2"], model_type="llama")))  # same shape, no biases
    assert tied - llama == 3 * (4 * 16 + 2 * 2 * 16)  # q, k, v biases in each of the 3 layers
