"""Issue 15's measurements, run from `bench/search_quality.py --efficiency` (see its docstring).

Every time is a ratio to one dense forward over the same calibration tokens measured in the same process, so
the figures hold on a loaded or a different machine; variants are interleaved per seed for the same reason.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import transformers

from prunesearch.pruning.plan import PrunePlan
from prunesearch.search import engine, fidelity
from prunesearch.search.context import SearchContext
from prunesearch.search.engine import run_search
from prunesearch.search.pareto import hypervolume
from prunesearch.search.results import load_study
from prunesearch.search.spec import Efficiency, SearchSpec

OFF = {"low_fidelity": 1.0, "prefix_cache_mib": 0, "informed_starts": False, "tolerance": 0.0}
# Each saving alone, all of them, all of them (or the defaults: prefix + fidelity, starts off) with TPE's
# multivariate mode, and the defaults with univariate TPE (`savings`, what the search runs by default).
VARIANTS = {
    "none": OFF,
    "prefix": OFF | {"prefix_cache_mib": 1024},
    "fidelity": OFF | {"low_fidelity": 0.25},
    "starts": OFF | {"informed_starts": True},
    "all": {"informed_starts": True},
    "all+multivariate": {"informed_starts": True},
    "defaults+multivariate": {},
    "savings": {"informed_starts": False},  # prefix reuse and multi-fidelity, univariate TPE, no informed starts
    # the same without the tolerance, and also without pairing (the rule of the first full-size runs)
    "savings-exact": {"informed_starts": False, "tolerance": 0.0},
    "savings-unpaired": {"informed_starts": False, "tolerance": 0.0},
    "savings-eighth": {"informed_starts": False, "low_fidelity": 0.125},  # a first stage of 1/8 of the blocks
}
CLASSIC = ("dense", "uniform-", "shortgpt-")


def _classic(name: str | None) -> bool:
    return bool(name) and name.startswith(CLASSIC) and "+" not in name


def _sampler(multivariate: bool, startup: int):  # variants without "multivariate" run univariate TPE
    def make(spec: SearchSpec, *, shared: bool = False, seed: int | None = None):
        return optuna.samplers.TPESampler(
            seed=spec.seed if seed is None else seed,
            n_startup_trials=startup,
            multivariate=multivariate,
            constant_liar=shared,
        )

    return make


def one_run(context: SearchContext, spec: SearchSpec, variant: str, workdir: Path, startup: int) -> dict:
    """One search of `variant`; its trials as points, its time and proxy time, its early stops."""
    context.spec = spec.model_copy(update={"efficiency": Efficiency(**VARIANTS[variant])})
    storage = f"sqlite:///{workdir / f'eff-{variant}-{spec.seed}.db'}"
    original, member = engine.make_sampler, engine._member
    engine.make_sampler = _sampler("multivariate" in variant, startup)
    if variant.endswith("-unpaired"):  # front members without their blocks: the unpaired rule
        engine._member = lambda trial: fidelity.FrontMember(tuple(trial.values))
    before = dense_forward_seconds(context)
    started = time.perf_counter()
    try:
        run_search(context.spec, storage=storage, study_name="s", context=context)
    finally:
        engine.make_sampler, engine._member = original, member
    seconds = time.perf_counter() - started
    dense_s = (before + dense_forward_seconds(context)) / 2  # on either side of the run: load changes slowly
    trials = [t for t in load_study(storage, "s").get_trials(deepcopy=False) if t.state.is_finished()]
    return {"seconds": seconds, "dense_s": dense_s, "trials": trials}


def _point(trial) -> tuple[float, float, bool, bool, bool]:
    m = trial.user_attrs.get("metrics", {})
    return (
        m.get("kl", np.inf),
        m.get("latency_fraction", 1.0),
        bool(trial.user_attrs.get("feasible")),
        _classic(trial.user_attrs.get("baseline")),
        bool(m.get("stopped_early")),
    )


def audit_stops(context: SearchContext, trials) -> dict:
    """Finish every early-stopped candidate and count those that would have entered the front of the trials
    finished before it (the cost of a wrong stop)."""
    stopped, entered, beyond = 0, 0, 0
    tolerance = context.spec.efficiency.tolerance
    for trial in trials:
        metrics = trial.user_attrs.get("metrics", {})
        if not metrics.get("stopped_early"):
            continue
        stopped += 1
        plan = PrunePlan.from_dict(trial.user_attrs["plan"])
        full = context.evaluator.evaluate(plan, context.kept_tokens(plan.vocab))
        before = [t.values for t in trials if t.number < trial.number and t.user_attrs.get("feasible") and t.values]
        point = [full.kl, *trial.values[1:]]
        entered += fidelity.could_enter_front(point, before)
        beyond += not any(fidelity.within_tolerance(member, point, tolerance) for member in before)
    return {"stopped": stopped, "would_have_entered_front": entered, "beyond_tolerance": beyond}


def efficiency_ablation(args, context: SearchContext, workdir: Path) -> dict:
    dense_s = dense_forward_seconds(context)
    n = max(args.eff_trials)
    base = context.spec.model_copy(update={"n_trials": n})
    runs: dict[str, dict[int, dict]] = {v: {} for v in args.eff_variants}
    for seed in args.eff_seeds:
        for variant in args.eff_variants:
            run = one_run(context, base.model_copy(update={"seed": seed}), variant, workdir, args.eff_startup)
            if variant in args.eff_audit:
                run["audit"] = audit_stops(context, run["trials"])
            runs[variant][seed] = run
            print(f"efficiency {variant} seed {seed}: {run['seconds'] / run['dense_s']:.1f} dense forwards", flush=True)
            partial = {f"{v} {s}": [_point(t) for t in r["trials"]] for v, per in runs.items() for s, r in per.items()}
            (workdir / "eff-points.json").write_text(json.dumps(partial))
    points = {v: {s: [_point(t) for t in r["trials"]] for s, r in per.items()} for v, per in runs.items()}
    classic_kl = [p[0] for per in points.values() for run in per.values() for p in run if p[2] and p[3]]
    q_ref = max(classic_kl) * 1.1
    result: dict = {"dense_forward_s": round(dense_s, 3), "reference_kl": q_ref, "trials": n}
    for variant, per in runs.items():
        row: dict = {}
        for k in args.eff_trials:
            values = [_hv(points[variant][s][:k], q_ref) for s in per]
            row[f"hv@{k}"] = round(float(np.mean(values)), 4)
            row[f"hv@{k}_per_seed"] = values
        row["search_over_dense_forward"] = round(float(np.mean([r["seconds"] / r["dense_s"] for r in per.values()])), 1)
        row["search_over_trials_x_dense_forward"] = round(row["search_over_dense_forward"] / n, 3)
        row["stopped_share"] = round(float(np.mean([np.mean([p[4] for p in points[variant][s]]) for s in per])), 3)
        audits = [r["audit"] for r in per.values() if "audit" in r]
        if audits:
            row["audit"] = {key: sum(a[key] for a in audits) for key in audits[0]}
        result[variant] = row
    return result


def _hv(run, q_ref: float) -> float:
    points = np.array([[kl / q_ref, lat] for kl, lat, ok, *_ in run if ok]).reshape(-1, 2)
    return round(hypervolume(points, np.ones(2)), 4)


def dense_forward_seconds(context: SearchContext, repeats: int = 3) -> float:
    """Median time of one dense forward (with the LM head) over the proxy's calibration tokens."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for batch in context.evaluator.blocks.split(context.evaluator.batch_size):
                context.model(input_ids=batch, use_cache=False)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def qwen_05b_model(directory: Path, tokenizer_from: Path) -> Path:
    """A Qwen2.5-0.5B-shaped model with random weights (config in code), with a small local tokenizer."""
    config = transformers.Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151_936,
        max_position_embeddings=32_768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    for file in tokenizer_from.iterdir():
        if "token" in file.name or file.name == "special_tokens_map.json":
            shutil.copy(file, directory / file.name)
    return directory


