"""Tiny random models of every supported architecture, random plans, and the shared assets' paths."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import transformers

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import LayerPlan, PrunePlan

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY_LLAMA = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"  # the bundled demo model
LLAMA_DOCS = SHARED / "models" / "llama-docs"
PYDOCS_CALIB = SHARED / "data" / "pydocs-calib.txt"

_COMMON = {"hidden_size": 64, "intermediate_size": 48, "num_hidden_layers": 4, "vocab_size": 96}
TINY_CONFIGS = {
    # GQA everywhere (group size 2 or 4); qwen2 has q/k/v biases and tied embeddings; qwen3 has q/k norms.
    "llama": lambda: transformers.LlamaConfig(**_COMMON, num_attention_heads=8, num_key_value_heads=4, head_dim=8),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, num_attention_heads=8, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(
        **_COMMON, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True
    ),
    "qwen3": lambda: transformers.Qwen3Config(
        **_COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False
    ),
}
ARCHS = sorted(TINY_CONFIGS)


def tiny_model(arch: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = TINY_CONFIGS[arch]()
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 0, 1, 2
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases, so slicing them wrongly shows up
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model


def save_tiny_checkpoint(arch: str, folder: Path) -> transformers.PretrainedConfig:
    """A random tiny model of `arch` saved as a checkpoint with the bundled tiny Llama's tokenizer (its 1,024
    tokens serve every architecture); returns its config."""
    config = TINY_CONFIGS[arch]()
    config.vocab_size = 1024
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 0, 0, 1
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(TINY_LLAMA).save_pretrained(folder)
    return config


def random_plan(model, rng: random.Random, *, vocab: int | None = None) -> PrunePlan:
    """A random valid plan: heads in whole KV groups, any MLP width, sublayers and layers sometimes cut."""
    shape = model_shape(model.config)
    layers = []
    for _ in range(shape.num_layers):
        heads = rng.randint(0, shape.num_kv_heads) * shape.group_size
        ffn = rng.choice([0, rng.randint(1, shape.intermediate_size), shape.intermediate_size])
        layers.append(LayerPlan(heads=heads, ffn=ffn))
    if all(layer.removed for layer in layers):
        layers[0] = LayerPlan(heads=shape.num_heads, ffn=shape.intermediate_size)
    return PrunePlan(layers=tuple(layers), vocab=vocab)
