"""`prunesearch search`, and the local form of `prunesearch export` (registered by `prunesearch.cli`)."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from pydantic import ValidationError

from prunesearch.choices import DeployTarget, Engine, HealMethod, Repair, Sampler, values
from prunesearch.cliutil import CLIError, one_line, output_dir, print_json, read_json, user_errors, validation_message
from prunesearch.profilers.calibrate import LatencyFitMissingError
from prunesearch.profilers.hardware import HardwareError
from prunesearch.pruning.architectures import UnsupportedArchitectureError
from prunesearch.pruning.calibration import CalibrationError
from prunesearch.pruning.plan import PlanError
from prunesearch.pruning.vocab import VocabTrimError

from .plot import plot_front
from .results import (
    UnknownStudyError,
    UnknownTrialError,
    export_trial,
    heal_status,
    healed_front_of,
    hypervolume_history,
    load_study,
)
from .spec import Objectives, SearchSpec

# The domain errors that mean "the input is wrong": the calibration file, the hardware, the model's architecture.
INPUT_ERRORS = (CalibrationError, HardwareError, LatencyFitMissingError, UnsupportedArchitectureError)
QUALITY_OBJECTIVES = list(typing.get_args(Objectives.model_fields["quality"].annotation))  # the spec's one list


def register(subparsers: argparse._SubParsersAction) -> None:
    search = subparsers.add_parser("search", help="search pruning plans (multi-objective Optuna study)")
    search.add_argument("--model", required=True, help="base checkpoint directory")
    search.add_argument("--calibration", required=True, help="calibration file (.txt, .jsonl)")
    search.add_argument("--trials", type=int, default=100)
    search.add_argument("--sampler", choices=values(Sampler), default=Sampler.TPE.value)
    search.add_argument("--hardware", default="h100-sxm", help="a hardware profile name, local, or a JSON file")
    search.add_argument(
        "--engine", choices=values(Engine), help="eager or graphs (default: the hardware's; graphs on GPU profiles)"
    )
    search.add_argument("--latency-budget", type=float, help="at most this fraction of dense latency (0-1]")
    search.add_argument(
        "--budgets",
        type=_fractions,
        help="comma-separated latency budgets as shares of dense (e.g. 0.5,0.7) you will pick winners at: the "
        "search's last trials fill the best plan under each (docs/search.md)",
    )
    search.add_argument(
        "--deploy",
        choices=values(DeployTarget),
        help="stock: only plans whose export loads with the stock transformers class and serving engines",
    )
    search.add_argument("--objective", choices=QUALITY_OBJECTIVES, default=Objectives().quality)
    search.add_argument(
        "--repair",
        choices=values(Repair),
        help="refit: score and export every plan after a least-squares map of its final hidden state onto the "
        "dense model's, folded into the LM head (training-free; docs/search.md)",
    )
    search.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    search.add_argument("--study", help="study name (default: derived from the output folder)")
    search.add_argument(
        "--shared",
        action="store_true",
        help="other processes run trials of this study at the same time (same --storage and --study): TPE "
        "spreads out from their running trials, and trials left running are not taken for abandoned",
    )
    search.add_argument("--spec", type=Path, help="a full job spec JSON; flags given explicitly override it")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--calibration-tokens", type=int, default=16_384)
    search.add_argument(
        "--heal-top-k", type=int, help="after the search, heal this many front candidates and rank them healed"
    )
    search.add_argument("--heal-tokens", type=int, help="training tokens per healed candidate (with --heal-top-k)")
    search.add_argument("--heal-method", choices=values(HealMethod), help="full or lora (with --heal-top-k)")
    search.add_argument(
        "--heal-budgets",
        type=_fractions,
        help="comma-separated latency budgets as shares of dense (e.g. 0.5,0.7): heal the front members just "
        "under each one (with --heal-top-k)",
    )
    search.add_argument("--out", required=True, type=Path)
    search.set_defaults(handler=user_errors(*INPUT_ERRORS)(_search))


def add_local_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The local form of `prunesearch export` (`--trial` and `--dtype` are shared with the remote form): a trial
    of a stored study, written to --out."""
    parser.add_argument("--storage", help="local: the Optuna storage URL of the search")
    parser.add_argument("--study", help="local: the study name")
    parser.add_argument("--out", type=Path, help="local: the checkpoint directory to write")


def storage_url(url: str) -> str:
    """An Optuna storage URL the user named, checked as SQLAlchemy parses it (before any study opens)."""
    from sqlalchemy.engine import make_url  # only when a URL is given: every command imports this module
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as exc:
        raise CLIError(f"--storage {url!r} is not a database URL (e.g. sqlite:///study.db): {exc}") from None
    return url


