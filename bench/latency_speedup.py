"""Measured speedup of exported pruned checkpoints of llama-docs against the calibrated prediction.

    python bench/latency_speedup.py [--repeats 5] [--no-doc]

Needs this device's calibration (run `python bench/latency_accuracy.py` or `prunesearch latency-calibrate`
first). Each plan is applied to the real llama-docs weights (magnitude importance), exported with
`export_checkpoint`, reloaded with `load_pruned`, and timed; speedup = dense time / pruned time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from latency_accuracy import MODEL, machine, update_doc

from prunesearch.profilers.calibrate import CalibratedLatencyModel, load_latency_fit
from prunesearch.profilers.device import cpu_facts, device_key
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.measured import measure_interleaved
from prunesearch.pruning.export import export_checkpoint, load_base_model
from prunesearch.pruning.modeling import load_pruned
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.surgery import apply_plan

WORKLOAD = Workload(batch=1, prompt_tokens=128, generate_tokens=32, dtype="fp32")
DENSE = LayerPlan(8, 688)
PLANS = {
    "dense": PrunePlan(layers=(DENSE,) * 6),
    "MLP -25% (516 channels)": PrunePlan(layers=(LayerPlan(8, 516),) * 6),
    "heads -50% (4 of 8)": PrunePlan(layers=(LayerPlan(4, 688),) * 6),
    "drop 2 of 6 layers": PrunePlan(layers=(DENSE,) * 4 + (LayerPlan(0, 0),) * 2),
    "no attention in 3 layers, MLP 344": PrunePlan(layers=(LayerPlan(8, 344), LayerPlan(0, 344)) * 3),
    "vocab 4096 + MLP 516": PrunePlan(layers=(LayerPlan(8, 516),) * 6, vocab=4096),
    "half everything": PrunePlan(layers=(LayerPlan(4, 344),) * 3 + (LayerPlan(0, 0),) * 3, vocab=4096),
}


def exported_model(base, tokenizer, plan: PrunePlan, directory: Path):
    kept = list(range(plan.vocab)) if plan.vocab else None
    pruned = apply_plan(base, plan, kept_token_ids=kept)
    export_checkpoint(pruned, tokenizer, plan, directory, {"bench": "latency_speedup"}, kept_token_ids=kept)
    return load_pruned(directory, dtype=torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the core count)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    calibration = load_latency_fit(device_key(cpu_facts(torch.get_num_threads())))
    predictor = CalibratedLatencyModel(calibration)
    config = json.loads((MODEL / "config.json").read_text())
    base, tokenizer = load_base_model(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        models = [exported_model(base, tokenizer, plan, Path(tmp) / str(i)) for i, plan in enumerate(PLANS.values())]
    stats = measure_interleaved(models, WORKLOAD, warmup=1, repeats=args.repeats)
    rows = {}
    for (name, plan), (prefill, decode) in zip(PLANS.items(), stats, strict=True):
        predicted = predictor.estimate(config, plan, WORKLOAD)
        rows[name] = (prefill.median, decode.median, predicted.prefill_ms, predicted.decode_ms_per_token)
        print(f"{name}: measured prefill/decode {prefill.median:.2f} / {decode.median:.2f} ms")
    text = table(rows)
    print(text)
    if not args.no_doc:
        command = f"python bench/latency_speedup.py --repeats {args.repeats}"
        command += f" --threads {args.threads}" if args.threads else ""
        update_doc("Speedup of exported checkpoints", _doc_body(command, text, time.time() - started))
    return 0


def table(rows: dict[str, tuple[float, float, float, float]]) -> str:
    d = rows["dense"]
    lines = [
        "| plan | prefill speedup measured | predicted | decode speedup measured | predicted |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {d[0] / r[0]:.2f}x | {d[2] / r[2]:.2f}x | {d[1] / r[1]:.2f}x | {d[3] / r[3]:.2f}x |")
    return "\n".join(lines)


def _doc_body(command: str, text: str, elapsed: float) -> str:
    return "\n".join(
        [
            f"Command: `{command}` ({elapsed:.0f} s), after the accuracy run saved the calibration.",
            f"Machine: {machine()}.",
            "",
            "Plans applied to the real llama-docs weights (magnitude importance), exported with",
            "`export_checkpoint`, reloaded with `load_pruned`, timed on batch 1, prompt 128, generate 32,",
            "fp32",
            "(1 warm-up + timed rounds, every model once per round; medians). Predicted = the calibrated",
            "model's dense / pruned time.",
            "",
            text,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
