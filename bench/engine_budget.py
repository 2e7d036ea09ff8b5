"""Which latency budgets can uniform width pruning reach on llama-docs, per engine? Pure pricing, a second.

    python bench/engine_budget.py [--hardware h100-sxm]

The bench's search setting (bench/search_quality.py): llama-docs, batch 1, prompt 512, generate 128, bf16, the
`total` latency objective as a fraction of dense. Uniform width plans keep the same share of KV groups and MLP
channels in every layer, down to the search's default floor (min_keep 0.25 for heads and MLP, ffn_step 8).
Prints, per engine, the fraction each uniform ratio reaches and the least-cut ratio under each budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from prunesearch.choices import Engine
from prunesearch.profilers.analytical import RooflineModel
from prunesearch.profilers.hardware import get_profile
from prunesearch.profilers.latency import Workload
from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.plan import LayerPlan, PrunePlan

MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "llama-docs"
RATIOS = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]


def uniform(shape, ratio: float, step: int = 8) -> PrunePlan:
    groups = max(1, math.ceil(shape.num_kv_heads * max(ratio, 0.25)))
    ffn = max(step, round(shape.intermediate_size * max(ratio, 0.25) / step) * step)
    return PrunePlan(
        layers=(LayerPlan(groups * shape.group_size, min(ffn, shape.intermediate_size)),) * shape.num_layers
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware", default="h100-sxm")
    parser.add_argument("--model", type=Path, default=MODEL, help="a model directory or a config .json")
    args = parser.parse_args(argv)
    path = args.model if args.model.suffix == ".json" else args.model / "config.json"
    config = json.loads(path.read_text())
    shape = model_shape(config)
    model = RooflineModel(get_profile(args.hardware))
    result = {}
    for engine in Engine:
        workload = Workload(1, 512, 128, "bf16", engine)
        dense = model.estimate(config, None, workload).total_ms
        fractions = {r: model.estimate(config, uniform(shape, r), workload).total_ms / dense for r in RATIOS}
        result[engine.value] = {
            "dense_total_ms": dense,
            "fractions": fractions,
            "reaches_0.7": min(fractions.values()) <= 0.7,
        }
    print("| uniform kept share | " + " | ".join(f"{e.value} total / dense" for e in Engine) + " |")
    print("|---|" + "---|" * len(Engine))
    for r in RATIOS:
        print(f"| {r:g} | " + " | ".join(f"{result[e.value]['fractions'][r]:.3f}" for e in Engine) + " |")
    print(json.dumps({e: {k: v for k, v in r.items() if k != "fractions"} for e, r in result.items()}))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
