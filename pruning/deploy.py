"""Which runtimes load an exported checkpoint, decided from its plan and architecture. Pure logic: no torch.

A checkpoint loads with the *stock* class of its architecture (`LlamaForCausalLM`, `Qwen2ForCausalLM`, ...) when
every kept layer has the same shape, keeps both sublayers (whole layers may be removed), the stock config can
state the head count, and every bias FLAP's compensation adds has a config flag that turns it on. Anything else
is written with `per_layer_config` and `modeling_pruned.py`: stock transformers cannot build it, transformers
with `trust_remote_code=True` can, and serving engines (whose model classes take one shape per model) cannot.

Serving engines load a stock checkpoint when its `architectures` entry is one they list. The table below is
taken from their published support pages (checked 2026-11):
- vLLM, "List of Supported Models" (text generation):
  https://docs.vllm.ai/en/latest/models/supported_models.html
- SGLang, "Large Language Models": https://docs.sglang.io/supported_models/generative_models.html
- TensorRT-LLM, "Supported Models" (PyTorch backend):
  https://nvidia.github.io/TensorRT-LLM/models/supported-models.html
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .architectures import ArchitectureSpec
from .plan import ModelShape, PrunePlan


@dataclass(frozen=True)
class Engine:
    """A serving engine and the causal-LM classes (config `architectures`) its support page lists."""

    name: str
    architectures: frozenset[str]
    source: str  # the published support page


_DENSE_DECODERS = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
ENGINES: tuple[Engine, ...] = (
    Engine("vllm", _DENSE_DECODERS, "https://docs.vllm.ai/en/latest/models/supported_models.html"),
    Engine("sglang", _DENSE_DECODERS, "https://docs.sglang.io/supported_models/generative_models.html"),
    Engine("tensorrt-llm", _DENSE_DECODERS, "https://nvidia.github.io/TensorRT-LLM/models/supported-models.html"),
)


@dataclass(frozen=True)
class Runtimes:
    """What loads a checkpoint: stock transformers, transformers with remote code, and serving engines."""

    architecture: str  # the class name the checkpoint's config names
    stock_transformers: bool
    trust_remote_code: bool  # transformers' AutoModelForCausalLM with trust_remote_code=True
    engines: tuple[str, ...]
    reasons: tuple[str, ...] = ()  # why the stock classes cannot load it (empty when they can)
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "stock_transformers": self.stock_transformers,
            "trust_remote_code": self.trust_remote_code,
            "engines": list(self.engines),
            "reasons": list(self.reasons),
            "notes": list(self.notes),
        }


def stock_bias_parts(spec: ArchitectureSpec) -> frozenset[str]:
    """The sublayers (`spec.attention`, `spec.mlp`) whose output projection may gain a bias in stock modeling."""
    parts = []
    if spec.attention_bias_flag is not None:
        parts.append(spec.attention)
    if spec.mlp_bias_flag is not None:
        parts.append(spec.mlp)
    return frozenset(parts)


def compensated_parts(
    spec: ArchitectureSpec, shape: ModelShape, plan: PrunePlan, compensating: Collection[str]
) -> set[str]:
    """The sublayers whose output projection gets a bias: of the `compensating` ones (those the importance
    scores carry channel means for), each that loses channels in some kept layer (surgery adds the bias there)."""
    kept = [plan.layers[i] for i in plan.kept_layer_indices()]
    parts = set()
    if spec.attention in compensating and any(0 < layer.heads < shape.num_heads for layer in kept):
        parts.add(spec.attention)
    if spec.mlp in compensating and any(0 < layer.ffn < shape.intermediate_size for layer in kept):
        parts.add(spec.mlp)
    return parts


def stock_problems(
    spec: ArchitectureSpec, shape: ModelShape, plan: PrunePlan, biased_parts: Collection[str] = ()
) -> list[str]:
    """Why the architecture's stock class cannot hold the pruned model (empty: it can).

    `biased_parts` names the sublayers whose output projections carry a compensation bias in kept layers."""
    kept = [plan.layers[i] for i in plan.kept_layer_indices()]
    if not kept:
        return ["the plan keeps no layer"]
    problems = []
    if any(layer.heads == 0 or layer.ffn == 0 for layer in kept):
        problems.append("a kept layer drops only its attention or only its MLP (stock layers have both)")
    if len(set(kept)) > 1:
        problems.append("kept layers have different widths (stock configs have one head count and MLP width)")
    heads = kept[0].heads
    if not problems and spec.heads_must_divide_hidden and shape.hidden_size % heads:
        problems.append(
            f"{spec.causal_lm_class}'s config requires the head count to divide hidden_size "
            f"({heads} does not divide {shape.hidden_size})"
        )
    unflagged = sorted(set(biased_parts) - stock_bias_parts(spec))
    if unflagged:
        problems.append(
            f"bias compensation adds output biases to {', '.join(unflagged)}, which {spec.causal_lm_class} has no "
            f"config flag for"
        )
    return problems


def needs_remote_code(
    spec: ArchitectureSpec, shape: ModelShape, plan: PrunePlan, biased_parts: Collection[str] = ()
) -> bool:
    return bool(stock_problems(spec, shape, plan, biased_parts))


def stock_head_counts(spec: ArchitectureSpec, shape: ModelShape) -> list[int]:
    """Query-head counts a stock config of this architecture can state, largest first (whole KV groups)."""
    counts = [groups * shape.group_size for groups in range(shape.num_kv_heads, 0, -1)]
    if spec.heads_must_divide_hidden:
        counts = [heads for heads in counts if shape.hidden_size % heads == 0]
    return counts


def runtimes_for(
    spec: ArchitectureSpec, shape: ModelShape, plan: PrunePlan, biased_parts: Collection[str] = ()
) -> Runtimes:
    """The runtimes that load the checkpoint `plan` makes of a model of this architecture and shape."""
    reasons = stock_problems(spec, shape, plan, biased_parts)
    if reasons:
        return Runtimes(
            architecture=spec.pruned_class,
            stock_transformers=False,
            trust_remote_code=True,
            engines=(),
            reasons=tuple(reasons),
            notes=("serving engines build one shape for every layer; this checkpoint's layers differ",),
        )
    engines = tuple(engine.name for engine in ENGINES if spec.causal_lm_class in engine.architectures)
    return Runtimes(
        architecture=spec.causal_lm_class,
        stock_transformers=True,
        trust_remote_code=True,
        engines=engines,
        notes=tuple(_stock_notes(shape, plan)),
    )


def _stock_notes(shape: ModelShape, plan: PrunePlan) -> list[str]:
    layer = plan.layers[plan.kept_layer_indices()[0]]
    notes = []
    if layer.heads != shape.num_heads:
        notes.append(
            "head_dim is stated in config.json and no longer equals hidden_size / num_attention_heads: "
            "use an engine release that reads config.head_dim (older vLLM Qwen2 code derived it from hidden_size)"
        )
    if plan.vocab is not None and plan.vocab < shape.vocab_size:
        notes.append("the vocabulary is trimmed: token_map.json maps new token ids to the base model's")
    notes.append(
        f"tensor parallelism needs a degree that divides {layer.heads // shape.group_size} KV heads and "
        f"{layer.ffn} MLP channels"
    )
    return notes


def engine_table() -> list[dict[str, Any]]:
    """The engine table as data (for docs and the API)."""
    return [{"engine": e.name, "architectures": sorted(e.architectures), "source": e.source} for e in ENGINES]
