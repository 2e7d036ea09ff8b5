"""One streaming pass over calibration text that records what every importance criterion needs.

Forward hooks collect, per layer, the first two moments of the inputs to o_proj (per attention channel) and to
down_proj (per MLP channel), and the block influence of each layer (1 - cosine between its input and output
hidden states, as ShortGPT measures it). The statistics are criterion-independent, so one cached pass serves
magnitude, wanda and flap alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from prunesearch.home import home_dir

from .modules import attention_parts, decoder, decoder_layers, mlp_parts, spec_of

STATS_FORMAT = 1


@dataclass
class ActivationStats:
    """Per-layer sums over calibration tokens (float64, on CPU)."""

    tokens: int
    attn_sum: list[torch.Tensor]  # [heads * head_dim] input of o_proj
    attn_sumsq: list[torch.Tensor]
    mlp_sum: list[torch.Tensor]  # [intermediate] input of down_proj
    mlp_sumsq: list[torch.Tensor]
    influence: torch.Tensor  # [layers] mean (1 - cos(h_in, h_out)) over tokens

    def mean(self, part: str, layer: int) -> torch.Tensor:
        return getattr(self, f"{part}_sum")[layer] / max(self.tokens, 1)

    def variance(self, part: str, layer: int) -> torch.Tensor:
        mean = self.mean(part, layer)
        return (getattr(self, f"{part}_sumsq")[layer] / max(self.tokens, 1) - mean**2).clamp_min(0)

    def norm(self, part: str, layer: int) -> torch.Tensor:
        """L2 norm of each channel over all calibration tokens (Wanda's ||X_j||)."""
        return getattr(self, f"{part}_sumsq")[layer].sqrt()


class _Accumulator:
    def __init__(self, num_layers: int):
        self.sums: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.influence = torch.zeros(num_layers, dtype=torch.float64)
        self.tokens = 0

    def add_moments(self, key: tuple[str, int], x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        moments = [flat.sum(0).cpu(), (flat * flat).sum(0).cpu()]
        if key in self.sums:
            for total, value in zip(self.sums[key], moments, strict=True):
                total += value
        else:
            self.sums[key] = moments

    def add_influence(self, layer: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
        self.influence[layer] += (1 - cos).sum().cpu()


def _register_hooks(model, acc: _Accumulator) -> list:
    spec = spec_of(model)
    handles = []
    for index, layer in enumerate(decoder_layers(model)):
        o_proj, down_proj = attention_parts(layer, spec).o_proj, mlp_parts(layer, spec).output
        handles.append(o_proj.register_forward_pre_hook(_moment_hook(acc, ("attn", index))))
        handles.append(down_proj.register_forward_pre_hook(_moment_hook(acc, ("mlp", index))))
        handles.append(layer.register_forward_hook(_influence_hook(acc, index), with_kwargs=True))
    return handles


def _moment_hook(acc: _Accumulator, key: tuple[str, int]):
    def hook(_module, args):
        acc.add_moments(key, args[0])

    return hook


def _influence_hook(acc: _Accumulator, index: int):
    def hook(_module, args, kwargs, output):
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = output[0] if isinstance(output, tuple) else output
        acc.add_influence(index, h_in, h_out)

    return hook


@torch.inference_mode()
def collect_activation_stats(
    model, blocks: torch.Tensor, *, batch_size: int = 8, progress: bool = True
) -> ActivationStats:
    """Run `blocks` ([n, seq_len] token ids) through `model` once and return the per-layer statistics."""
    num_layers = model.config.num_hidden_layers
    acc = _Accumulator(num_layers)
    handles = _register_hooks(model, acc)
    device = next(model.parameters()).device
    # The decoder stack without the LM head: nothing here needs logits, and the head is often the largest op.
    stack = decoder(model)
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc="calibration", disable=not progress):
            batch = blocks[start : start + batch_size].to(device)
            stack(input_ids=batch, use_cache=False)
            acc.tokens += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    return ActivationStats(
        tokens=acc.tokens,
        attn_sum=[acc.sums["attn", i][0] for i in range(num_layers)],
        attn_sumsq=[acc.sums["attn", i][1] for i in range(num_layers)],
        mlp_sum=[acc.sums["mlp", i][0] for i in range(num_layers)],
        mlp_sumsq=[acc.sums["mlp", i][1] for i in range(num_layers)],
        influence=acc.influence / max(acc.tokens, 1),
    )


def model_fingerprint(model) -> str:
    """A stable digest of a model's config and weights (a strided sample of each tensor keeps it cheap).

    Where the model was loaded from is left out (`_name_or_path`), so a copied or moved checkpoint keeps its
    fingerprint: exports name their target by it."""
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where cached statistics live: `home_dir()/cache/stats`."""
    return home_dir() / "cache" / "stats"


def save_stats(stats: ActivationStats, path: Path) -> None:
    tensors = {"influence": stats.influence, "tokens": torch.tensor([stats.tokens])}
    for f in fields(stats):
        if f.name.endswith(("_sum", "_sumsq")):
            for i, t in enumerate(getattr(stats, f.name)):
                tensors[f"{f.name}.{i}"] = t.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": str(STATS_FORMAT)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry


def load_stats(path: Path) -> ActivationStats:
    tensors = load_file(str(path))
    num_layers = len(tensors["influence"])

    def series(name: str) -> list[torch.Tensor]:
        return [tensors[f"{name}.{i}"] for i in range(num_layers)]

    return ActivationStats(
        tokens=int(tensors["tokens"][0]),
        attn_sum=series("attn_sum"),
        attn_sumsq=series("attn_sumsq"),
        mlp_sum=series("mlp_sum"),
        mlp_sumsq=series("mlp_sumsq"),
        influence=tensors["influence"],
    )


def token_blocks_fingerprint(blocks: torch.Tensor) -> str:
    """Digest of the exact calibration token blocks (so tokenizer, text and block size all count)."""
    digest = hashlib.sha256(str(tuple(blocks.shape)).encode())
    digest.update(blocks.to(torch.int64).cpu().numpy().tobytes())
    return digest.hexdigest()


def cached_activation_stats(
    model, blocks: torch.Tensor, *, batch_size: int = 8, progress: bool = True
) -> tuple[ActivationStats, bool]:
    """Statistics for (model, calibration blocks), from the on-disk cache when present.

    The cache key is the model fingerprint and the calibration fingerprint. Returns (stats, was_cached)."""
    key = hashlib.sha256(
        f"{STATS_FORMAT}:{model_fingerprint(model)}:{token_blocks_fingerprint(blocks)}".encode()
    ).hexdigest()[:32]
    path = cache_dir() / f"{key}.safetensors"
    if path.is_file():
        return load_stats(path), True
    stats = collect_activation_stats(model, blocks, batch_size=batch_size, progress=progress)
    save_stats(stats, path)
    return stats, False
