"""`prunesearch prune` and `prunesearch inspect`."""

from __future__ import annotations

import argparse
from pathlib import Path

import transformers

from prunesearch.cli import CLIError, print_json

from . import heal_cli
from .export import DTYPES
from .importance import CRITERIA
from .pipeline import CalibrationSettings, describe_config, prune_checkpoint
from .plan import PrunePlan


def register(subparsers: argparse._SubParsersAction) -> None:
    prune = subparsers.add_parser("prune", help="prune a checkpoint by a plan and export a smaller checkpoint")
    prune.add_argument("--model", required=True, type=Path, help="base checkpoint directory")
    prune.add_argument("--plan", required=True, type=Path, help="plan JSON file (see docs/plan-format.md)")
    prune.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    prune.add_argument("--calibration", type=Path, help=".txt, .jsonl (text) or chat .jsonl (messages)")
    prune.add_argument("--criterion", choices=CRITERIA, help="default: flap with calibration, else magnitude")
    prune.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    prune.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    prune.add_argument("--calibration-tokens", type=int, default=65_536)
    prune.add_argument("--seq-len", type=int, default=256)
    prune.set_defaults(handler=_prune)

    inspect = subparsers.add_parser("inspect", help="print a checkpoint's architecture and its dense plan")
    inspect.add_argument("--model", required=True, type=Path)
    inspect.set_defaults(handler=_inspect)

    heal_cli.register(subparsers)


def _read_plan(path: Path) -> PrunePlan:
    if not path.is_file():
        raise CLIError(f"plan file {path} does not exist")
    return PrunePlan.from_json(path.read_text())


def _prune(args: argparse.Namespace) -> int:
    plan = _read_plan(args.plan)
    settings = CalibrationSettings(path=args.calibration, seq_len=args.seq_len, max_tokens=args.calibration_tokens)
    summary = prune_checkpoint(
        args.model,
        plan,
        args.out,
        criterion=args.criterion,
        calibration=settings,
        dtype=args.dtype,
        device=args.device,
    )
    print_json(summary)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    if not (args.model / "config.json").is_file():
        raise CLIError(f"{args.model} is not a model directory (no config.json)")
    config = transformers.AutoConfig.from_pretrained(args.model, local_files_only=True)
    print_json(describe_config(config))
    return 0
