"""Writing a pruned model as a `save_pretrained`-style checkpoint directory, and reading base models."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from prunesearch.choices import TORCH_DTYPE_NAMES, DType

from . import draftvocab, specdecode
from .architectures import get_spec
from .modelcard import MODEL_CARD_FILE, render_model_card
from .modeling import REMOTE_MODELING_FILE, remote_modeling_source
from .plan import PrunePlan

PLAN_FILE = "prune_plan.json"
PROVENANCE_FILE = "provenance.json"
TOKEN_MAP_FILE = "token_map.json"
SPECULATIVE_FILE = "speculative.json"  # only in drafts: what the draft is for, and what it predicts (docs/drafts.md)
DRAFT_ADAPTER_FILE = "draft_vocab.py"  # draftvocab.py as shipped beside a trimmed draft
CUSTOM_GENERATE_FILE = "custom_generate/generate.py"  # specdecode.py, as transformers' custom_generate loads it
SPECULATIVE_FORMAT = 1

DTYPES: dict[DType, torch.dtype] = {dtype: getattr(torch, name) for dtype, name in TORCH_DTYPE_NAMES.items()}


class DeviceError(ValueError):
    """A device that torch does not know, or one this machine does not have."""


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def check_device(device: str) -> torch.device:
    """A torch device that exists here, or a clear error."""
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but no CUDA GPU is available here")
    return resolved


def default_device() -> str:
    """The device work runs on when none is named: the GPU where there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base_model(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a dense base checkpoint and its tokenizer from a local directory (never from the network)."""
    check_device(device)
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    get_spec(config.model_type)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device).eval(), tokenizer


def export_checkpoint(
    model: PreTrainedModel,
    tokenizer,
    plan: PrunePlan,
    out_dir: str | Path,
    provenance: Mapping[str, Any],
    *,
    kept_token_ids: Sequence[int] | None = None,
) -> Path:
    """Write weights (safetensors), config, tokenizer, generation config, plan, provenance, token map and the
    model card (README.md); a draft (provenance `search.speculative`) also gets `speculative.json`.

    Heterogeneous models also get `modeling_pruned.py`, so they load with trust_remote_code=True."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if "auto_map" in model.config.to_dict():
        (out / REMOTE_MODELING_FILE).write_text(remote_modeling_source(get_spec(model.config.model_type)))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    _write_json(out / PLAN_FILE, plan.to_dict())
    _write_json(out / PROVENANCE_FILE, dict(provenance))
    if kept_token_ids is not None:
        _write_json(out / TOKEN_MAP_FILE, {"new_to_original": list(kept_token_ids)})
    draft = speculative_file(provenance, trimmed=kept_token_ids is not None)
    if draft is not None:
        _write_json(out / SPECULATIVE_FILE, draft)
        if kept_token_ids is not None:
            write_draft_adapter(out)
    write_model_card(out)
    return out


def write_draft_adapter(export_dir: str | Path) -> Path:
    """Copy the trimmed-vocabulary adapter (`draftvocab.py`, torch and transformers only) into an export as
    `draft_vocab.py`, so a trimmed draft runs as an assistant without prunesearch installed (docs/drafts.md)."""
    path = Path(export_dir) / DRAFT_ADAPTER_FILE
    path.write_text(Path(draftvocab.__file__).read_text())
    return path


def write_custom_generate(export_dir: str | Path) -> Path:
    """Ship the lean speculative loop (`specdecode.py`, torch and transformers only) in an export as transformers'
    `custom_generate/generate.py`: `target.generate(ids, custom_generate=export_dir, trust_remote_code=True,
    assistant_model=draft, max_new_tokens=N, lookahead=g)` then decodes with it (docs/drafts.md, "A lean loop").

    Not for the draft's own folder: transformers loads a model folder's `custom_generate` as that model's
    `generate`, so a draft holding it would run the lean loop in place of the plain decoding assisted generation
    asks of it. Exports therefore do not write it; give it a folder of its own."""
    path = Path(export_dir) / CUSTOM_GENERATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(Path(specdecode.__file__).read_text())
    return path


def speculative_file(provenance: Mapping[str, Any], *, trimmed: bool) -> dict[str, Any] | None:
    """`speculative.json` of a draft: its target (the base model: path and the fingerprint the provenance
    records), the search's draft record (acceptance, lookahead, temperature, predicted speedup, step costs,
    coverage, hardware, engine) and the token map's file when the vocabulary was trimmed; None for a non-draft."""
    draft = (provenance.get("search") or {}).get("speculative")
    if not draft:
        return None
    target = {"path": provenance.get("base_model"), "fingerprint": provenance.get("base_model_fingerprint")}
    return {"target": target, **draft, "token_map": TOKEN_MAP_FILE if trimmed else None, "format": SPECULATIVE_FORMAT}


def read_speculative(checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's `speculative.json`, or None when it is not a draft."""
    path = Path(checkpoint) / SPECULATIVE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_card(checkpoint: str | Path) -> Path:
    """(Re)write the checkpoint's README.md from its config, plan and provenance (after a heal too)."""
    checkpoint = Path(checkpoint)
    config, plan, provenance = (_read_json(checkpoint / name) for name in ("config.json", PLAN_FILE, PROVENANCE_FILE))
    path = checkpoint / MODEL_CARD_FILE
    path.write_text(render_model_card(config, plan, provenance, read_speculative(checkpoint)))
    return path


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_token_map(checkpoint: str | Path) -> list[int] | None:
    """new id -> original id, or None when the vocabulary was not trimmed."""
    path = Path(checkpoint) / TOKEN_MAP_FILE
    return json.loads(path.read_text())["new_to_original"] if path.is_file() else None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
