"""Does a local latency calibration transfer? Fit on llama-docs, test on a differently shaped model.

    python bench/latency_transfer.py [--plans 8] [--test-plans 8] [--repeats 5] [--threads 1] [--no-doc]

Calibrations fitted two ways, both with physically bounded parameters:
- `designed`: llama-docs' own plans plus the designed shapes around it (`calibrate.design_configs`: widths,
  depths, GQA ratios, vocabularies, biases with tied embeddings, q/k norms), what `latency-calibrate` does;
- `plans only`: llama-docs' own plans (`latency-calibrate --no-design`).
Both predict a Qwen2-style model they were not fitted on: GQA 6/2, q/k/v biases, tied embeddings, 6 layers,
hidden 192 (random weights, built from a config), dense and random plans. Every model, calibration and test
alike, is measured in the same interleaved rounds (1 warm-up + `--repeats` timed), so load from other processes
spreads over all of them; medians. Workload: batch 1, prompt 128, generate 32, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.calibrate import (
    CalibratedLatencyModel,
    Measurement,
    accuracy,
    calibration_set,
    fit_latency,
    random_plan,
)
from prunesearch.profilers.device import cpu_facts, device_key
from prunesearch.profilers.latency import Workload
from prunesearch.profilers.local import local_profile
from prunesearch.profilers.measured import build_model, measure_interleaved
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import PrunePlan

sys.path.insert(0, str(Path(__file__).parent))
from latency_accuracy import MODEL, machine, table, update_doc

WORKLOAD = Workload(batch=1, prompt_tokens=128, generate_tokens=32, dtype="fp32")
TEST_MODEL = {
    "model_type": "qwen2",
    "num_hidden_layers": 6,
    "hidden_size": 192,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 512,
    "vocab_size": 6144,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 1024,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=8, help="llama-docs plans (the dense one included)")
    parser.add_argument("--test-plans", type=int, default=8, help="test-model plans (the dense one included)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    config = {k: v for k, v in json.loads((MODEL / "config.json").read_text()).items() if k != "architectures"}
    rng = random.Random(args.seed)
    fit_pairs = calibration_set(config, args.plans, rng, design=True)
    test_shape = model_shape(TEST_MODEL)
    test_pairs = [(TEST_MODEL, PrunePlan.dense(test_shape))]
    test_pairs += [(TEST_MODEL, random_plan(test_shape, rng)) for _ in range(args.test_plans - 1)]
    pairs = fit_pairs + test_pairs
    models = [build_model(c, plan, WORKLOAD.dtype, "cpu") for c, plan in pairs]
    print(f"measuring {len(models)} models in {1 + args.repeats} interleaved rounds", file=sys.stderr)
    stats = measure_interleaved(models, WORKLOAD, warmup=1, repeats=args.repeats)
    measured = [
        Measurement(c, plan, WORKLOAD, prefill.median, decode.median)
        for (c, plan), (prefill, decode) in zip(pairs, stats, strict=True)
    ]
    spread = [(p.p90 - p.p10) / p.median for p, _ in stats] + [(d.p90 - d.p10) / d.median for _, d in stats]
    fit_set, test_set = measured[: len(fit_pairs)], measured[len(fit_pairs) :]
    base, facts = local_profile(), cpu_facts(torch.get_num_threads())
    designed = fit_latency(fit_set, base, device_key(facts), facts)
    plans_only = fit_latency(fit_set[: args.plans], base, device_key(facts), facts)
    rows = {
        "designed shapes (latency-calibrate)": accuracy(CalibratedLatencyModel(designed), test_set),
        "llama-docs plans only (--no-design)": accuracy(CalibratedLatencyModel(plans_only), test_set),
        "uncalibrated (local probes)": accuracy(RooflineModel(base, dynamic_cache=True), test_set),
    }
    elapsed = time.time() - started
    fits = {"designed": designed.profile, "plans only": plans_only.profile}
    model = CalibratedLatencyModel(designed)
    for m in test_set:
        e = model.estimate(m.config, m.plan, m.workload)
        print(
            f"  test params {e.params:>9,}: prefill {m.prefill_ms:7.2f} ms, predicted {e.prefill_ms:7.2f}; "
            f"decode {m.decode_ms:6.2f} ms, predicted {e.decode_ms_per_token:6.2f}",
            file=sys.stderr,
        )
    print(table(rows))
    for name, p in fits.items():
        print(f"{name}: {_params(p)}")
    if not args.no_doc:
        update_doc("Calibration transfer", _doc_body(args, rows, fits, elapsed, sorted(spread)[len(spread) // 2]))
    return 0


def _params(p) -> str:
    return (
        f"compute efficiency {p.compute_efficiency:.3f}, bandwidth efficiency {p.bandwidth_efficiency:.3f}, "
        f"launch {p.launch_overhead_us:.1f} µs/kernel, step {p.step_overhead_us:.0f} µs"
    )


def _doc_body(args, rows, fits, elapsed: float, median_spread: float) -> str:
    command = f"python bench/latency_transfer.py --plans {args.plans} --test-plans {args.test_plans} " + (
        f"--repeats {args.repeats} --seed {args.seed}" + (f" --threads {args.threads}" if args.threads else "")
    )
    return "\n".join(
        [
            f"Command: `{command}` ({elapsed:.0f} s).",
            f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.2f} (the 2 cores were shared with",
            "other engineers' jobs during this run).",
            "",
            "Fit on llama-docs (its dense model and random plans; `designed` adds the 7 designed shapes around it,",
            "each dense and with one random plan), test on a Qwen2-style model no fit saw: GQA 6/2, q/k/v biases,",
            f"tied embeddings, 6 layers, hidden 192, vocab 6144, dense + {args.test_plans - 1} random plans.",
            "Workload: batch 1, prompt 128, generate 32, fp32. All models measured in the same interleaved",
            f"rounds (1 warm-up + {args.repeats}); medians. Median p10-p90 spread of a measurement: "
            f"{median_spread:.0%} of its median.",
            "",
            table(rows),
            "",
            *[f"- {name}: {_params(p)}." for name, p in fits.items()],
            "",
            "Goal: the designed calibration predicts the unseen model within 15% MAPE, prefill and decode.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
