"""`prunesearch evaluate`: lm-evaluation-harness on a checkpoint, over local text and task files (docs/evaluate.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunesearch.choices import DType, values
from prunesearch.cliutil import CLIError, print_json, user_errors

from .export import DeviceError
from .lmeval import EvalInputError, EvalRequest, EvalUnavailable, evaluate, table, write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint with lm-evaluation-harness (perplexity of text files, local or named tasks)",
    )
    p.add_argument("--model", required=True, type=Path, help="checkpoint directory (an export or a base model)")
    p.add_argument(
        "--data", nargs="+", type=Path, default=[], metavar="FILE",
        help="text to score by rolling log-likelihood: .txt (one document) or .jsonl ({\"text\"} per line)",
    )  # fmt: skip
    p.add_argument(
        "--tasks", nargs="+", default=[], metavar="NAME|YAML|JSONL",
        help="lm-eval task names, task YAML files, or multiple-choice .jsonl ({question, choices, answer})",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--json", action="store_true", help="print the JSON results instead of the table")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")
    p.add_argument("--dtype", choices=values(DType), default=DType.FP32.value)
    p.add_argument("--batch-size", type=int, default=8, help="windows or requests per forward pass")
    p.add_argument("--max-length", type=int, help="tokens per window (default: the model's context length)")
    p.add_argument("--limit", type=int, help="at most this many documents per task (a quick, partial look)")
    p.add_argument("--bootstrap-iters", type=int, default=0, help="bootstrap resamples for stderr (default none)")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's and datasets' log lines")
    p.set_defaults(handler=user_errors(EvalInputError, DeviceError)(_evaluate))


def _evaluate(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.is_dir():
        raise CLIError(f"--out {args.out} is a directory; name the JSON file to write")
    request = EvalRequest(
        model=args.model,
        data=tuple(args.data),
        tasks=tuple(args.tasks),
        device=args.device,
        dtype=DType(args.dtype),
        batch_size=args.batch_size,
        max_length=args.max_length,
        limit=args.limit,
        bootstrap_iters=args.bootstrap_iters,
        verbose=args.verbose,
    )
    try:
        report = evaluate(request)
    except EvalUnavailable as exc:
        raise CLIError(str(exc)) from None
    if args.out:
        write_report(report, args.out)
    if args.json:
        print_json(report)
    else:
        print(table(report))
    return 0
