"""FLOPs, bytes and kernel launches of every operation in one forward pass of a (pruned) decoder.

Pure logic: numpy only. `context` may be a number or a numpy array of key lengths, so one call prices every
decode step at once. Counting conventions:
- a GEMM of T tokens, k inputs, n outputs is 2*T*k*n FLOPs and moves weights + input + output once;
- attention (SDPA) is 4*B*heads*q*keys*head_dim FLOPs over the full q x keys rectangle (what the CPU and
  math kernels execute, and what `FlopCounterMode` counts), reading Q, K, V and writing its output once;
- the KV cache is appended in place (static/paged cache) unless `dynamic_cache`, which also counts the copy
  that transformers' DynamicCache (`torch.cat`) makes of the whole cache at every step;
- launches are eager-PyTorch kernels per operation in transformers 5.23 modeling (views excluded);
- on a device with a GEMM tile (`GemmTile`), a GEMM's tokens, outputs and inputs are padded up to the tile
  (tile quantisation: FLOPs and weight bytes), and a GEMM of more output tiles than the device has SMs runs
  in whole waves (wave quantisation: FLOPs).
The CUDA-graph engine's fused forward is `engines.graphs_forward_ops`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prunesearch.pruning.architectures import config_value, get_spec, model_shape
from prunesearch.pruning.plan import LayerPlan, PrunePlan

Number = float | np.ndarray
MATMUL_KINDS = ("gemm", "attention")


@dataclass(frozen=True)
class ModelDims:
    """What the cost of a pruned decoder depends on: its base dimensions and the plan's kept sizes."""

    hidden: int
    head_dim: int
    group: int  # query heads per KV head
    vocab: int
    layers: tuple[LayerPlan, ...]
    tied_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False


@dataclass(frozen=True)
class GemmTile:
    """The tile a device's GEMM kernels work in: `m` tokens x `n` outputs, `k` inputs per step; `sms` tiles run at
    once (one wave). A GEMM is priced as if padded to whole tiles, and to whole waves once it needs more than one."""

    m: int
    n: int
    k: int
    sms: int = 0


