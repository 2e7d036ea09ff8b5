"""`prunesearch prune` and `prunesearch inspect`."""

from __future__ import annotations

import argparse
from pathlib import Path

import transformers

from prunesearch.choices import CriterionName, DType, Repair, values
from prunesearch.cliutil import CLIError, output_dir, print_json, read_text, user_errors

from . import draftcheck_cli, heal_cli, lmeval_cli
from .architectures import UnsupportedArchitectureError
from .calibration import CalibrationError
from .export import DeviceError, check_device
from .importance import CriterionError, get_criterion
from .pipeline import ImportanceCalibration, describe_config, prune_checkpoint
from .plan import PlanError, PrunePlan
from .vocab import VocabTrimError

# The domain errors that mean "the input is wrong": the plan, the calibration file, the criterion, the device,
# the architecture.
INPUT_ERRORS = (PlanError, CalibrationError, CriterionError, DeviceError, UnsupportedArchitectureError, VocabTrimError)


def register(subparsers: argparse._SubParsersAction) -> None:
    prune = subparsers.add_parser("prune", help="prune a checkpoint by a plan and export a smaller checkpoint")
    prune.add_argument("--model", required=True, type=Path, help="base checkpoint directory")
    prune.add_argument("--plan", required=True, type=Path, help="plan JSON file (see docs/plan-format.md)")
    prune.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    prune.add_argument("--calibration", type=Path, help=".txt, .jsonl (text) or chat .jsonl (messages)")
    prune.add_argument(
        "--criterion", choices=values(CriterionName), help="default: flap with calibration, else magnitude"
    )
    prune.add_argument("--dtype", choices=values(DType), default=DType.FP32.value)
    prune.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    prune.add_argument("--calibration-tokens", type=int, default=65_536)
    prune.add_argument("--seq-len", type=int, default=256)
    prune.add_argument(
        "--repair",
        choices=values(Repair),
        default=Repair.NONE.value,
        help="refit: fold a least-squares map of the final hidden state onto the dense model's into the LM head, "
        "fitted on the calibration text (training-free; needs --calibration)",
    )
    prune.add_argument(
        "--draft-temperature",
        type=float,
        help="the plan is a speculative-decoding draft decoded at this temperature (0: greedy): a trimmed vocabulary "
        "keeps the tokens the model emits most on the calibration text, as a draft search does (needs --calibration)",
    )
    prune.set_defaults(handler=user_errors(*INPUT_ERRORS)(_prune))

    inspect = subparsers.add_parser("inspect", help="print a checkpoint's architecture and its dense plan")
    inspect.add_argument("--model", required=True, type=Path)
    inspect.set_defaults(handler=user_errors(*INPUT_ERRORS)(_inspect))

    heal_cli.register(subparsers)
    lmeval_cli.register(subparsers)
    draftcheck_cli.register(subparsers)


def _prune(args: argparse.Namespace) -> int:
    plan = PrunePlan.from_json(read_text(args.plan, "plan file"))
    _check_model_dir(args.model)
    check_device(args.device)
    if args.criterion and get_criterion(args.criterion).needs_calibration and args.calibration is None:
        raise CLIError(f"--criterion {args.criterion} needs calibration data; pass --calibration or use magnitude")
    if args.repair == Repair.REFIT and args.calibration is None:
        raise CLIError("--repair refit fits its map on calibration text; pass --calibration")
    if args.draft_temperature is not None and (args.calibration is None or args.draft_temperature < 0):
        raise CLIError("--draft-temperature needs --calibration and a temperature of 0 or more")
    output_dir(args.out)
    settings = ImportanceCalibration(path=args.calibration, seq_len=args.seq_len, max_tokens=args.calibration_tokens)
    summary = prune_checkpoint(
        args.model,
        plan,
        args.out,
        criterion=args.criterion,
        calibration=settings,
        dtype=args.dtype,
        device=args.device,
        repair=args.repair,
        draft_temperature=args.draft_temperature,
    )
    print_json(summary)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    _check_model_dir(args.model)
    config = transformers.AutoConfig.from_pretrained(args.model, local_files_only=True)
    print_json(describe_config(config))
    return 0


def _check_model_dir(model: Path) -> None:
    if not (model / "config.json").is_file():
        raise CLIError(f"{model} is not a model directory (no config.json)")
