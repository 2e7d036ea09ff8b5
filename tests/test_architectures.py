"""Every registered architecture has what surgery, modeling and stats need: each accessor resolves on a tiny
model built from the table alone, on the stock class and on the pruned class generated from the table."""

from __future__ import annotations

import ast

import pytest
import torch
import transformers
from torch import nn

from prunesearch.pruning import modules
from prunesearch.pruning.architectures import get_spec, model_shape, supported_model_types
from prunesearch.pruning.modeling import model_class_for, pruned_config, remote_modeling_source
from prunesearch.pruning.plan import LayerPlan, PrunePlan

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 24,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 64,
    "tie_word_embeddings": False,
}


def _dense(model_type: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **SMALL)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _check_model_parts(model, spec) -> None:
    assert isinstance(modules.embedding(model), nn.Embedding)
    assert isinstance(modules.lm_head(model), nn.Linear)
    assert isinstance(modules.final_norm(model), nn.Module)
    assert modules.decoder_layers(model) is modules.decoder(model).get_submodule(spec.layers_path.rpartition(".")[2])
    hidden = model.config.hidden_size
    assert modules.embedding(model).weight.shape[1] == modules.lm_head(model).in_features == hidden


def _check_layer(layer, spec, head_dim: int, heads: int, ffn: int) -> None:
    attn_norm, mlp_norm = modules.norms(layer, spec)
    attn, mlp = modules.attention_parts(layer, spec), modules.mlp_parts(layer, spec)
    if heads:
        assert attn_norm is not None and modules.attention(layer, spec) is not None
        assert attn.q_proj.out_features == attn.o_proj.in_features == heads * head_dim
        assert attn.k_proj.out_features == attn.v_proj.out_features
    else:
        assert attn is None and attn_norm is None
    if ffn:
        assert mlp_norm is not None and modules.mlp(layer, spec) is not None
        assert len(mlp.inputs) == len(spec.mlp_in) >= 1
        assert all(linear.out_features == ffn for linear in mlp.inputs) and mlp.output.in_features == ffn
    else:
        assert mlp is None and mlp_norm is None


@pytest.mark.parametrize("model_type", supported_model_types())
def test_stock_model_has_every_named_part(model_type):
    model, spec = _dense(model_type), get_spec(model_type)
    assert type(model).__name__ == spec.causal_lm_class
    assert type(modules.decoder_layers(model)[0]).__name__ == spec.decoder_layer_class
    assert getattr(transformers, spec.causal_lm_class) is type(model)
    _check_model_parts(model, spec)
    for layer in modules.decoder_layers(model):
        _check_layer(layer, spec, SMALL["head_dim"], SMALL["num_attention_heads"], SMALL["intermediate_size"])
    # surgery addresses tensors by these state-dict keys
    keys = set(model.state_dict())
    layer_keys = {f"{spec.attention}.{n}.weight" for n in (spec.q_proj, spec.k_proj, spec.v_proj, spec.o_proj)}
    layer_keys |= {f"{spec.mlp}.{n}.weight" for n in (*spec.mlp_in, spec.mlp_out)}
    layer_keys |= {f"{spec.attention_norm}.weight", f"{spec.mlp_norm}.weight"}
    assert {f"{spec.layers_path}.0.{k}" for k in layer_keys} <= keys
    assert {f"{spec.embed_path}.weight", f"{spec.lm_head_path}.weight", f"{spec.final_norm_path}.weight"} <= keys
    # stats run the decoder stack alone, without the LM head
    hidden = modules.decoder(model)(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False).last_hidden_state
    assert hidden.shape == (1, 3, SMALL["hidden_size"])


@pytest.mark.parametrize("model_type", supported_model_types())
def test_pruned_class_from_the_table_has_every_named_part(model_type):
    dense, spec = _dense(model_type), get_spec(model_type)
    plan = PrunePlan(layers=(LayerPlan(0, 12), LayerPlan(2, 0), LayerPlan(4, 24)))
    bias = {spec.attention: [1, 2], spec.mlp: [0]}
    config = pruned_config(dense.config, plan.validate_for(model_shape(dense.config)), output_bias=bias)
    cls = model_class_for(config)
    assert cls.__name__ == spec.pruned_class == config.architectures[0]
    assert config.auto_map["AutoModelForCausalLM"].endswith(f".{spec.pruned_class}")
    model = cls(config).eval()
    _check_model_parts(model, spec)
    layers = modules.decoder_layers(model)
    for layer, planned in zip(layers, plan.layers, strict=True):
        _check_layer(layer, spec, SMALL["head_dim"], planned.heads, planned.ffn)
    assert modules.attention_parts(layers[1], spec).o_proj.bias is not None
    assert modules.mlp_parts(layers[0], spec).output.bias is not None
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, SMALL["vocab_size"])


def test_exported_modeling_is_self_contained():
    """`modeling_pruned.py` imports only the standard library, torch and transformers, and binds the class its
    config names, for every architecture."""
    for model_type in supported_model_types():
        spec = get_spec(model_type)
        tree = ast.parse(remote_modeling_source(spec))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert {name.split(".")[0] for name in imported} <= {
            "__future__",
            "collections",
            "importlib",
            "torch",
            "transformers",
        }
        bound = {
            t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
        }
        assert spec.pruned_class in bound
