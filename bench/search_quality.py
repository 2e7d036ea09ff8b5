"""Search quality and speed on a real checkpoint.

    python bench/search_quality.py [--trials 100] [--hv-trials 50,100,200] [--hv-tokens 4096] [--hv-seeds 0,1,2]

1. Speed: one TPE search of `--trials` trials with `--calibration-tokens` tokens and no latency constraint,
   from a cold cache (model load and calibration pass included); wall time, and the time in proxy evaluation
   against one dense forward pass over the same tokens.
2. Quality: for each latency budget (fraction of dense total latency, h100-sxm, batch 1, prompt 512,
   generate 128), the front plan with the lowest KL under the budget, against baselines at matching predicted
   latency: uniform width with each criterion (the best reported), ShortGPT layer removal; and Torch-Pruning's
   uniform heads-and-channels cut (magnitude and Taylor importance, the better reported) at the parameter count
   of the searched plan, with its predicted latency alongside. Metric: token
   perplexity on pydocs-valid (in-domain) and kerneldocs-valid (out-of-domain), no fine-tuning.
3. Samplers: TPE, NSGA-II and random, hypervolume after each of `--hv-trials` (mean over `--hv-seeds`, and
   per seed), on one common reference point.
4. Efficiency (`--efficiency`, issue 15): TPE with and without each saving (prefix reuse, multi-fidelity,
   informed starting points, TPE multivariate) over `--eff-seeds`, on `--eff-tokens` calibration tokens: search
   time as a ratio to one dense forward over the same tokens measured in the same run (stable across machines),
   hypervolume after each of `--eff-trials` on one common reference (the classic baselines' worst KL x 1.1),
   and how many early-stopped candidates would have entered the front had they been finished.
5. Per-trial cost on a Qwen2.5-0.5B-shaped model with random weights (`--qwen-trials` > 0; config built in
   code, nothing downloaded), with every saving on: proxy time per trial / one dense forward.

    python bench/search_quality.py --efficiency --skip-quality-speed --skip-hv \
        [--eff-trials 25,50,100] [--eff-seeds 0,1,2] [--eff-tokens 16384] [--qwen-trials 100 --qwen-tokens 2048]

Writes bench/results/search_quality.json and prints it. Nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import search_efficiency
import torch
import torch_pruning_baseline as tpb
from search_efficiency import counted_score, dense_forward_seconds

from prunesearch.choices import Repair, Sampler, values
from prunesearch.pruning.evaluate import perplexity
from prunesearch.pruning.importance import CRITERIA, compute_importance
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.refit import fit_final_map, fold_into_head
from prunesearch.pruning.stats import cached_activation_stats
from prunesearch.pruning.surgery import apply_plan
from prunesearch.search.context import SearchContext
from prunesearch.search.engine import run_search
from prunesearch.search.pareto import hypervolume
from prunesearch.search.results import list_trials, pareto_front
from prunesearch.search.spec import SearchSpec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def make_spec(args, sampler: str, trials: int, tokens: int) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "model": str(args.model),
            "calibration": str(args.data / "pydocs-calib.txt"),
            "hardware": "h100-sxm",
            # eager, as the recorded results were priced: under a CUDA-graph engine llama-docs is all fixed cost
            # and no plan reaches these budgets (docs/benchmarks.md, "Serving engines")
            "workload": {"batch": 1, "prompt_tokens": 512, "generate_tokens": 128, "dtype": "bf16", "engine": "eager"},
            "calibration_settings": {"tokens": tokens, "seq_len": args.seq_len, "criterion": "flap"},
            "space": {"min_keep": {"layers": args.min_keep_layers}},
            "sampler": sampler,
            "n_trials": trials,
            "seed": args.seed,
            # the budgets the quality table reads: the search's last trials fill each (docs/search.md)
            "budgets": getattr(args, "budgets", None),
            "efficiency": {"fill": not getattr(args, "no_fill", False)},
            "repair": getattr(args, "repair", "none"),
        }
    )


def timed_search(args, workdir: Path) -> tuple[SearchContext, str, dict]:
    """The search from a cold start: an empty PRUNESEARCH_HOME, so the calibration pass is timed too."""
    spec = make_spec(args, Sampler.TPE, args.trials, args.calibration_tokens)
    os.environ["PRUNESEARCH_HOME"] = tempfile.mkdtemp(prefix="home-", dir=workdir)
    started = time.perf_counter()
    context = SearchContext(spec)
    setup_s = time.perf_counter() - started
    proxy = {"seconds": 0.0, "calls": 0}
    context._score = counted_score(context, proxy)
    storage = f"sqlite:///{workdir / 'speed.db'}"
    run_search(spec, storage=storage, study_name="speed", context=context)
    total_s = time.perf_counter() - started
    dense_forward_s = dense_forward_seconds(context)
    return (
        context,
        storage,
        {
            "trials": args.trials,
            "calibration_tokens": args.calibration_tokens,
            "wall_s": round(total_s, 1),
            "setup_s": round(setup_s, 1),
            "proxy_s": round(proxy["seconds"], 1),
            "proxy_calls": proxy["calls"],
            "proxy_share": round(proxy["seconds"] / total_s, 3),
            "proxy_call_over_dense_forward": round(proxy["seconds"] / max(proxy["calls"], 1) / dense_forward_s, 2),
            "dense_forward_s": round(dense_forward_s, 2),
            "search_over_trials_x_dense_forward": round(total_s / (args.trials * dense_forward_s), 3),
        },
    )


def latency_fraction(context: SearchContext, plan: PrunePlan) -> float:
    estimate = context.latency_model.estimate(context.config, plan, context.workload)
    return estimate.total_ms / context.dense_latency


def uniform_plan(context: SearchContext, group_cuts: int, ffn_cuts: int) -> PrunePlan:
    shape, step = context.shape, context.knobs.ffn_step
    layer = LayerPlan(
        heads=shape.num_heads - group_cuts * shape.group_size, ffn=shape.intermediate_size - ffn_cuts * step
    )
    return PrunePlan(layers=(layer,) * shape.num_layers)


def best_uniform_under(context: SearchContext, budget: float) -> PrunePlan | None:
    """The least-cut uniform plan (heads and MLP cut in the same proportion) under the budget."""
    shape, step = context.shape, context.knobs.ffn_step
    for tenth in range(1, 100):
        ratio = 1 - tenth / 100
        group_cuts = min(shape.num_kv_heads - 1, round((1 - ratio) * shape.num_kv_heads))
        ffn_cuts = min((shape.intermediate_size - step) // step, round((1 - ratio) * shape.intermediate_size / step))
        plan = uniform_plan(context, group_cuts, ffn_cuts)
        if latency_fraction(context, plan) <= budget:
            return plan
    return None


def shortgpt_under(context: SearchContext, budget: float) -> PrunePlan | None:
    shape = context.shape
    for count in range(1, shape.num_layers):
        dropped = set(context.knobs.order[:count])
        layers = tuple(
            LayerPlan(0, 0) if i in dropped else LayerPlan(shape.num_heads, shape.intermediate_size)
            for i in range(shape.num_layers)
        )
        plan = PrunePlan(layers=layers)
        if latency_fraction(context, plan) <= budget:
            return plan
    return None


def refit_in_place(context: SearchContext, model) -> None:
    """Fold the repair map into `model`'s head, fitted on the search's calibration blocks (as its export does)."""
    fold_into_head(model, fit_final_map(context.model, model, context.evaluator.blocks))


def ppl_of(context: SearchContext, plan: PrunePlan, scores, texts: dict[str, str], repair: bool = False) -> dict:
    """Token perplexity of the plan's model on each text; `repair`: with the refit map (as `repair: refit`
    exports it) fitted on the search's calibration blocks."""
    model = apply_plan(context.model, plan, scores)
    if repair:
        refit_in_place(context, model)
    return {name: round(perplexity(model, context.tokenizer, text).token_ppl, 2) for name, text in texts.items()}


