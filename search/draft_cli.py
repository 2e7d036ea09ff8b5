"""`prunesearch draft`: search for a speculative-decoding draft of a target model (docs/drafts.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from prunesearch.choices import Engine, values
from prunesearch.cliutil import CLIError, output_dir, print_json, read_json, user_errors, validation_message
from prunesearch.pruning.speculative import MAX_LOOKAHEAD

from .cli import INPUT_ERRORS, storage_url
from .draftjob import DRAFT_SPACES, draft_spec, run_draft_search
from .spec import SearchSpec

GOALS = ("speedup", "pareto")


def register(subparsers: argparse._SubParsersAction) -> None:
    draft = subparsers.add_parser(
        "draft", help="search for a speculative-decoding draft cut from a target model (expected speedup)"
    )
    draft.add_argument("--target", required=True, help="the target checkpoint directory")
    draft.add_argument("--calibration", required=True, help="calibration file (.txt, .jsonl)")
    draft.add_argument("--trials", type=int, default=100)
    draft.add_argument("--hardware", default="h100-sxm", help="a hardware profile name, local, or a JSON file")
    draft.add_argument("--engine", choices=values(Engine), help="eager or graphs (default: the hardware's)")
    draft.add_argument(
        "--lookahead",
        type=_lookahead,
        default="search",
        help=f"drafted tokens per round, 1-{MAX_LOOKAHEAD}, or 'search': the best for each candidate",
    )
    draft.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0: greedy (default)")
    draft.add_argument("--goal", choices=GOALS, default="speedup", help="speedup, or pareto: acceptance vs cost")
    draft.add_argument("--min-coverage", type=float, help="at least this share of calibration tokens kept (0-1]")
    draft.add_argument("--max-draft-mib", type=float, help="at most this much draft weight memory (MiB)")
    draft.add_argument(
        "--space", choices=list(DRAFT_SPACES), default="joint", help="which knobs the draft search turns"
    )
    draft.add_argument("--seed", type=int, default=0)
    draft.add_argument("--calibration-tokens", type=int, help="calibration tokens (default: the spec's, 16384)")
    draft.add_argument("--spec", type=Path, help="a job spec JSON for the other fields (workload, efficiency, ...)")
    draft.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    draft.add_argument("--study", help="study name (default: derived from the output folder)")
    draft.add_argument("--out", required=True, type=Path)
    draft.set_defaults(handler=user_errors(*INPUT_ERRORS)(_draft))


def _lookahead(text: str) -> int | str:
    if text == "search":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1-{MAX_LOOKAHEAD} or 'search', got {text!r}") from None
    if not 1 <= value <= MAX_LOOKAHEAD:
        raise argparse.ArgumentTypeError(f"expected 1-{MAX_LOOKAHEAD} or 'search', got {value}")
    return value


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    """The draft job spec the flags describe (CLIError on bad input)."""
    base = read_json(args.spec, "job spec") if args.spec else {}
    if not isinstance(base, dict):
        raise CLIError(f"job spec {args.spec} must hold a JSON object")
    if not Path(args.target).is_dir():
        raise CLIError(f"target directory {args.target} does not exist")
    if not Path(args.calibration).is_file():
        raise CLIError(f"calibration file {args.calibration} does not exist")
    try:
        return draft_spec(
            args.target,
            args.calibration,
            trials=args.trials,
            hardware=args.hardware,
            engine=args.engine,
            lookahead=args.lookahead,
            temperature=args.temperature,
            goal=args.goal,
            min_coverage=args.min_coverage,
            max_draft_mib=args.max_draft_mib,
            space=args.space,
            seed=args.seed,
            calibration_tokens=args.calibration_tokens,
            base=base,
        )
    except ValidationError as exc:
        raise CLIError(validation_message(exc.errors())) from None
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _draft(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    output_dir(args.out)
    storage = storage_url(args.storage) if args.storage else None
    points = run_draft_search(spec, args.out, storage=storage, study_name=args.study, progress_bar=True)
    keys = ("trial", "baseline", "acceptance", "lookahead", "speedup", "draft_ms", "coverage")
    print_json(
        {
            "pareto": str(args.out / "pareto.json"),
            "best": {k: points[0][k] for k in keys} if points else None,
            "front": [{k: _rounded(p[k]) for k in keys} for p in points],
        }
    )
    return 0


def _rounded(value):
    return round(value, 5) if isinstance(value, float) else value
