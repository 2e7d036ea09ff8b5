"""Serving engines, batched workloads, tile effects and hardware alignment: hand-computed cases and the targets."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

from prunesearch.choices import Engine
from prunesearch.profilers.analytical import RooflineModel, kv_cache_bytes, max_batch, memory_needed
from prunesearch.profilers.calibrate import random_plan
from prunesearch.profilers.engines import graphs_forward_ops, phase_ops
from prunesearch.profilers.fit import box_lstsq
from prunesearch.profilers.hardware import BUILTIN_PROFILES, HardwareError, HardwareProfile, get_profile
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.ops import GemmTile, gemm_cost, model_dims
from prunesearch.profilers.registry import check_engine, default_engine, recommended_ffn_step
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.search.context import latency_value
from prunesearch.search.parametrize import resolve
from prunesearch.search.spec import SearchSpace, SearchSpec

HERE = Path(__file__).parent / "profilers"
TINY = json.loads((HERE / "tiny_configs.json").read_text())
LLAMA3_8B = json.loads((HERE / "llama3-8b-config.json").read_text())


def _estimate(hardware: str, engine: str | None, batch: int = 1, config=LLAMA3_8B, plan=None):
    return RooflineModel(get_profile(hardware)).estimate(config, plan, Workload(batch, 512, 128, "bf16", engine))


def test_issue_targets_llama3_8b_batch_1():
    h100, h200 = _estimate("h100-sxm", "graphs"), _estimate("h200", "graphs")
    assert 5.0 <= h100.decode_ms_per_token <= 8.0
    assert h200.decode_ms_per_token / h100.decode_ms_per_token <= 0.80
    assert _estimate("h100-sxm", "eager").decode_ms_per_token >= 1.5 * h100.decode_ms_per_token
    assert h100.details["engine"] == "graphs" and h100.details["decode_bound"] == "weights"


def test_throughput_rises_with_batch_until_memory_caps_it():
    batches = [1, 8, 64, 256]
    estimates = [_estimate("h100-sxm", "graphs", b) for b in batches]
    rates = [e.tokens_per_s for e in estimates]
    assert rates == sorted(rates) and all(e.fits_in_memory for e in estimates)
    cap = estimates[0].details["max_batch"]
    assert 64 < cap < 4096
    assert _estimate("h100-sxm", "graphs", cap).fits_in_memory
    assert not _estimate("h100-sxm", "graphs", cap + 1).fits_in_memory
    # a long context makes the batch-64 step KV-bound; the JSON details say so
    long = RooflineModel(get_profile("h100-sxm")).estimate(LLAMA3_8B, None, Workload(64, 4096, 128, "bf16"))
    assert long.details["decode_bound"] == "kv_cache"
    assert set(long.details["decode_time_shares"]) == {"compute", "weights", "kv_cache", "activations", "overhead"}
    assert sum(long.details["decode_time_shares"].values()) == pytest.approx(1.0)


def test_memory_headroom_and_max_batch_by_hand():
    dims = model_dims(LLAMA3_8B)
    workload = Workload(3, 100, 28, "bf16")
    assert kv_cache_bytes(dims, workload) == 3 * 128 * (32 * 2 * 8 * 128 * 2)
    profile = get_profile("h100-sxm")
    assert profile.usable_memory_bytes == int(80 * 2**30 * 0.9)
    cap = max_batch(dims, workload, profile.usable_memory_bytes)
    assert memory_needed(dims, dataclasses.replace(workload, batch=cap)) <= profile.usable_memory_bytes
    assert memory_needed(dims, dataclasses.replace(workload, batch=cap + 1)) > profile.usable_memory_bytes


def test_tile_padding_exact_on_hand_computed_shapes():
    tile = GemmTile(64, 128, 64)
    assert gemm_cost(1, 100, 200, 2, tile=tile) == (2.0 * 64 * 256 * 128, 2 * (128 * 256 + 1 * 300))
    assert gemm_cost(64, 128, 256, 2, tile=tile) == gemm_cost(64, 128, 256, 2)  # aligned: nothing padded
    # 2 x 3 = 6 output tiles on 4 SMs: two waves, the second half empty, priced as 8 tiles
    waves = GemmTile(64, 128, 64, sms=4)
    flops, moved = gemm_cost(128, 64, 384, 2, bias=True, tile=waves)
    assert flops == 2.0 * 8 * 64 * 128 * 64 and moved == 2 * (64 * 384 + 128 * (64 + 384) + 384)
    # fewer tiles than SMs: no wave padding (split-K fills the machine)
    assert gemm_cost(64, 64, 256, 2, tile=waves)[0] == 2.0 * 64 * 256 * 64


def test_one_channel_past_the_tile_costs_almost_a_whole_tile():
    profile = get_profile("h100-sxm")
    shape = model_shape(LLAMA3_8B)

    def prefill(ffn: int) -> float:
        plan = PrunePlan(layers=(LayerPlan(32, ffn),) * shape.num_layers)
        return RooflineModel(profile).estimate(LLAMA3_8B, plan, Workload(64, 512, 16, "bf16")).prefill_ms

    dense, one_more, tile_more = prefill(8192), prefill(8193), prefill(8192 + 128)
    assert dense < one_more  # one channel past the tile pads a whole tile of compute
    assert one_more - dense > 0.4 * (tile_more - dense)  # gate/up pad to 128 outputs, down to 64 inputs


def test_batched_kv_term_exact():
    dims = model_dims(TINY["llama"])  # 3 layers, 4 heads in 2 KV groups, head size 16
    contexts = np.array([20.0, 21.0])
    ops = graphs_forward_ops(dims, batch=4, q=1, context=contexts, b=2)
    attention = next(op for op in ops if op.name == "attention")
    q_and_out = 2 * 4 * 4 * 16 * 2  # read q, write the output: batch 4 x 4 heads x 16, bf16
    kv = 2 * 4 * 2 * 16 * contexts * 2  # keys and values of every position, 4 sequences, 2 KV heads
    np.testing.assert_array_equal(attention.bytes, q_and_out + kv)
    np.testing.assert_array_equal(attention.flops, 4.0 * 4 * 4 * 1 * contexts * 16)
    assert attention.repeat == 3


def test_graphs_engine_fuses_kernels():
    dims = model_dims(TINY["qwen3"])
    prefill, _ = phase_ops(dims, Workload(1, 8, 2, "bf16"), Engine.GRAPHS)
    names = [op.name for op in prefill]
    assert "qkv_proj" in names and "gate_up_proj" in names and names.count("attention") == 1
    assert "q_proj" not in names and "qk_norm" in names
    per_layer = [op for op in prefill if op.repeat == 3]
    assert sum(op.launches for op in per_layer) == 10  # add+norm, qkv, qk-norm, rope+cache, attention, o, 4 MLP
    eager, _ = phase_ops(dims, Workload(1, 8, 2, "bf16"), Engine.EAGER)
    assert sum(op.launches * op.repeat for op in eager) > 3 * sum(op.launches * op.repeat for op in prefill)


@pytest.mark.parametrize("engine", list(Engine))
@pytest.mark.parametrize("arch", sorted(TINY))
def test_removing_anything_never_raises_latency_on_either_engine(engine, arch):
    config, rng = TINY[arch], random.Random(f"{arch}{engine}")
    shape = model_shape(config)
    model = RooflineModel(get_profile("h100-sxm"))
    workload = Workload(batch=2, prompt_tokens=64, generate_tokens=8, engine=engine)
    for _ in range(30):
        plan = random_plan(shape, rng)
        i = rng.randrange(shape.num_layers)
        layer = plan.layers[i]
        narrower = [
            LayerPlan(max(layer.heads - shape.group_size, 0), layer.ffn),
            LayerPlan(layer.heads, layer.ffn // 2),
        ]
        smaller = [_with_layer(plan, i, x) for x in narrower]
        smaller.append(PrunePlan(plan.layers, max(shape.num_special_tokens, (plan.vocab or shape.vocab_size) - 7)))
        before = model.estimate(config, plan, workload)
        for other in smaller:
            if all(x.removed for x in other.layers):
                continue
            after = model.estimate(config, other, workload)
            assert after.prefill_ms <= before.prefill_ms + 1e-12
            assert after.decode_ms_per_token <= before.decode_ms_per_token + 1e-12


def _with_layer(plan: PrunePlan, index: int, layer: LayerPlan) -> PrunePlan:
    return PrunePlan((*plan.layers[:index], layer, *plan.layers[index + 1 :]), plan.vocab)


def test_engine_defaults_and_refusals():
    assert all(p.engine == Engine.GRAPHS for p in BUILTIN_PROFILES.values())
    assert all(p.engines[e].source for p in BUILTIN_PROFILES.values() for e in Engine)  # every number is cited
    assert default_engine("h100-sxm") == Engine.GRAPHS and default_engine("local") == Engine.EAGER
    with pytest.raises(HardwareError, match="runs transformers eager"):
        check_engine("local", Engine.GRAPHS)
    bare = HardwareProfile("old-style", 100.0, 100.0, 10.0, 1000.0, 16.0)
    assert bare.engine == Engine.EAGER and bare.for_engine(None) == bare.for_engine("eager")
    with pytest.raises(HardwareError, match="no efficiencies for the 'graphs' engine"):
        bare.for_engine("graphs")
    round_trip = HardwareProfile.from_dict(json.loads(json.dumps(get_profile("h200").to_dict())))
    assert round_trip == get_profile("h200")


def test_workload_engine_is_validated_and_dumps_only_when_set():
    spec = SearchSpec(model="m", calibration="c")
    assert "engine" not in spec.model_dump(mode="json")["workload"]
    spec = SearchSpec(model="m", calibration="c", workload={"engine": "graphs"})
    assert spec.model_dump(mode="json")["workload"]["engine"] == "graphs"
    with pytest.raises(ValueError, match="engine"):
        SearchSpec(model="m", calibration="c", workload={"engine": "warp"})


def test_hardware_alignment_option_keeps_widths_on_the_tile():
    assert recommended_ffn_step("h100-sxm") == 128 and recommended_ffn_step("local") is None
    shape = model_shape(dict(TINY["llama"], intermediate_size=688))
    knobs = resolve(shape, SearchSpace(ffn_step="hardware", min_keep={"ffn": 0.25}), hardware_step=128)
    widths = [knobs.ffn_for(c) for c in range(knobs.max_ffn_cuts + 1)]
    assert widths == [688, 640, 512, 384, 256]
    assert knobs.ffn_for(knobs.max_ffn_cuts) >= 0.25 * 688
    plain = resolve(shape, SearchSpace(ffn_step=128))
    assert [plain.ffn_for(c) for c in range(plain.max_ffn_cuts + 1)] == [688, 560, 432, 304, 176]
    with pytest.raises(ValueError, match="ffn_step"):
        SearchSpace(ffn_step=0)


def test_throughput_objective_is_ms_per_generated_token():
    estimate = _estimate("h100-sxm", "graphs", 16)
    assert latency_value(estimate, "throughput") == pytest.approx(1e3 / estimate.tokens_per_s)
    assert latency_value(estimate, "decode") == estimate.decode_ms_per_token


def test_box_lstsq_respects_bounds():
    design = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = np.array([-1.0, 2.0, 1.0])
    x = box_lstsq(design, target, np.array([0.5, 0.0]), np.array([4.0, 1.5]))
    # the unconstrained optimum (-1, 2) lies outside the box: x0 sits on its bound, x1 minimises the rest
    assert x[0] == 0.5 and x[1] == pytest.approx(1.25)
    free = box_lstsq(design, target, np.array([-9.0, -9.0]), np.array([9.0, 9.0]))
    np.testing.assert_allclose(free, np.linalg.lstsq(design, target, rcond=None)[0])


def test_search_cli_engine_flag_lands_in_the_workload(tmp_path):
    import argparse

    from prunesearch.search import cli as search_cli

    parser = argparse.ArgumentParser()
    search_cli.register(parser.add_subparsers())
    base = ["search", "--model", "m", "--calibration", "c", "--out", str(tmp_path)]
    spec = search_cli._spec_from_args(parser.parse_args([*base, "--engine", "eager"]))
    assert spec.workload.engine == Engine.EAGER and spec.hardware == "h100-sxm"
    assert search_cli._spec_from_args(parser.parse_args(base)).workload.engine is None  # the hardware's default