def torch_pruning_at_equal_parameters(context: SearchContext, plan: PrunePlan, gradient_model, texts) -> dict:
    """Torch-Pruning's uniform heads-and-channels cut with as many parameters as the searched `plan` keeps."""
    target = tpb.parameter_count(apply_plan(context.model, plan, context.scores))
    example = context.evaluator.blocks[:1, :64].cpu()
    ratio = tpb.ratio_for_parameters(context.model, target, example)
    per_importance, shapes = {}, {}
    for importance in tpb.IMPORTANCES:
        pruned = tpb.prune_uniform(gradient_model, ratio, example, importance)
        with torch.no_grad():
            per_importance[importance] = {
                name: round(perplexity(pruned, context.tokenizer, text).token_ppl, 2) for name, text in texts.items()
            }
        shapes[importance] = tpb.plan_of(pruned)
    best = min(per_importance, key=lambda name: per_importance[name]["pydocs-valid"])
    return per_importance[best] | {
        "importance": best,
        "all": per_importance,
        "ratio": round(ratio, 4),
        "params": tpb.parameter_count(tpb.prune_uniform(gradient_model, ratio, example)),
        "search_params": target,
        "layer": shapes[best].layers[0].to_dict(),
        "latency_fraction": round(latency_fraction(context, shapes[best]), 3),
    }


