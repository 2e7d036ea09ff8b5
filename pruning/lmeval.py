"""Evaluate a checkpoint with lm-evaluation-harness, the way the field reports quality.

The model is built by the project's own loader (`modeling.load_pruned`: stock classes for uniform exports, the
pruned modeling for heterogeneous ones, no remote code run) and handed to the harness as
`HFLM(pretrained=model, tokenizer=...)`, so every export loads exactly as prunesearch loads it. The tokenizer is
the checkpoint's own: a trimmed-vocabulary export ships its re-indexed tokenizer (which still encodes any text),
as `pruning.evaluate` reads it; bits per byte are comparable across vocabularies.

lm-eval is an optional dependency (the `[eval]` extra), imported only when an evaluation runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from prunesearch.choices import TORCH_DTYPE_NAMES, DType

from . import lmtasks
from .export import TOKEN_MAP_FILE, check_device, default_device

INSTALL_HINT = 'pip install "prunesearch[eval]"'
# What the harness and the datasets library would print at INFO/WARNING (task building, "pretrained is not a
# str", cache notes): kept off the user's terminal unless asked for.
_NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "accelerate")
# What the report keeps of the harness's own results (what its table reads); it drops the task configs.
_HARNESS_KEYS = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better")
_SEED = 1234  # lm_eval.simple_evaluate's default numpy, torch and few-shot seed


class EvalUnavailable(RuntimeError):
    """lm-evaluation-harness is not installed."""


class EvalInputError(ValueError):
    """An evaluation that cannot run as asked: no tasks, a bad task file or model, an unknown task."""


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate. `data`: text files scored by rolling log-likelihood (perplexity, bits per byte);
    `tasks`: harness task names, task YAML files, or multiple-choice JSONL files ({"question", "choices",
    "answer"} per line)."""

    model: Path
    data: Sequence[Path] = ()
    tasks: Sequence[str] = ()
    device: str | None = None
    dtype: DType = DType.FP32
    batch_size: int = 8
    max_length: int | None = None  # tokens per rolling window; default the model's max_position_embeddings
    limit: int | None = None  # documents per task (for a quick look; the figures are then partial)
    bootstrap_iters: int = 0  # the harness's bootstrapped stderr for perplexities; 0: none (fast)
    verbose: bool = False

    def check(self) -> None:
        if not self.data and not self.tasks:
            raise EvalInputError("nothing to evaluate: name text files (--data) or tasks (--tasks)")
        if self.batch_size < 1:
            raise EvalInputError(f"batch size must be at least 1, not {self.batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise EvalInputError(f"max length must be at least 2 tokens, not {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise EvalInputError(f"limit must be at least 1, not {self.limit}")
        if not (Path(self.model) / "config.json").is_file():
            raise EvalInputError(f"{self.model} is not a model directory (no config.json)")


def task_specs(request: EvalRequest) -> tuple[list[str | dict[str, Any]], bool]:
    """The harness's task list for `request` (inline configs for local files, paths for YAML files, names as
    they are) and whether any name needs the harness's registry of built-in tasks."""
    specs: list[str | dict[str, Any]] = []
    try:
        specs += [lmtasks.perplexity_task(Path(path)) for path in request.data]
        for task in request.tasks:
            if lmtasks.is_yaml(task):
                if not Path(task).is_file():
                    raise EvalInputError(f"task file {task} not found")
                specs.append(str(Path(task).resolve()))
            elif lmtasks.is_multiple_choice_file(task):
                specs.append(lmtasks.multiple_choice_task(Path(task)))
            else:
                specs.append(task)
    except lmtasks.TaskFileError as exc:
        raise EvalInputError(str(exc)) from None
    _unique_names(specs)
    needs_registry = any(isinstance(spec, str) and not lmtasks.is_yaml(spec) for spec in specs)
    return specs, needs_registry


def _unique_names(specs: list[str | dict[str, Any]]) -> None:
    """Number the generated tasks whose files share a name (`ppl_eval`, `ppl_eval_2`, ...)."""
    seen: set[str] = {spec for spec in specs if isinstance(spec, str)}
    for spec in specs:
        if isinstance(spec, dict):
            base, number = spec["task"], 1
            while spec["task"] in seen:
                number += 1
                spec["task"] = f"{base}_{number}"
            seen.add(spec["task"])


def load_model(path: Path, *, device: str, dtype: DType):
    """The checkpoint as prunesearch loads it, and its own tokenizer (checked to fit the model's vocabulary)."""
    import torch
    import transformers

    from .architectures import UnsupportedArchitectureError
    from .modeling import load_pruned

    torch_dtype = getattr(torch, TORCH_DTYPE_NAMES[dtype])
    try:
        model = load_pruned(path, dtype=torch_dtype, device=device)
    except UnsupportedArchitectureError:  # not one prunesearch prunes: a stock model, loaded the stock way
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
        model = model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if len(tokenizer) > model.config.vocab_size:
        raise EvalInputError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
            f"{model.config.vocab_size}; a trimmed-vocabulary export needs the tokenizer it was exported with"
        )
    return model, tokenizer


def evaluate(request: EvalRequest) -> dict[str, Any]:
    """Run the harness on `request` and return the report (JSON-ready): per task, its metrics."""
    request.check()
    specs, needs_registry = task_specs(request)
    device = request.device or default_device()
    check_device(device)
    harness = _import_harness(request.verbose)
    with tempfile.TemporaryDirectory(prefix="prunesearch-eval-") as cache:
        specs = [_with_cache_dir(spec, cache) for spec in specs]  # the datasets library's cache: removed after
        tasks = _load_tasks(harness, specs, needs_registry)  # before the model: a mistake here fails fast
        model, tokenizer = load_model(Path(request.model), device=device, dtype=request.dtype)
        lm = harness.lm_class(
            pretrained=model, tokenizer=tokenizer, batch_size=request.batch_size, max_length=request.max_length
        )
        raw = harness.evaluate(
            lm=lm,
            task_dict=tasks,
            limit=request.limit,
            bootstrap_iters=request.bootstrap_iters,
            log_samples=False,
            verbosity="DEBUG" if request.verbose else "ERROR",
        )
    return _report(request, raw, lm, tokenizer, device, harness.version)


def _load_tasks(harness: _Harness, specs: list[str | dict[str, Any]], needs_registry: bool) -> dict[str, Any]:
    try:
        tasks = harness.TaskManager(include_defaults=needs_registry).load(specs)
    except (KeyError, ValueError, FileNotFoundError) as exc:  # an unknown task name, a task file's mistake
        raise EvalInputError(f"lm-eval could not load the tasks: {exc}") from exc
    except ConnectionError as exc:  # a named task whose data is not in the local datasets cache
        raise EvalInputError(
            f"lm-eval could not load the tasks: {exc}; evaluations run offline, so a named task needs its data "
            "in the local datasets cache (or use local files: --data, or a task YAML / JSONL)"
        ) from exc
    _prepare(tasks)
    return tasks


def table(report: dict[str, Any]) -> str:
    """The harness's own results table (markdown)."""
    from lm_eval.utils import make_table

    return make_table(report["lm_eval"])


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class _Harness:
    lm_class: Any
    TaskManager: Any
    evaluate: Any  # `lm_eval.evaluate`: `simple_evaluate` without its model loading and environment report
    version: str


def _prepare(tasks: dict[str, Any]) -> None:
    """What `lm_eval.simple_evaluate` does before it evaluates: its seeds, zero-shot unless a task says otherwise,
    the few-shot sampler's seed."""
    import random

    import numpy
    import torch

    random.seed(0)
    numpy.random.seed(_SEED)
    torch.manual_seed(_SEED)
    for task in tasks["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=_SEED)


def _lm_class(hflm: type) -> type:
    """HFLM with one progress bar over the rolling windows, in place of the harness's one per batch of them."""

    class WindowProgressLM(hflm):
        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            with tqdm(desc="rolling windows", unit=" windows", disable=disable_tqdm) as self._windows:
                try:
                    return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
                finally:
                    self._windows = None

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            windows = getattr(self, "_windows", None)
            if override_bs is None or windows is None:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            result = super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
            windows.update(len(requests))
            return result

    return WindowProgressLM


def _import_harness(verbose: bool) -> _Harness:
    # Local files only: the datasets library reads this when it is first imported. (Not HF_HUB_OFFLINE: a worker
    # process may later load a hub model where the service allows hub ids.)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise EvalUnavailable(
            f"prunesearch evaluate needs lm-evaluation-harness, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    if not verbose:
        import datasets

        datasets.disable_progress_bars()
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    return _Harness(_lm_class(HFLM), TaskManager, lm_eval.evaluate, getattr(lm_eval, "__version__", "unknown"))


def _with_cache_dir(spec: str | dict[str, Any], cache: str) -> str | dict[str, Any]:
    if not isinstance(spec, dict):
        return spec
    return {**spec, "dataset_kwargs": {**spec["dataset_kwargs"], "cache_dir": cache}}


def _report(request: EvalRequest, raw: dict[str, Any], lm, tokenizer, device: str, version: str) -> dict[str, Any]:
    token_map = Path(request.model) / TOKEN_MAP_FILE
    results = {**raw.get("results", {}), **raw.get("groups", {})}
    kept = {key: raw.get(key) for key in _HARNESS_KEYS}
    return {
        "model": str(Path(request.model).resolve()),
        "lm_eval_version": version,
        "device": device,
        "dtype": request.dtype.value,
        "batch_size": request.batch_size,
        "max_length": lm.max_length,
        "limit": request.limit,
        "vocabulary": {"size": len(tokenizer), "trimmed": token_map.is_file()},
        "results": {task: _metrics(values) for task, values in results.items()},
        "lm_eval": _finite({key: value for key, value in kept.items() if value is not None}),
    }


def _metrics(values: dict[str, Any]) -> dict[str, float | None]:
    """`{"word_perplexity,none": 3.2, "word_perplexity_stderr,none": "N/A", "alias": ...}` as
    `{"word_perplexity": 3.2}`: numbers only, the filter suffix dropped (stderr kept when there is one)."""
    metrics = {}
    for key, value in values.items():
        name, _, filter_name = key.partition(",")
        if isinstance(value, bool) or not isinstance(value, int | float) or not filter_name:
            continue
        metrics[name if filter_name == "none" else f"{name},{filter_name}"] = _finite(float(value))
    return metrics


def _finite(value: Any) -> Any:
    """NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
