"""The serving engines a latency is priced for, as op lists. Pure logic: numpy only.

- `eager`: transformers' `generate` in eager PyTorch: `ops.forward_ops`, one kernel launch per PyTorch op, each
  paying the profile's host launch/dispatch cost serially with the GPU work (batch 1), plus a per-step cost.
- `graphs`: a CUDA-graph serving engine (vLLM, SGLang, TensorRT-LLM): fused QKV and gate/up GEMMs, residual add
  fused into the RMSNorm, rotary embedding fused with the paged-KV-cache write, one attention kernel per layer
  (FlashAttention: causal prefill computes only the lower triangle), no per-kernel host cost. The KV cache is
  written in place; decode attention reads every cached key and value of every sequence in the batch.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from prunesearch.choices import Engine

from .latency import Workload
from .ops import GemmTile, ModelDims, Number, Op, forward_ops, gemm_op, memory_op


def _add_norm(name: str, tokens: Number, width: int, b: int) -> Op:
    # fused residual add + RMSNorm: reads x and the residual, writes the new residual and the normed x
    return Op(name, "memory", 5.0 * tokens * width, b * (4 * tokens * width + width), 1)


def kv_read_bytes(dims: ModelDims, kv_heads: int, batch: int, context: Number, b: int) -> Number:
    """Bytes of KV cache one attention kernel reads: keys and values of `context` positions, every sequence."""
    return 2 * batch * kv_heads * dims.head_dim * context * b


def graphs_attention_ops(
    dims: ModelDims, heads: int, batch: int, q: int, context: Number, b: int, tile: GemmTile | None
) -> list[Op]:
    """The fused attention sublayer: add+norm, QKV GEMM, (q/k norm), rope+cache write, attention, o_proj."""
    d, hd, kv = dims.hidden, dims.head_dim, heads // dims.group
    tokens = batch * q
    ops = [
        _add_norm("attn_add_norm", tokens, d, b),
        gemm_op("qkv_proj", tokens, d, (heads + 2 * kv) * hd, b, dims.qkv_bias, tile),
    ]
    if dims.qk_norm:
        ops.append(Op("qk_norm", "memory", 4.0 * tokens * (heads + kv) * hd, b * 2 * tokens * (heads + kv) * hd, 1))
    ops.append(memory_op("rope_cache_write", tokens * hd * (2 * heads + 4 * kv), b, 1, 3.0))
    keys_per_query = context - (q - 1) / 2  # causal: query i of q sees context - q + 1 + i keys
    ops.append(
        Op(
            "attention",
            "attention",
            4.0 * batch * heads * q * keys_per_query * hd,
            b * 2 * tokens * heads * hd + kv_read_bytes(dims, kv, batch, context, b),
            1,
        )
    )
    ops.append(gemm_op("o_proj", tokens, heads * hd, d, b, dims.o_bias, tile))
    return ops


def graphs_mlp_ops(dims: ModelDims, ffn: int, tokens: int, b: int, tile: GemmTile | None) -> list[Op]:
    """The fused MLP sublayer: add+norm, gate/up GEMM, SiLU-and-mul, down GEMM."""
    d = dims.hidden
    return [
        _add_norm("mlp_add_norm", tokens, d, b),
        gemm_op("gate_up_proj", tokens, d, 2 * ffn, b, dims.mlp_bias, tile),
        Op("silu_mul", "memory", 5.0 * tokens * ffn, b * 3 * tokens * ffn, 1),
        gemm_op("down_proj", tokens, ffn, d, b, dims.mlp_bias, tile),
    ]


def graphs_forward_ops(
    dims: ModelDims, batch: int, q: int, context: Number, b: int, tile: GemmTile | None = None
) -> list[Op]:
    """Every kernel of one CUDA-graph engine forward (logits for the last position of each sequence)."""
    tokens, d = batch * q, dims.hidden
    ops = [memory_op("embedding", 2 * tokens * d, b, 1, 0.0)]
    for layer, count in Counter(dims.layers).items():
        layer_ops = []
        if layer.heads:
            layer_ops += graphs_attention_ops(dims, layer.heads, batch, q, context, b, tile)
        if layer.ffn:
            layer_ops += graphs_mlp_ops(dims, layer.ffn, tokens, b, tile)
        ops += [Op(op.name, op.kind, op.flops, op.bytes, op.launches, count) for op in layer_ops]
    ops += [_add_norm("final_add_norm", tokens, d, b), gemm_op("lm_head", batch, d, dims.vocab, b, tile=tile)]
    ops.append(memory_op("sample", batch * dims.vocab, b, 1))
    return ops


def phase_ops(
    dims: ModelDims,
    workload: Workload,
    engine: Engine = Engine.EAGER,
    dynamic_cache: bool = False,
    tile: GemmTile | None = None,
) -> tuple[list[Op], list[Op]]:
    """Prefill ops (batch x prompt) and decode ops with one array entry per decode step's key length.
    `dynamic_cache` (eager only) prices transformers' copying DynamicCache."""
    b, batch, prompt = workload.dtype_bytes, workload.batch, workload.prompt_tokens
    contexts = prompt + np.arange(1, max(workload.decode_steps, 1) + 1, dtype=float)
    if engine == Engine.GRAPHS:
        return (
            graphs_forward_ops(dims, batch, prompt, prompt, b, tile),
            graphs_forward_ops(dims, batch, 1, contexts, b, tile),
        )
    prefill = forward_ops(dims, batch, prompt, prompt, b, dynamic_cache=dynamic_cache, tile=tile)
    decode = forward_ops(dims, batch, 1, contexts, b, dynamic_cache=dynamic_cache, tile=tile)
    return prefill, decode