def quality_at_budgets(args, context: SearchContext, storage: str) -> list[dict]:
    texts = {n: (args.data / f"{n}.txt").read_text()[: args.eval_chars] for n in ("pydocs-valid", "kerneldocs-valid")}
    blocks = context.evaluator.blocks.cpu()
    stats, _ = cached_activation_stats(context.model, blocks, progress=False)
    criteria_scores = {c: compute_importance(context.model, c, stats) for c in CRITERIA}
    front = pareto_front(storage, "speed")
    gradient_model = copy.deepcopy(context.model)
    tpb.taylor_gradients(gradient_model, blocks)
    rows = [{"budget": 1.0, "dense": ppl_of(context, PrunePlan.dense(context.shape), context.scores, texts)}]
    for budget in args.budgets:
        row: dict = {"budget": budget}
        under = [x for x in front if x["metrics"]["latency_fraction"] <= budget]
        if under:
            chosen = min(under, key=lambda x: x["metrics"]["kl"])
            plan = PrunePlan.from_dict(chosen["plan"])
            row["search"] = ppl_of(context, plan, context.scores, texts, repair=context.evaluator.refit) | {
                "trial": chosen["trial"],
                "latency_fraction": round(chosen["metrics"]["latency_fraction"], 3),
                "plan": chosen["plan"],
            }
        uniform = best_uniform_under(context, budget)
        if uniform is not None:
            per_criterion = {c: ppl_of(context, uniform, s, texts) for c, s in criteria_scores.items()}
            best = min(per_criterion, key=lambda c: per_criterion[c]["pydocs-valid"])
            row["uniform"] = per_criterion[best] | {
                "criterion": best,
                "all": per_criterion,
                "latency_fraction": round(latency_fraction(context, uniform), 3),
                "layer": uniform.layers[0].to_dict(),
            }
        if under:
            row["torch_pruning"] = torch_pruning_at_equal_parameters(context, plan, gradient_model, texts)
        short = shortgpt_under(context, budget)
        if short is not None:
            row["shortgpt"] = ppl_of(context, short, context.scores, texts) | {
                "removed": sum(x.removed for x in short.layers),
                "latency_fraction": round(latency_fraction(context, short), 3),
                "plan": short.to_dict(),
            }
            if context.evaluator.refit:  # the baseline with the same training-free repair, for a fair one-shot
                row["shortgpt"]["refit"] = ppl_of(context, short, context.scores, texts, repair=True)
        rows.append(row)
    return rows


def sampler_runs(args, workdir: Path, seed: int) -> dict[str, list[tuple[float, float, bool, bool]]]:
    """(KL, latency fraction, feasible, baseline) of every trial of one run per sampler."""
    points = {}
    trials = max(args.hv_trials)
    for sampler in values(Sampler):
        spec = make_spec(args, sampler, trials, args.hv_tokens).model_copy(update={"seed": seed})
        storage = f"sqlite:///{workdir / f'hv-{sampler}-{seed}.db'}"
        started = time.perf_counter()
        run_search(spec, storage=storage, study_name=sampler)
        records = list_trials(storage, sampler, limit=trials)
        points[sampler] = [
            (
                r["metrics"].get("kl", np.inf),
                r["metrics"].get("latency_fraction", 1.0),
                r["feasible"],
                bool(r["baseline"]),
            )
            for r in records
        ]
        print(f"{sampler} seed {seed}: {trials} trials in {time.perf_counter() - started:.0f} s", flush=True)
    return points