def _spec_from_args(args: argparse.Namespace) -> SearchSpec:
    base = read_json(args.spec, "job spec") if args.spec else {}
    if not isinstance(base, dict):
        raise CLIError(f"job spec {args.spec} must hold a JSON object")
    base.update(model=args.model, calibration=args.calibration, n_trials=args.trials, sampler=args.sampler)
    base.update(hardware=args.hardware, seed=args.seed)
    base.setdefault("objectives", {})["quality"] = args.objective
    base.setdefault("calibration_settings", {})["tokens"] = args.calibration_tokens
    if args.latency_budget is not None:
        base.setdefault("constraints", {})["latency_budget_fraction"] = args.latency_budget
    if args.budgets is not None:
        base["budgets"] = args.budgets
    if args.deploy is not None:
        base.setdefault("constraints", {})["deploy"] = args.deploy
    if args.engine is not None:
        base.setdefault("workload", {})["engine"] = args.engine
    if args.repair is not None:
        base["repair"] = args.repair
    heal = {
        "top_k": args.heal_top_k,
        "tokens": args.heal_tokens,
        "method": args.heal_method,
        "budgets": args.heal_budgets,
    }
    if any(v is not None for v in heal.values()):
        if args.heal_top_k is None and not base.get("heal"):
            raise CLIError("--heal-tokens, --heal-method and --heal-budgets need --heal-top-k")
        base["heal"] = (base.get("heal") or {}) | {k: v for k, v in heal.items() if v is not None}
    try:
        return SearchSpec.model_validate(base)
    except ValidationError as exc:
        raise CLIError(validation_message(exc.errors())) from None


def _search(args: argparse.Namespace) -> int:
    from .engine import run_search  # torch and transformers load only when a search really runs

    spec = _spec_from_args(args)
    if not (Path(spec.model) / "config.json").is_file():
        raise CLIError(f"{spec.model} is not a model directory (no config.json)")
    output_dir(args.out)
    storage = storage_url(args.storage) if args.storage else f"sqlite:///{(args.out / 'study.db').resolve()}"
    study_name = args.study or args.out.resolve().name
    progress = run_search(spec, storage=storage, study_name=study_name, progress_bar=True, shared=args.shared)
    front = list(progress.front)
    study = load_study(storage, study_name)
    healed = healed_front_of(study) if spec.heal else []
    # without heal, pareto.json is the proxy front as before; with it, both fronts
    pareto = {"front": front, "healed_front": healed} if spec.heal else front
    (args.out / "pareto.json").write_text(json.dumps(pareto, indent=2) + "\n")
    plot_front(study, args.out / "pareto.png")
    (args.out / "convergence.json").write_text(json.dumps(hypervolume_history(study), indent=2) + "\n")
    print_json(
        {
            "storage": storage,
            "study": study_name,
            "progress": progress.to_dict(),
            "pareto": str(args.out / "pareto.json"),
            "plot": str(args.out / "pareto.png"),
            "front": [{"trial": x["trial"], "baseline": x["baseline"], **_short(x["metrics"])} for x in front],
        }
        | (
            {"healed_front": [_healed_short(x) for x in healed], "heal": heal_status(storage, study_name)}
            if spec.heal
            else {}
        )
    )
    return 0


def _short(metrics: dict) -> dict:
    keys = ("kl", "ppl", "latency_ms", "latency_fraction", "params")
    return {k: round(metrics[k], 5) if isinstance(metrics[k], float) else metrics[k] for k in keys if k in metrics}


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _healed_short(record: dict) -> dict:
    healed = {k: round(v, 5) for k, v in record["healed"].items() if k in ("healed_kl", "healed_ppl")}
    return {"trial": record["trial"], "baseline": record["baseline"], **_short(record["metrics"]), **healed}


def export_local(args: argparse.Namespace) -> int:
    """Materialise `--trial` of `--study` in `--storage` as a checkpoint in `--out`."""
    missing = [flag for flag in ("storage", "study", "out") if getattr(args, flag) is None]
    if missing:
        raise CLIError(f"a local export needs {', '.join('--' + m for m in missing)} (or give a service job id)")
    storage = storage_url(args.storage)
    output_dir(args.out)
    try:
        summary = export_trial(storage, args.study, args.trial, args.out, dtype=args.dtype)
    except (
        UnknownStudyError,
        UnknownTrialError,
        PlanError,
        UnsupportedArchitectureError,
        CalibrationError,
        VocabTrimError,  # a vocabulary smaller than the tokenizer's mandatory tokens
    ) as exc:
        raise CLIError(one_line(exc)) from None
    print_json(summary)
    return 0
