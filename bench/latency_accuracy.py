"""Latency-model accuracy on this CPU: measured vs calibrated (and uncalibrated) prediction, 30 random plans.

    python bench/latency_accuracy.py [--plans 30] [--calibration-plans 8] [--no-doc]

Calibrates the roofline on `--calibration-plans` random plans of llama-docs (saved per device under
$PRUNESEARCH_HOME), then measures `--plans` other random plans and compares prefill and decode separately.
Workload: batch 1, prompt 128, generate 32 (31 decode steps), fp32; 1 warm-up + 5 timed interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.calibrate import (
    CalibratedLatencyModel,
    Measurement,
    accuracy,
    fit_latency,
    random_plan,
    save_latency_fit,
)
from prunesearch.profilers.device import cpu_facts, device_key
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.local import local_profile
from prunesearch.profilers.measured import build_model, measure_interleaved
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import PrunePlan

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "llama-docs"
DOC = ROOT / "docs" / "benchmarks.md"
WORKLOAD = Workload(batch=1, prompt_tokens=128, generate_tokens=32, dtype="fp32")
SECTION = "## Latency model"


def measure(config, plans, workload: Workload, repeats: int = 5) -> list[Measurement]:
    """Median prefill and decode-step times of every plan, measured in interleaved rounds."""
    models = [build_model(config, plan, workload.dtype, "cpu") for plan in plans]
    stats = measure_interleaved(models, workload, warmup=1, repeats=repeats)
    out = []
    for index, (plan, (prefill, decode)) in enumerate(zip(plans, stats, strict=True)):
        out.append(Measurement(config, plan, workload, prefill.median, decode.median))
        print(f"  [{index + 1}/{len(plans)}] prefill {prefill.median:7.2f} ms  decode {decode.median:6.2f} ms")
    return out


def machine() -> str:
    facts = cpu_facts(torch.get_num_threads())
    return f"{facts['name']}, {facts['cores']} cores, torch {torch.__version__} on {facts['threads']} threads"


def update_doc(subsection: str, body: str, path: Path = DOC) -> None:
    """Replace (or append) `### subsection` inside the "## Latency model" section, leaving the rest alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n"
    start = text.index(SECTION)
    end_match = re.search(r"^## ", text[start + len(SECTION) :], re.MULTILINE)
    end = start + len(SECTION) + end_match.start() if end_match else len(text)
    section = text[start:end]
    block = f"### {subsection}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^### {re.escape(subsection)}\n.*?(?=^### |\Z)", re.MULTILINE | re.DOTALL)
    section = pattern.sub(lambda _: block, section) if pattern.search(section) else section.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text[:start] + section.rstrip() + "\n\n" + text[end:].lstrip("\n"))


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | prefill MAPE | prefill Spearman | decode MAPE | decode Spearman |",
        "|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['prefill_mape_pct']:.1f}% | {m['prefill_spearman']:.3f} "
            f"| {m['decode_mape_pct']:.1f}% | {m['decode_spearman']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=30)
    parser.add_argument("--calibration-plans", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the core count)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = json.loads((MODEL / "config.json").read_text())
    shape = model_shape(config)
    rng = random.Random(args.seed)
    dense = PrunePlan.dense(shape)
    fit_plans = [dense] + [random_plan(shape, rng) for _ in range(args.calibration_plans - 1)]
    test_plans = [random_plan(shape, rng) for _ in range(args.plans)]
    started = time.time()
    base = local_profile()
    facts = cpu_facts(torch.get_num_threads())
    print(f"local profile: {base}\ncalibration: {len(fit_plans)} plans")
    fitted = measure(config, fit_plans, WORKLOAD)
    calibration = fit_latency(fitted, base, device_key(facts), facts)
    print(f"calibrated: {calibration.profile}\nheld-out: {len(test_plans)} plans")
    held_out = measure(config, test_plans, WORKLOAD)
    calibrated = accuracy(CalibratedLatencyModel(calibration), held_out)
    rows = {
        "calibrated (local-calibrated)": calibrated,
        "uncalibrated roofline (local probes)": accuracy(RooflineModel(base, dynamic_cache=True), held_out),
    }
    calibration = replace(calibration, metrics=calibration.metrics | {"holdout": calibrated})
    path = save_latency_fit(calibration)
    elapsed = time.time() - started
    print(table(rows), f"\ncalibration saved to {path}; {elapsed:.0f} s")
    if not args.no_doc:
        update_doc("Accuracy", _doc_body(args, rows, calibration, elapsed))
    return 0


def _doc_body(args, rows, calibration, elapsed: float) -> str:
    p = calibration.profile
    command = (
        f"python bench/latency_accuracy.py --plans {args.plans} "
        f"--calibration-plans {args.calibration_plans} --seed {args.seed}"
        + (f" --threads {args.threads}" if args.threads else "")
    )
    return "\n".join(
        [
            f"Command: `{command}` ({elapsed:.0f} s).",
            f"Machine: {machine()}; Python {platform.python_version()};",
            f"load average at the end of the run {os.getloadavg()[0]:.2f}.",
            "",
            "Model `shared/models/llama-docs` (random weights in its shape; latency does not depend on the",
            "values), random plans (layers, attention or MLP removed, kept heads and MLP channels,",
            "vocabulary trims). Workload: batch 1, prompt 128, generate 32 (31 decode steps), fp32;",
            "1 warm-up round + 5 timed rounds, each round running every plan once (interleaved, so load",
            "from other processes spreads over all plans); medians.",
            f"Calibration fitted on {args.calibration_plans} plans (dense + random);",
            f"the table is on {args.plans} other, held-out plans.",
            "",
            table(rows),
            "",
            f"Fitted profile: compute efficiency {p.compute_efficiency:.3f} of the probed "
            f"{p.fp32_tflops * 1e3:.1f} GFLOP/s, bandwidth efficiency {p.bandwidth_efficiency:.3f} of the probed",
            f"{p.memory_bandwidth_gbs:.1f} GB/s, launch overhead {p.launch_overhead_us:.1f} µs per kernel, "
            f"step overhead {p.step_overhead_us:.0f} µs per forward. Goal: MAPE ≤ 10% and Spearman ≥ 0.95.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
