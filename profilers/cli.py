"""`prunesearch latency` (price or time a plan) and `prunesearch latency-calibrate` (fit this device)."""

from __future__ import annotations

import argparse
import dataclasses
import random
from typing import Any

from pydantic import ValidationError

from prunesearch.choices import DType, Engine, values
from prunesearch.cliutil import CLIError, print_json, read_model_config, read_text, user_errors, validation_message
from prunesearch.pruning.architectures import UnsupportedArchitectureError, model_shape
from prunesearch.pruning.plan import PlanError, PrunePlan

from .calibrate import LatencyFitMissingError
from .hardware import BUILTIN_PROFILES, HardwareError
from .latency import Workload
from .registry import LOCAL_NAMES, default_dtype, default_engine, latency_model_for

# The domain errors that mean "the input is wrong": the plan, the hardware name or file, the architecture.
INPUT_ERRORS = (PlanError, HardwareError, LatencyFitMissingError, UnsupportedArchitectureError)
WORKLOAD_FLAGS = {
    "batch": "--batch",
    "prompt_tokens": "--prompt",
    "generate_tokens": "--generate",
    "dtype": "--dtype",
    "engine": "--engine",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `latency` and `latency-calibrate` sub-commands."""
    names = "|".join([*BUILTIN_PROFILES, *LOCAL_NAMES])
    latency = subparsers.add_parser("latency", help="predict or measure the latency of a (pruned) model")
    latency.add_argument("--model", required=True, help="model directory (only config.json is read)")
    latency.add_argument("--plan", help="prune plan JSON (default: the dense model)")
    latency.add_argument("--hardware", required=True, help=f"{names}, or a profile .json")
    _workload_arguments(latency, prompt=512, generate=128)
    latency.add_argument("--dtype", choices=values(DType), help="default: bf16 (fp32 for local on CPU)")
    latency.add_argument(
        "--engine",
        choices=values(Engine),
        help="eager (transformers generate) or graphs (a CUDA-graph serving engine); default: the hardware's "
        "(graphs for GPU profiles, eager for local)",
    )
    latency.add_argument("--repeats", type=int, default=5, help="timed interleaved runs for --hardware measured")
    latency.set_defaults(handler=user_errors(*INPUT_ERRORS)(_latency))
    calib = subparsers.add_parser("latency-calibrate", help="fit the latency model to this device")
    calib.add_argument("--model", required=True, help="model directory whose shape is measured (config.json)")
    calib.add_argument("--plans", type=int, default=8, help="random plans to measure (the dense one included)")
    calib.add_argument("--seed", type=int, default=0)
    calib.add_argument(
        "--no-design",
        dest="design",
        action="store_false",
        help="measure only the model's own plans, not the designed set of shapes around it (transfers worse)",
    )
    _workload_arguments(calib, prompt=128, generate=32)
    calib.set_defaults(handler=user_errors(*INPUT_ERRORS)(_calibrate))


def _workload_arguments(parser: argparse.ArgumentParser, prompt: int, generate: int) -> None:
    parser.add_argument("--batch", type=int, default=1, help="concurrency: sequences decoded together")
    parser.add_argument("--prompt", type=int, default=prompt, help="prompt tokens per sequence")
    parser.add_argument("--generate", type=int, default=generate, help="generated tokens per sequence")


def read_plan(plan_path: str | None, config: dict[str, Any]) -> PrunePlan | None:
    """The plan file validated against the model, or None (dense)."""
    if plan_path is None:
        return None
    return PrunePlan.from_json(read_text(plan_path, "plan file")).validate_for(model_shape(config))


def workload_from(args: argparse.Namespace, dtype: str, engine: str | None = None) -> Workload:
    """The workload the flags describe, validated like a job spec's (`--generate 0` is refused)."""
    try:
        return Workload(
            batch=args.batch, prompt_tokens=args.prompt, generate_tokens=args.generate, dtype=dtype, engine=engine
        )
    except ValidationError as exc:
        raise CLIError(validation_message(exc.errors(), WORKLOAD_FLAGS)) from None


def _latency(args: argparse.Namespace) -> int:
    config = read_model_config(args.model)
    plan = read_plan(args.plan, config)
    engine = args.engine or default_engine(args.hardware)
    workload = workload_from(args, args.dtype or default_dtype(args.hardware), engine)
    if args.repeats < 1:
        raise CLIError("--repeats must be at least 1")
    model = latency_model_for(args.hardware, workload.engine)
    if args.hardware == "measured":
        model = dataclasses.replace(model, repeats=args.repeats)
    estimate = model.estimate(config, plan, workload).to_dict()
    print_json({"model": args.model, "plan": args.plan, "workload": vars(workload)} | estimate)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import torch

    from .calibrate import Measurement, calibration_set, fit_latency, save_latency_fit
    from .device import cpu_facts, device_key
    from .local import local_profile
    from .measured import build_model, measure_interleaved

    config = read_model_config(args.model)
    model_shape(config)  # an unsupported architecture is refused before anything is measured
    if args.plans < 3:
        raise CLIError("--plans must be at least 3 (four parameters are fitted over prefill and decode)")
    pairs = calibration_set(config, args.plans, random.Random(args.seed), design=args.design)
    workload = workload_from(args, DType.FP32)
    models = [build_model(c, plan, workload.dtype, "cpu") for c, plan in pairs]
    stats = measure_interleaved(models, workload)  # rounds spread other processes' load over all plans
    measurements = [
        Measurement(c, plan, workload, prefill.median, decode.median)
        for (c, plan), (prefill, decode) in zip(pairs, stats, strict=True)
    ]
    facts = cpu_facts(torch.get_num_threads())
    fit = fit_latency(measurements, local_profile(), device_key(facts), facts)
    print_json({"saved": str(save_latency_fit(fit))} | fit.to_dict())
    return 0