def counted_score(context: SearchContext, proxy: dict):
    """`context._score` (the proxy, both stages), timed into `proxy`."""
    original = context._score

    def counted(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            seconds = time.perf_counter() - t
            proxy["seconds"] += seconds
            proxy["calls"] += 1
            # no front: an enqueued starting point, always scored in full (search/engine.py)
            kind = "enqueued" if (a[4] if len(a) > 4 else k.get("front")) is None else "sampled"
            proxy.setdefault(f"{kind}_seconds", []).append(seconds)

    return counted


def qwen_per_trial_cost(args, workdir: Path, make_spec) -> dict:
    """Per-trial proxy cost over a `--qwen-trials` search (every saving on) against one dense forward."""
    model_dir = qwen_05b_model(workdir / "qwen05b", args.model)
    spec = make_spec(args, "tpe", args.qwen_trials, args.qwen_tokens).model_copy(update={"model": str(model_dir)})
    spec = spec.model_copy(
        update={"calibration_settings": spec.calibration_settings.model_copy(update={"seq_len": args.qwen_seq_len})}
    )
    context = SearchContext(spec)
    proxy = {"seconds": 0.0, "calls": 0}
    context._score = counted_score(context, proxy)
    dense_s = dense_forward_seconds(context, repeats=1)
    storage = f"sqlite:///{workdir / 'qwen.db'}"
    started = time.perf_counter()
    run_search(spec, storage=storage, study_name="q", context=context)
    seconds = time.perf_counter() - started
    trials = [t for t in load_study(storage, "q").get_trials(deepcopy=False) if t.state.is_finished()]
    stopped = sum(bool(t.user_attrs.get("metrics", {}).get("stopped_early")) for t in trials)
    shutil.rmtree(model_dir)
    return {
        "trials": len(trials),
        "calibration_tokens": args.qwen_tokens,
        "seq_len": args.qwen_seq_len,
        "dense_forward_s": round(dense_s, 2),
        "proxy_calls": proxy["calls"],
        "stopped_early": stopped,
        "proxy_per_trial_over_dense_forward": round(proxy["seconds"] / len(trials) / dense_s, 3),
        "proxy_per_scored_trial_over_dense_forward": round(proxy["seconds"] / max(proxy["calls"], 1) / dense_s, 3),
        "search_over_trials_x_dense_forward": round(seconds / len(trials) / dense_s, 3),
        **{
            f"{kind}_trials": {
                "scored": len(proxy.get(f"{kind}_seconds", [])),
                "proxy_over_dense_forward": round(sum(proxy.get(f"{kind}_seconds", [])) / dense_s, 2),
            }
            for kind in ("enqueued", "sampled")
        },
    }