def _pad(x: int, step: int) -> int:
    return -(-int(x) // step) * step


def gemm_cost(tokens: int, k: int, n: int, b: int, bias: bool = False, tile: GemmTile | None = None):
    """(FLOPs, bytes) of a GEMM of `tokens` x `k` inputs -> `n` outputs, padded to `tile` (see the module doc)."""
    if tile is None:
        return 2.0 * tokens * k * n, b * (k * n + tokens * (k + n) + (n if bias else 0))
    m_pad, n_pad, k_pad = _pad(tokens, tile.m), _pad(n, tile.n), _pad(k, tile.k)
    tiles = (m_pad // tile.m) * (n_pad // tile.n)
    slots = _pad(tiles, tile.sms) if tile.sms and tiles > tile.sms else tiles  # a partial last wave costs a wave
    flops = 2.0 * slots * tile.m * tile.n * k_pad
    return flops, b * (k_pad * n_pad + tokens * (k + n) + (n if bias else 0))


@dataclass(frozen=True)
class Op:
    """One operation: `kind` is "gemm", "attention" (both count as matmul FLOPs) or "memory"."""

    name: str
    kind: str
    flops: Number
    bytes: Number
    launches: int
    repeat: int = 1  # identical layers are priced once and counted `repeat` times


def model_dims(config: Mapping[str, Any] | Any, plan: PrunePlan | None = None) -> ModelDims:
    """Read dimensions from a transformers config or its dict; `plan` None means dense."""
    shape = model_shape(config)
    spec = get_spec(config_value(config, "model_type"))
    plan = (plan or PrunePlan.dense(shape)).validate_for(shape)
    attention_bias = bool(config_value(config, "attention_bias", False))
    return ModelDims(
        hidden=shape.hidden_size,
        head_dim=shape.head_dim,
        group=shape.group_size,
        vocab=plan.vocab or shape.vocab_size,
        layers=plan.layers,
        tied_embeddings=bool(config_value(config, "tie_word_embeddings", False)),
        qkv_bias=spec.qkv_bias or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(config_value(config, "mlp_bias", False)),
        qk_norm=spec.qk_norm,
    )


def gemm_op(name: str, tokens: int, k: int, n: int, b: int, bias: bool = False, tile: GemmTile | None = None) -> Op:
    flops, moved = gemm_cost(tokens, k, n, b, bias, tile)
    return Op(name, "gemm", flops, moved, 1)


def memory_op(name: str, elements: Number, b: int, launches: int, flops_per: float = 1.0) -> Op:
    return Op(name, "memory", flops_per * elements, b * elements, launches)


def _norm(name: str, tokens: Number, width: int, b: int) -> Op:
    # eager RMSNorm: pow, mean, add, rsqrt, mul, mul; reads and writes the activations once
    return Op(name, "memory", 4.0 * tokens * width, b * (2 * tokens * width + width), 6)


def attention_ops(
    dims: ModelDims,
    heads: int,
    batch: int,
    q: int,
    context: Number,
    b: int,
    dynamic_cache: bool,
    tile: GemmTile | None = None,
):
    """The attention sublayer with `heads` query heads: q new tokens per sequence, `context` keys."""
    d, hd, kv = dims.hidden, dims.head_dim, heads // dims.group
    tokens = batch * q
    ops = [
        _norm("attn_norm", tokens, d, b),
        gemm_op("q_proj", tokens, d, heads * hd, b, dims.qkv_bias, tile),
        gemm_op("k_proj", tokens, d, kv * hd, b, dims.qkv_bias, tile),
        gemm_op("v_proj", tokens, d, kv * hd, b, dims.qkv_bias, tile),
        memory_op("rope", 6 * tokens * (heads + kv) * hd, b, 10),
    ]
    if dims.qk_norm:
        ops.append(_norm("qk_norm", tokens * (heads + kv), hd, b))
    cache = 2 * batch * kv * hd
    cache_moved = cache * (2 * context - q) if dynamic_cache else cache * q
    scores = Op(
        "sdpa",
        "attention",
        4.0 * batch * heads * q * context * hd,
        b * (2 * tokens * heads * hd + cache * context),
        1,
    )
    ops += [memory_op("kv_cache_write", cache_moved, b, 2, 0.0), scores]
    ops += [
        gemm_op("o_proj", tokens, heads * hd, d, b, dims.o_bias, tile),
        memory_op("attn_residual", 3 * tokens * d, b, 1),
    ]
    return ops


def mlp_ops(dims: ModelDims, ffn: int, tokens: int, b: int, tile: GemmTile | None = None) -> list[Op]:
    """The gated MLP sublayer with `ffn` channels."""
    d = dims.hidden
    return [
        _norm("mlp_norm", tokens, d, b),
        gemm_op("gate_proj", tokens, d, ffn, b, dims.mlp_bias, tile),
        gemm_op("up_proj", tokens, d, ffn, b, dims.mlp_bias, tile),
        memory_op("silu_mul", 5 * tokens * ffn, b, 2),
        gemm_op("down_proj", tokens, ffn, d, b, dims.mlp_bias, tile),
        memory_op("mlp_residual", 3 * tokens * d, b, 1),
    ]


def forward_ops(
    dims: ModelDims,
    batch: int,
    q: int,
    context: Number,
    dtype_bytes: int,
    logits_per_sequence: int = 1,
    dynamic_cache: bool = False,
    tile: GemmTile | None = None,
) -> list[Op]:
    """Every op of one forward: `q` new tokens per sequence, `context` keys (cache + new), logits for the last
    `logits_per_sequence` positions (1 in generation; q to price a full-sequence forward)."""
    b, tokens, d = dtype_bytes, batch * q, dims.hidden
    ops = [
        memory_op("embedding", 2 * tokens * d, b, 1, 0.0),
        memory_op("rotary_tables", tokens * dims.head_dim, b, 6),
    ]
    for layer, count in Counter(dims.layers).items():
        layer_ops = []
        if layer.heads:
            layer_ops += attention_ops(dims, layer.heads, batch, q, context, b, dynamic_cache, tile)
        if layer.ffn:
            layer_ops += mlp_ops(dims, layer.ffn, tokens, b, tile)
        ops += [replace(op, repeat=count) for op in layer_ops]
    logits = batch * logits_per_sequence
    ops += [_norm("final_norm", tokens, d, b), gemm_op("lm_head", logits, d, dims.vocab, b, tile=tile)]
    ops.append(memory_op("sample", logits * dims.vocab, b, 1))
    return ops


def matmul_flops(ops: list[Op]) -> Number:
    """FLOPs of GEMMs and attention only: what `torch.utils.flop_counter.FlopCounterMode` counts."""
    return sum(op.flops * op.repeat for op in ops if op.kind in MATMUL_KINDS)


def param_count(dims: ModelDims) -> int:
    """Parameters of the pruned model (removed sublayers take their norm with them)."""
    d, hd = dims.hidden, dims.head_dim
    total = dims.vocab * d * (1 if dims.tied_embeddings else 2) + d  # embeddings, lm_head, final norm
    for layer in dims.layers:
        if layer.heads:
            q, kv = layer.heads * hd, layer.heads // dims.group * hd
            total += d + 2 * d * (q + kv) + (q + 2 * kv) * dims.qkv_bias + d * dims.o_bias
            total += 2 * hd * dims.qk_norm
        if layer.ffn:
            total += d + 3 * d * layer.ffn + (2 * layer.ffn + d) * dims.mlp_bias
    return total


def kv_bytes_per_token(dims: ModelDims, dtype_bytes: int) -> int:
    """KV-cache bytes one token of one sequence occupies, over all layers that keep attention."""
    kv_heads = sum(layer.heads // dims.group for layer in dims.layers)
    return 2 * kv_heads * dims.head_dim * dtype_bytes
