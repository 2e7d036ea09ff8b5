"""Surgery is proven right against the dense model: exported == in-memory, dense plan == original, and every
cut equals masking the same weights in the dense model."""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.export import export_checkpoint
from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.modeling import load_pruned
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.pruning.surgery import apply_plan, head_channels, top_indices

from .factories import ARCHS, random_plan, tiny_model

ATOL = 1e-5


def _ids(model, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_plan_reproduces_original_logits(arch):
    model = tiny_model(arch)
    pruned = apply_plan(model, PrunePlan.dense(model_shape(model.config)))
    ids = _ids(model)
    assert type(pruned).__name__ == type(model).__name__
    torch.testing.assert_close(_logits(pruned, ids), _logits(model, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exported_checkpoint_reloads_with_identical_logits(arch, seed, tmp_path):
    model = tiny_model(arch, seed)
    plan = random_plan(model, random.Random(seed))
    pruned = apply_plan(model, plan)
    export_checkpoint(pruned, None, plan, tmp_path, {"test": True})
    ids = _ids(model, seed=seed)
    expected = _logits(pruned, ids)
    torch.testing.assert_close(_logits(load_pruned(tmp_path), ids), expected, atol=ATOL, rtol=0)
    remote = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    torch.testing.assert_close(_logits(remote, ids), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_uniform_plan_loads_with_stock_transformers(arch, tmp_path):
    model = tiny_model(arch)
    shape = model_shape(model.config)
    layer = LayerPlan(heads=shape.num_heads // 2, ffn=shape.intermediate_size // 2)
    plan = PrunePlan(layers=(layer, LayerPlan(0, 0), layer, layer))
    pruned = apply_plan(model, plan)
    export_checkpoint(pruned, None, plan, tmp_path, {})
    assert not (tmp_path / "modeling_pruned.py").exists()
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(stock).__name__ == type(model).__name__
    assert stock.config.num_hidden_layers == 3
    ids = _ids(model)
    torch.testing.assert_close(_logits(stock, ids), _logits(pruned, ids), atol=ATOL, rtol=0)


def _masked_dense(model, removed_heads: dict[int, torch.Tensor], removed_channels: dict[int, torch.Tensor]):
    """The dense model with the o_proj / down_proj columns of removed heads and channels zeroed."""
    import copy

    masked = copy.deepcopy(model)
    layers = masked.model.layers
    with torch.no_grad():
        for index, columns in removed_heads.items():
            layers[index].self_attn.o_proj.weight[:, columns] = 0
        for index, columns in removed_channels.items():
            layers[index].mlp.down_proj.weight[:, columns] = 0
    return masked


def _complement(kept: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


@pytest.mark.parametrize("arch", ARCHS)
def test_removing_kv_groups_and_channels_equals_masking_them(arch):
    model = tiny_model(arch)
    shape = model_shape(model.config)
    scores = compute_importance(model, "magnitude")
    plan = PrunePlan(
        layers=(
            LayerPlan(heads=shape.group_size, ffn=shape.intermediate_size),
            LayerPlan(heads=shape.num_heads - shape.group_size, ffn=17),
            LayerPlan(heads=shape.num_heads, ffn=5),
            LayerPlan(heads=shape.num_heads, ffn=shape.intermediate_size),
        )
    )
    channels_per_group = shape.group_size * shape.head_dim
    removed_heads, removed_channels = {}, {}
    for index, layer in enumerate(plan.layers):
        groups = top_indices(scores.kv_groups[index], layer.heads // shape.group_size)
        kept_cols = head_channels(groups, channels_per_group)
        removed_heads[index] = _complement(kept_cols, shape.num_heads * shape.head_dim)
        kept_channels = top_indices(scores.channels[index], layer.ffn)
        removed_channels[index] = _complement(kept_channels, shape.intermediate_size)
    ids = _ids(model)
    expected = _logits(_masked_dense(model, removed_heads, removed_channels), ids)
    torch.testing.assert_close(_logits(apply_plan(model, plan, scores), ids), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_removing_sublayers_and_layers_equals_zeroing_them(arch):
    model = tiny_model(arch)
    shape = model_shape(model.config)
    plan = PrunePlan(
        layers=(
            LayerPlan(heads=0, ffn=shape.intermediate_size),
            LayerPlan(heads=shape.num_heads, ffn=0),
            LayerPlan(heads=0, ffn=0),
            LayerPlan(heads=shape.num_heads, ffn=shape.intermediate_size),
        )
    )
    all_heads = torch.arange(shape.num_heads * shape.head_dim)
    all_channels = torch.arange(shape.intermediate_size)
    masked = _masked_dense(model, {0: all_heads, 2: all_heads}, {1: all_channels, 2: all_channels})
    ids = _ids(model)
    pruned = apply_plan(model, plan)
    assert pruned.config.num_hidden_layers == 3
    torch.testing.assert_close(_logits(pruned, ids), _logits(masked, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_flap_bias_compensation_equals_mean_substitution(arch, tmp_path):
    """With FLAP, a removed channel behaves as if its input were replaced by its calibration mean."""
    model = tiny_model(arch)
    shape = model_shape(model.config)
    calibration = _ids(model, batch=4, length=16, seed=7)
    stats = collect_activation_stats(model, calibration, progress=False)
    scores = compute_importance(model, "flap", stats)
    layer = LayerPlan(heads=shape.num_heads - shape.group_size, ffn=shape.intermediate_size // 2)
    plan = PrunePlan(layers=(layer,) * shape.num_layers)
    pruned = apply_plan(model, plan, scores)

    hooks = []
    for index, dense_layer in enumerate(model.model.layers):
        groups = top_indices(scores.kv_groups[index], layer.heads // shape.group_size)
        kept_cols = head_channels(groups, shape.group_size * shape.head_dim)
        kept_channels = top_indices(scores.channels[index], layer.ffn)
        for module, kept, mean in (
            (dense_layer.self_attn.o_proj, kept_cols, stats.mean("attn", index)),
            (dense_layer.mlp.down_proj, kept_channels, stats.mean("mlp", index)),
        ):
            hooks.append(module.register_forward_pre_hook(_substitute_mean(kept, mean)))
    ids = _ids(model, seed=3)
    try:
        expected = _logits(model, ids)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(_logits(pruned, ids), expected, atol=1e-4, rtol=0)
    export_checkpoint(pruned, None, plan, tmp_path, {})
    torch.testing.assert_close(_logits(load_pruned(tmp_path), ids), expected, atol=1e-4, rtol=0)


def _substitute_mean(kept: torch.Tensor, mean: torch.Tensor):
    def hook(_module, args):
        x = args[0].clone()
        removed = _complement(kept, x.shape[-1])
        x[..., removed] = mean[removed].to(x.dtype)
        return (x,)

    return hook


@pytest.mark.parametrize("arch", ARCHS)
def test_trimmed_vocabulary_logits_are_original_logits_restricted(arch):
    model = tiny_model(arch)
    kept = sorted({*random.Random(0).sample(range(model.config.vocab_size), 40), 0, 1, 2})
    plan = PrunePlan(layers=PrunePlan.dense(model_shape(model.config)).layers, vocab=len(kept))
    pruned = apply_plan(model, plan, kept_token_ids=kept)
    original_ids = torch.tensor([kept[i] for i in (3, 9, 0, 20, 5, 7)])[None, :]
    new_ids = torch.tensor([3, 9, 0, 20, 5, 7])[None, :]
    expected = _logits(model, original_ids)[..., kept]
    torch.testing.assert_close(_logits(pruned, new_ids), expected, atol=ATOL, rtol=0)
    assert pruned.config.vocab_size == len(kept)
    assert pruned.config.pad_token_id == kept.index(2)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_kv_cache_matches_full_forward(arch):
    model = tiny_model(arch)
    plan = random_plan(model, random.Random(11))
    pruned = apply_plan(model, plan)
    ids = _ids(model, batch=1, length=6)
    generated = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    assert generated.shape == (1, 12)
    # each greedy token must be the argmax of a cache-free forward over the prefix
    full = _logits(pruned, generated[:, :-1])
    torch.testing.assert_close(full[0, 5:].argmax(-1), generated[0, 6:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_surgery_casts_to_the_requested_dtype(dtype, tmp_path):
    model = tiny_model("llama")
    plan = random_plan(model, random.Random(5))
    pruned = apply_plan(model, plan, dtype=dtype)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    export_checkpoint(pruned, None, plan, tmp_path, {})
    assert {p.dtype for p in load_pruned(tmp_path).parameters()} == {dtype}


def test_surgery_leaves_the_input_model_untouched():
    model = tiny_model("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_plan(model, random_plan(model, random.Random(2)))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_surgery_on_cuda_matches_cpu(arch):
    model = tiny_model(arch)
    plan = random_plan(model, random.Random(4))
    on_cpu = apply_plan(model, plan)
    on_gpu = apply_plan(model.cuda(), plan, device="cuda")
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    ids = _ids(model)
    torch.testing.assert_close(_logits(on_gpu, ids.cuda()).cpu(), _logits(on_cpu, ids), atol=1e-4, rtol=0)


def test_attention_kernel_choice_reaches_every_heterogeneous_layer(tmp_path):
    model = tiny_model("llama")
    plan = PrunePlan(layers=(LayerPlan(4, 48), LayerPlan(0, 24), LayerPlan(8, 48), LayerPlan(2, 0)))
    pruned = apply_plan(model, plan)
    pruned.set_attn_implementation("eager")
    kernels = {layer.self_attn.config._attn_implementation for layer in pruned.model.layers if layer.self_attn}
    assert kernels == {"eager"}
    ids = _ids(model)
    eager = _logits(pruned, ids)
    pruned.set_attn_implementation("sdpa")
    torch.testing.assert_close(_logits(pruned, ids), eager, atol=ATOL, rtol=0)
