"""The prune job end to end: base checkpoint + plan (+ calibration) -> importance -> surgery -> export."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from prunesearch.choices import CriterionName, DType, Repair

from .architectures import get_spec, model_shape
from .calibration import CalibrationDoc, load_calibration, token_blocks
from .deploy import Runtimes, compensated_parts, runtimes_for
from .export import export_checkpoint, load_base_model, parse_dtype
from .importance import ImportanceScores, compute_importance
from .modeling import model_class_for
from .modules import attention_parts, decoder_layers, mlp_parts, spec_of
from .plan import PrunePlan
from .refit import RIDGE, fit_final_map, fold_into_head
from .stats import cached_activation_stats, model_fingerprint, token_blocks_fingerprint
from .surgery import apply_plan
from .targetmass import as_weights, calibration_stream, target_token_mass
from .vocab import select_kept_tokens, token_frequencies, trim_tokenizer


@dataclass(frozen=True)
class ImportanceCalibration:
    """The calibration file one importance pass reads, and how much of it. (A search's `CalibrationSampling` is
    the spec's JSON form of the amount; `search.results.export_trial` turns it into this.)"""

    path: Path | None = None
    seq_len: int = 256
    max_tokens: int = 65_536
    batch_size: int = 8


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_config_parameters(config) -> int:
    """Parameters of the model a config describes, without materialising weights."""
    with torch.device("meta"):
        return count_parameters(model_class_for(config)(config))


def layer_shapes(model) -> list[dict[str, int]]:
    """Per decoder layer: kept query heads, KV heads and MLP channels, read from the modules themselves."""
    spec, head_dim = spec_of(model), model.config.head_dim
    shapes = []
    for layer in decoder_layers(model):
        attn, mlp = attention_parts(layer, spec), mlp_parts(layer, spec)
        shapes.append(
            {
                "heads": attn.q_proj.out_features // head_dim if attn is not None else 0,
                "kv_heads": attn.k_proj.out_features // head_dim if attn is not None else 0,
                "ffn": mlp.output.in_features if mlp is not None else 0,
            }
        )
    return shapes


@dataclass(frozen=True)
class _ImportanceRun:
    scores: ImportanceScores
    calibration_fingerprint: str | None = None
    calibration_tokens: int = 0
    cached: bool = False


def _importance(model, criterion: str, docs: list[CalibrationDoc] | None, tokenizer, settings) -> _ImportanceRun:
    if docs is None:
        return _ImportanceRun(compute_importance(model, criterion))
    blocks = token_blocks(tokenizer, docs, settings.seq_len, settings.max_tokens)
    stats, cached = cached_activation_stats(model, blocks, batch_size=settings.batch_size)
    scores = compute_importance(model, criterion, stats)
    return _ImportanceRun(scores, token_blocks_fingerprint(blocks), blocks.numel(), cached)


def _kept_tokens(
    plan: PrunePlan, model, tokenizer, docs: list[CalibrationDoc] | None, seq_len: int, draft_temperature: float | None
) -> list[int] | None:
    """Kept token ids, or None when nothing is trimmed: the most frequent in the calibration text, or for a draft
    (`draft_temperature` set) those the target emits most there, as its search chose them (`targetmass`). The
    model's vocabulary may be padded beyond the tokenizer's; a plan that keeps exactly the tokenizer's tokens then
    drops the padding rows."""
    if plan.vocab is None or plan.vocab >= model.config.vocab_size:
        return None
    if draft_temperature is not None and docs:
        stream = calibration_stream(tokenizer, docs, seq_len)
        weights = as_weights(target_token_mass(model, stream, draft_temperature)[0])
        return select_kept_tokens(tokenizer, weights, plan.vocab)
    texts = [doc.coverage_text for doc in docs] if docs else []
    return select_kept_tokens(tokenizer, token_frequencies(tokenizer, texts), plan.vocab)


def prune_checkpoint(
    model_dir: str | Path,
    plan: PrunePlan,
    out_dir: str | Path,
    *,
    criterion: str | None = None,
    calibration: ImportanceCalibration = ImportanceCalibration(),
    dtype: str = DType.FP32,
    device: str = "cpu",
    stock_only: bool = False,
    search: Mapping[str, Any] | None = None,
    repair: str = Repair.NONE,
    draft_temperature: float | None = None,
) -> dict[str, Any]:
    """Prune the checkpoint in `model_dir` by `plan`, write the result to `out_dir`, return a summary.

    `stock_only` keeps bias compensation only where the stock config can hold the bias (`deploy: stock`);
    `search` (the trial's metrics and how it was priced) goes into the provenance and the model card;
    `repair` "refit" folds the least-squares map of `pruning/refit.py`, fitted on the calibration text, into the
    LM head; `draft_temperature` (a draft's decoding temperature) keeps the tokens the target emits at it rather
    than the text's most frequent ones."""
    started = time.perf_counter()
    target_dtype = parse_dtype(dtype)
    model, tokenizer = load_base_model(model_dir, device=device)
    shape = model_shape(model.config, num_special_tokens=len(tokenizer.all_special_ids))
    plan.validate_for(shape)
    docs = load_calibration(calibration.path, tokenizer) if calibration.path else None
    criterion = criterion or (CriterionName.FLAP if docs else CriterionName.MAGNITUDE)
    run = _importance(model, criterion, docs, tokenizer, calibration)
    spec = get_spec(model.config.model_type)
    if stock_only:
        run = replace(run, scores=run.scores.stock_compensation(spec))
    kept_tokens = _kept_tokens(plan, model, tokenizer, docs, calibration.seq_len, draft_temperature)
    refit = _refit(model, plan, run.scores, docs, tokenizer, calibration) if repair == Repair.REFIT else None
    pruned = apply_plan(model, plan, run.scores, kept_token_ids=kept_tokens, dtype=target_dtype)
    if refit is not None:
        fold_into_head(pruned, refit[0])
    new_tokenizer = trim_tokenizer(tokenizer, kept_tokens) if kept_tokens is not None else tokenizer
    biased = compensated_parts(spec, shape, plan, run.scores.compensating_parts(spec))
    runtimes = runtimes_for(spec, shape, plan, biased)
    provenance = _provenance(model, model_dir, criterion, run, calibration.path) | {"runtimes": runtimes.to_dict()}
    if search is not None:
        provenance["search"] = dict(search)
    if refit is not None:
        provenance["repair"] = {"method": str(Repair.REFIT), "ridge": RIDGE, "tokens": refit[1]}
    if kept_tokens is not None:
        provenance["vocabulary"] = _vocabulary_choice(draft_temperature if docs else None)
    _check_runtimes(runtimes, pruned.config)
    export_checkpoint(pruned, new_tokenizer, plan, out_dir, provenance, kept_token_ids=kept_tokens)
    return {
        "out": str(out_dir),
        "criterion": criterion,
        "stock_loadable": runtimes.stock_transformers,
        "runtimes": runtimes.to_dict(),
        "parameters": {"before": count_parameters(model), "after": count_parameters(pruned)},
        "vocab": {"before": model.config.vocab_size, "after": pruned.config.vocab_size},
        "layers": layer_shapes(pruned),
        "importance_cached": run.cached,
        "repair": str(repair),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _refit(model, plan: PrunePlan, scores: ImportanceScores, docs, tokenizer, calibration) -> tuple[torch.Tensor, int]:
    """The repair map of the plan's model (before any vocabulary trim: the map acts on hidden states) fitted on
    the calibration blocks the search scored, and how many tokens it was fitted on."""
    if not docs:
        raise ValueError("repair 'refit' fits a map on calibration text: give a calibration file")
    blocks = token_blocks(tokenizer, docs, calibration.seq_len, calibration.max_tokens)
    blocks = blocks.to(next(model.parameters()).device)
    candidate = apply_plan(model, replace(plan, vocab=None), scores)
    return fit_final_map(model, candidate, blocks, batch_size=calibration.batch_size), blocks.numel()


def _check_runtimes(runtimes: Runtimes, config) -> None:
    """The decision from the plan and the config surgery wrote must agree (a stock config has no auto_map)."""
    stock_config = "auto_map" not in config.to_dict()
    if runtimes.stock_transformers != stock_config:
        raise RuntimeError(f"runtime decision ({runtimes.architecture}) disagrees with the exported config")


def _vocabulary_choice(draft_temperature: float | None) -> dict[str, Any]:
    """How a trimmed vocabulary was chosen, for the provenance."""
    if draft_temperature is None:
        return {"kept_by": "calibration token frequency"}
    return {"kept_by": "target emissions on the calibration text", "temperature": draft_temperature}


def _provenance(model, model_dir, criterion: str, run: _ImportanceRun, calibration_path) -> dict:
    return {
        "tool": "prunesearch",
        "base_model": str(Path(model_dir).resolve()),
        "base_model_fingerprint": model_fingerprint(model),
        "criterion": criterion,
        "bias_compensation": run.scores.compensates_bias,
        "calibration_file": str(calibration_path) if calibration_path else None,
        "calibration_fingerprint": run.calibration_fingerprint,
        "calibration_tokens": run.calibration_tokens,
    }


def dense_plan_dict(config) -> dict[str, Any]:
    return PrunePlan.dense(model_shape(config)).to_dict()


def describe_config(config) -> dict[str, Any]:
    """What `prunesearch inspect` prints: the architecture and the dense plan that reproduces it."""
    shape = model_shape(config)
    return {
        "model_type": config.model_type,
        "layers": shape.num_layers,
        "heads": shape.num_heads,
        "kv_groups": shape.num_kv_heads,
        "group_size": shape.group_size,
        "head_dim": shape.head_dim,
        "hidden_size": shape.hidden_size,
        "mlp": shape.intermediate_size,
        "vocab": shape.vocab_size,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "parameters": count_config_parameters(config),
        "dense_plan": dense_plan_dict(config),
    }
