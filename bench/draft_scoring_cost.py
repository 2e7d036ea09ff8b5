"""What scoring a trimmed draft out of sample and through its own input mapping costs the search (docs/drafts.md,
"Acceptance"), against the in-sample, dense-input scoring it replaced, on llama-docs.

    python bench/draft_scoring_cost.py [--tokens 4096] [--repeats 3] [--threads 1]

Per plan (vocabulary-only trims, and trims with layer 0 narrowed, which no prefix reuse helps), interleaved in
one process, repeats rotating the order: `before` = the kept tokens chosen from all the text, read as dense ids
(prefix reuse on); `after` = the search's scoring now, with the vocabulary's choice and input mapping already
cached (`after_cold` includes computing them, once per vocabulary size and fold). Medians, seconds per candidate
scored in full; merged into bench/results/drafts.json under `scoring_cost`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import resultsfile  # bench/, on the path as the script's folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SIZES = (1792, 2880, 4416, 6336)


def _timed(run, plan) -> float:
    started = time.perf_counter()
    run(plan)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/drafts.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("PRUNESEARCH_HOME", str(ROOT / "bench/results/drafts-work/home"))
    from prunesearch.pruning.plan import LayerPlan, PrunePlan
    from prunesearch.search.context import SearchContext
    from prunesearch.search.draftjob import draft_spec

    spec = draft_spec(
        SHARED / "models/llama-docs",
        SHARED / "data/pydocs-calib.txt",
        space="joint",
        calibration_tokens=args.tokens,
        hardware="h100-sxm",
    )
    context = SearchContext(spec)
    dense = PrunePlan.dense(context.shape)
    narrowed = (LayerPlan(context.shape.num_heads, context.shape.intermediate_size // 2), *dense.layers[1:])
    plans = {f"vocab {k}": PrunePlan(dense.layers, k) for k in SIZES}
    plans |= {f"vocab {k}, layer 0 narrowed": PrunePlan(narrowed, k) for k in SIZES}
    ev = context.evaluator

    def cold(plan):
        context.scored_vocabulary.cache_clear()
        ev.evaluate(plan, context.scored_vocabulary(plan.vocab))

    ways = {
        "before": lambda plan: ev.evaluate(plan, context.kept_tokens(plan.vocab)),
        "after": lambda plan: ev.evaluate(plan, context.scored_vocabulary(plan.vocab)),
        "after_cold": cold,
    }
    for plan in plans.values():  # warm-up: one-off costs, and the kept tokens of each size
        ways["after"](plan)
    times: dict[str, dict[str, list[float]]] = {name: {way: [] for way in ways} for name in plans}
    load_before = round(os.getloadavg()[0], 2)
    for repeat in range(args.repeats):
        order = list(ways)[repeat % len(ways) :] + list(ways)[: repeat % len(ways)]
        for name, plan in plans.items():
            for way in order:
                times[name][way].append(_timed(ways[way], plan))
    rows = {name: {way: round(statistics.median(t), 3) for way, t in by_way.items()} for name, by_way in times.items()}
    row = {
        "tokens": args.tokens,
        "repeats": args.repeats,
        "seconds_per_candidate": rows,
        "load_average": [load_before, round(os.getloadavg()[0], 2)],
        "command": "python bench/draft_scoring_cost.py " + " ".join(sys.argv[1:]),
    }
    resultsfile.record(args.results, ["scoring_cost"], row)
    for name, by_way in rows.items():
        print(name, by_way, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
