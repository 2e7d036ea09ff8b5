"""The Torch-Pruning baseline of bench/search_quality.py: it terminates, and removes whole heads and channels."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest
import torch
import transformers

from .factories import tiny_model

_PATH = Path(__file__).resolve().parents[1] / "bench" / "torch_pruning_baseline.py"
_SPEC = importlib.util.spec_from_file_location("torch_pruning_baseline", _PATH)
tpb = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tpb)


@pytest.fixture(autouse=True)
def bounded():
    """Torch-Pruning's dependency walk loops forever when the tracing workaround breaks: fail instead."""

    def expire(*_):
        raise TimeoutError("Torch-Pruning did not finish within 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _mha_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4
    )
    config.vocab_size = 96
    return transformers.LlamaForCausalLM(config).eval()


def _masked_dense(dense, pruned):
    """`dense` with the heads and MLP channels `pruned` dropped zeroed at their output projections."""
    masked = tpb.copy.deepcopy(dense)
    for layer, kept in zip(masked.model.layers, pruned.model.layers, strict=True):
        attention, head_dim = layer.self_attn, layer.self_attn.head_dim
        kept_rows = {_row(attention.q_proj.weight, row) for row in kept.self_attn.q_proj.weight}
        kept_heads = {row // head_dim for row in kept_rows}
        assert len(kept_heads) * head_dim == len(kept_rows)  # whole heads only
        for head in set(range(attention.q_proj.out_features // head_dim)) - kept_heads:
            attention.o_proj.weight.data[:, head * head_dim : (head + 1) * head_dim] = 0
        kept_channels = {_row(layer.mlp.up_proj.weight, row) for row in kept.mlp.up_proj.weight}
        for channel in set(range(layer.mlp.up_proj.out_features)) - kept_channels:
            layer.mlp.down_proj.weight.data[:, channel] = 0
    return masked


def _row(weight: torch.Tensor, row: torch.Tensor) -> int:
    return int((weight == row).all(dim=1).nonzero()[0])


@pytest.mark.parametrize("importance", tpb.IMPORTANCES)
def test_uniform_pruning_equals_the_masked_dense_model(importance):
    dense = _mha_llama()
    ids = torch.randint(0, 96, (2, 16))
    if importance == "taylor":
        tpb.taylor_gradients(dense, ids)
    pruned = tpb.prune_uniform(dense, 0.5, ids[:1], importance)
    assert tpb.plan_of(pruned).layers == tuple(tpb.LayerPlan(heads=2, ffn=24) for _ in range(2))
    assert dense.model.layers[0].self_attn.q_proj.out_features == 64  # the original is untouched
    with torch.no_grad():
        got = pruned(input_ids=ids, use_cache=False).logits
        expected = _masked_dense(dense, pruned)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert tpb.sys.modules[type(dense).__module__].rotate_half is not tpb.rotate_half_without_cat  # restored


def test_rotate_half_without_cat_is_exact():
    x = torch.randn(2, 3, 5, 16)
    from transformers.models.llama.modeling_llama import rotate_half

    assert torch.equal(tpb.rotate_half_without_cat(x), rotate_half(x))


def test_ratio_for_parameters_matches_a_target():
    dense = _mha_llama()
    ids = torch.randint(0, 96, (1, 16))
    target = tpb.parameter_count(tpb.prune_uniform(dense, 0.5, ids))
    ratio = tpb.ratio_for_parameters(dense, target, ids)
    assert tpb.parameter_count(tpb.prune_uniform(dense, ratio, ids)) == target


def test_grouped_query_attention_is_refused():
    with pytest.raises(ValueError, match="grouped-query"):
        tpb.prune_uniform(tiny_model("llama"), 0.5, torch.zeros(1, 8, dtype=torch.long))