def sampler_hypervolumes(args, workdir: Path) -> dict:
    """Hypervolume after each of `--hv-trials` per sampler and seed, on one reference point for all runs."""
    runs = {seed: sampler_runs(args, workdir, seed) for seed in args.hv_seeds}
    baseline_kl = [kl for points in runs.values() for run in points.values() for kl, _, ok, base in run if ok and base]
    q_ref = max(baseline_kl) * 1.1
    result: dict = {"reference_kl": q_ref, "calibration_tokens": args.hv_tokens, "seeds": args.hv_seeds}
    for sampler in values(Sampler):
        per_seed = {n: [_hypervolume(runs[seed][sampler][:n], q_ref) for seed in args.hv_seeds] for n in args.hv_trials}
        result[sampler] = {n: round(float(np.mean(values)), 4) for n, values in per_seed.items()}
        result[sampler]["per_seed"] = per_seed
    return result


def _hypervolume(run: list[tuple[float, float, bool, bool]], q_ref: float) -> float:
    points = np.array([[kl / q_ref, lat] for kl, lat, ok, _ in run if ok]).reshape(-1, 2)
    return round(hypervolume(points, np.ones(2)), 4)  # points outside the unit box add nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHARED / "models/llama-docs")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--calibration-tokens", type=int, default=16_384)
    parser.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--hv-trials", type=lambda s: [int(x) for x in s.split(",")], default=[50, 100, 200])
    parser.add_argument("--hv-tokens", type=int, default=4096)
    parser.add_argument("--hv-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--eval-chars", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-keep-layers", type=float, default=0.25, help="the search's depth bound")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench/results/search-work")
    parser.add_argument("--no-fill", action="store_true", help="the searches do not fill the budgets")
    parser.add_argument("--repair", choices=values(Repair), default="none", help="the searches' repair (refit)")
    parser.add_argument("--skip-hv", action="store_true")
    parser.add_argument("--only-hv", action="store_true", help="run only the sampler comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/search_quality.json")
    parser.add_argument("--skip-quality-speed", action="store_true", help="skip parts 1 and 2 (keep the last)")
    parser.add_argument("--efficiency", action="store_true", help="run part 4 (issue 15's ablation)")
    parser.add_argument("--eff-trials", type=lambda s: [int(x) for x in s.split(",")], default=[25, 50, 100])
    parser.add_argument("--eff-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--eff-tokens", type=int, default=16_384)
    parser.add_argument("--seq-len", type=int, default=256, help="calibration block length of every search")
    parser.add_argument("--eff-startup", type=int, default=10, help="TPE n_startup_trials in part 4")
    parser.add_argument(
        "--eff-audit",
        type=lambda s: s.split(","),
        default=["all", "fidelity", "savings"],
        help="variants whose early-stopped candidates are finished afterwards to count wrong stops",
    )
    parser.add_argument(
        "--eff-variants",
        type=lambda s: s.split(","),
        default=list(search_efficiency.VARIANTS),
        help=f"of {','.join(search_efficiency.VARIANTS)}",
    )
    parser.add_argument("--qwen-trials", type=int, default=0, help="part 5: trials on the 0.5B-shaped model")
    parser.add_argument("--qwen-tokens", type=int, default=2048)
    parser.add_argument("--qwen-seq-len", type=int, default=256)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for db in args.workdir.glob("hv-*.db" if args.only_hv else "*.db"):
        db.unlink()
    for home in [] if args.only_hv else args.workdir.glob("home-*"):
        shutil.rmtree(home)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"}
    out = args.out
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if args.only_hv or args.skip_quality_speed:
        report = previous | {"machine": report["machine"]}
    else:
        if args.skip_hv and "hypervolume" in previous:  # keep the last sampler comparison
            report["hypervolume"] = previous["hypervolume"]
        context, storage, report["speed"] = timed_search(args, args.workdir)
        print(json.dumps(report["speed"]), flush=True)
        report["quality"] = quality_at_budgets(args, context, storage)
        print(json.dumps(report["quality"]), flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.skip_hv:
        report["hypervolume"] = sampler_hypervolumes(args, args.workdir)
    efficiency = report.setdefault("efficiency", {})
    if args.efficiency:
        spec = make_spec(args, Sampler.TPE, max(args.eff_trials), args.eff_tokens)
        context = SearchContext(spec)
        efficiency["ablation"] = search_efficiency.efficiency_ablation(args, context, args.workdir)
        efficiency["ablation"]["command"] = " ".join(sys.argv[1:])
        out.write_text(json.dumps(report, indent=2) + "\n")
    if args.qwen_trials:
        efficiency["qwen2.5-0.5b-shaped"] = search_efficiency.qwen_per_trial_cost(args, args.workdir, make_spec)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
