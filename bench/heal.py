"""Healing on a real checkpoint: throughput and memory against a bare PyTorch loop, a learning-rate check, and
healed perplexity of the searched plans and the baselines.

    python bench/heal.py throughput [--steps 6] [--repeats 3] [--methods full,lora]
    python bench/heal.py memory [--steps 3] [--methods full,lora]
    python bench/heal.py lr [--plan 0.5] [--tokens 60000] [--lrs-full 1e-4,3e-4,1e-3] [--lrs-lora 3e-4,1e-3,3e-3]
    python bench/heal.py select [--trials 100] [--candidates 6] [--tokens 100000] [--plans 0.5,0.6,0.7]
    python bench/heal.py heal [--plans 0.5,0.6,0.7] [--baselines shortgpt,uniform,torch_pruning]
                              [--tokens 250000,1000000] [--methods full,lora] [--lr full=best,lora=1e-3]

Students are the searched plans of `bench/results/search_quality.json` (the front plan with the lowest KL under
each latency budget) and that bench's baselines at the same budgets (ShortGPT layer removal; uniform width where
a uniform cut reaches the budget; Torch-Pruning's uniform heads-and-channels cut at the searched plan's parameter
count), rebuilt from the same search context (llama-docs, 16,384 calibration tokens, flap) and exported under
`--workdir`. `refit-B` is the plan a `repair: refit` search picked under budget B
(`bench/results/search_quality_refit.json`), exported with its map as the search exports it; a `+refit` suffix on
any other kind (`shortgpt+refit-0.7`) exports that student with the same training-free repair. Training data:
`pydocs-calib.txt`; perplexity on the first 60,000 characters of pydocs-valid and kerneldocs-valid (256-token
windows), before and after, by `prunesearch.pruning.heal.heal`.

- `throughput`: the library's heal against a bare loop doing the same work (teacher forward, student forward and
  backward over full logits, KL, gradient clipping, AdamW step), in the same process, interleaved, medians.
- `memory`: peak resident memory of each, each in a fresh subprocess, against teacher + student + gradients +
  AdamW state + one batch of saved activations (the bare loop's autograd-saved tensors, measured).
- `lr`: short heals of one plan at a few learning rates per method.
- `heal`: every requested (student, method, tokens) heal; `--lr METHOD=best` takes the best of the `lr` check.
- `select`: heal-aware against proxy-only selection over one search's front (see `selection`).

Every figure is merged into bench/results/heal.json as soon as it exists, so an interrupted run keeps what it
measured. Nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import resultsfile  # bench/, on the path as the script's folder
import torch
import torch.nn.functional as F

from prunesearch.pruning.calibration import load_calibration, token_blocks
from prunesearch.pruning.export import export_checkpoint, load_base_model
from prunesearch.pruning.heal import HealSettings, heal
from prunesearch.pruning.healio import eval_text, load_student, perplexities
from prunesearch.pruning.healsettings import DEFAULT_LR
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.surgery import apply_plan
from prunesearch.search.parametrize import FixedParams, complete_params, suggest_plan

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench/results/heal.json"
EVALS = ("pydocs-valid", "kerneldocs-valid")
# glibc returns every allocation above 64 KiB to the system when it is freed (no dynamic threshold, no arena
# reuse), so the probes' peak RSS follows the peak of live tensors rather than the allocator's high-water mark.
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# ---------------------------------------------------------------- results file


def record(path: list[str], value) -> None:
    """Merge `value` into heal.json (or --results) at `path` and write it at once."""
    resultsfile.record(RESULTS, path, value)


def command() -> str:
    return "python bench/heal.py " + " ".join(sys.argv[1:])


# ---------------------------------------------------------------- students


def students(args, names: list[str]) -> dict[str, dict]:
    """Export each requested student (`search-0.5`, `shortgpt-0.5`, `torch_pruning-0.5`, `uniform-0.5`) once
    under --workdir; returns name -> {dir, latency_fraction, params, ...}. Unreachable baselines are skipped."""
    index_path = args.workdir / "students.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    missing = [n for n in names if n not in index or (index[n]["dir"] and not Path(index[n]["dir"]).is_dir())]
    if missing:
        index |= build_students(args, missing)
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    return {n: index[n] for n in names if index.get(n, {}).get("dir")}


def build_students(args, names: list[str]) -> dict[str, dict]:
    sys.path.insert(0, str(ROOT / "bench"))
    import search_quality as sq
    import torch_pruning_baseline as tpb

    from prunesearch.search.context import SearchContext

    os.environ["PRUNESEARCH_HOME"] = str(args.workdir / "home")
    spec_args = argparse.Namespace(model=args.model, data=args.data, min_keep_layers=0.25, seed=0, seq_len=256)
    context = SearchContext(sq.make_spec(spec_args, "tpe", 1, 16_384))
    searched = {
        row["budget"]: row for row in json.loads((ROOT / "bench/results/search_quality.json").read_text())["quality"]
    }
    refitted = ROOT / "bench/results/search_quality_refit.json"  # `search_quality.py --repair refit`
    rows = json.loads(refitted.read_text())["quality"] if refitted.is_file() else []
    searched_refit = {row["budget"]: row for row in rows}
    built, gradient_model = {}, None
    for name in names:
        kind, budget = name.rsplit("-", 1)
        budget = float(budget)
        repaired = kind.endswith("+refit")  # the student exported with the training-free repair folded in
        kind = kind.removesuffix("+refit")
        source = searched_refit if kind == "refit" else searched
        search_plan = PrunePlan.from_dict(source[budget]["search"]["plan"])
        info: dict = {"kind": kind, "budget": budget}
        if kind in ("search", "filled", "refit"):  # filled: the searched plan with the cuts its budget pays for
            # taken back; refit: the plan a `repair: refit` search picked, exported with its map (as it exports)
            repaired = repaired or kind == "refit"
            plan = search_plan if kind != "filled" else filled_plan(context, search_plan, budget)
            model = apply_plan(context.model, plan, context.scores)
            info["trial"] = source[budget]["search"]["trial"]
        elif kind in ("shortgpt", "uniform"):
            plan = (sq.shortgpt_under if kind == "shortgpt" else sq.best_uniform_under)(context, budget)
            if plan is None:
                built[name] = {"dir": None, "why": f"no {kind} plan reaches {budget} of dense latency"}
                print(f"{name}: {built[name]['why']}", flush=True)
                continue
            model = apply_plan(context.model, plan, context.scores)
        elif kind == "torch_pruning":
            if gradient_model is None:
                gradient_model = copy.deepcopy(context.model)
                tpb.taylor_gradients(gradient_model, context.evaluator.blocks.cpu())
            model, plan, info["ratio"] = torch_pruning_student(context, search_plan, gradient_model, tpb)
            info["importance"] = "taylor"
        else:
            raise SystemExit(f"unknown student kind {kind!r}")
        if repaired:
            sq.refit_in_place(context, model)
            info["repair"] = "refit"
        folder = args.workdir / "students" / name
        shutil.rmtree(folder, ignore_errors=True)
        export_checkpoint(model, context.tokenizer, plan, folder, {"tool": "prunesearch", "bench": name})
        info |= {
            "dir": str(folder),
            "latency_fraction": round(sq.latency_fraction(context, plan), 3),
            "params": tpb.parameter_count(model),
            "plan": plan.to_dict(),
        }
        built[name] = info
        print(f"{name}: {json.dumps({k: v for k, v in info.items() if k != 'plan'})}", flush=True)
    return built


def filled_plan(context, plan: PrunePlan, budget: float) -> PrunePlan:
    """`plan` filled up to `budget` of the dense latency as the search fills its last trials (search/fill.py)."""
    filled = context.fill(plan_params(context.knobs, plan), budget * context.dense_latency)
    return suggest_plan(FixedParams(filled.params), context.knobs)


def plan_params(knobs, plan: PrunePlan) -> dict:
    """The per-layer parameters of the search space that describe `plan` (the inverse of `suggest_plan`)."""
    shape, params = knobs.shape, {}
    for i, layer in enumerate(plan.layers):
        params[f"group_cuts_{i}"] = (shape.num_heads - layer.heads) // shape.group_size if layer.heads else 0
        params[f"ffn_cuts_{i}"] = (knobs.ffn_top() - layer.ffn) // knobs.ffn_step if layer.ffn else 0
        params[f"keep_attn_{i}"], params[f"keep_mlp_{i}"] = layer.heads > 0, layer.ffn > 0
    return complete_params(knobs, params)


def torch_pruning_student(context, search_plan: PrunePlan, gradient_model, tpb):
    """Torch-Pruning's Taylor cut at the searched plan's parameter count, as a prunesearch export: a uniform
    plan of the same shapes built by surgery, then given Torch-Pruning's weights (the same module names)."""
    target = tpb.parameter_count(apply_plan(context.model, search_plan, context.scores))
    example = context.evaluator.blocks[:1, :64].cpu()
    ratio = tpb.ratio_for_parameters(context.model, target, example)
    pruned = tpb.prune_uniform(gradient_model, ratio, example, "taylor")
    plan = tpb.plan_of(pruned)
    model = apply_plan(context.model, plan)  # magnitude scores: no FLAP bias terms, so the names match exactly
    model.load_state_dict(pruned.state_dict(), strict=True)
    return model, plan, round(ratio, 4)


# ---------------------------------------------------------------- heals


def texts(args) -> dict[str, str]:
    return {str(args.data / f"{n}.txt"): eval_text(args.data / f"{n}.txt", 60_000) for n in EVALS}


def dense_ppl(args) -> dict[str, float]:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if "dense" not in data:
        teacher, tokenizer = load_base_model(args.model)
        ppl = perplexities(teacher, tokenizer, texts(args))
        record(["dense"], {Path(k).stem: round(v["token_ppl"], 2) for k, v in ppl.items()})
        data = json.loads(RESULTS.read_text())
    return data["dense"]


def run_heal(args, student: dict, method: str, tokens: int, lr: float, section: list[str]) -> dict:
    """One heal through the library; records before/after perplexity, the share of the gap to dense it closes,
    and its times under `section`."""
    out = args.workdir / "healed" / "-".join(section[1:])
    settings = HealSettings(method=method, tokens=tokens, lr=lr, seed=args.seed, self_data_tokens=args.self_data)
    started = time.perf_counter()
    result = heal(
        student["dir"], args.model, args.data / "pydocs-calib.txt", out, settings, eval_files=list(texts(args))
    )
    dense = dense_ppl(args)
    row: dict = {
        "method": method,
        "lr": lr,
        "tokens": result.tokens,
        "steps": result.steps,
        "train_s": result.seconds,
        "wall_s": round(time.perf_counter() - started, 1),
        "tokens_per_s": result.tokens_per_second,
        "final_loss": round(result.final_loss, 4),
        "latency_fraction": student.get("latency_fraction"),
        "params": student.get("params"),
        "command": command(),
    }
    for file, metrics in result.eval.items():
        name = Path(file).stem
        before, after = metrics["before"]["token_ppl"], metrics["after"]["token_ppl"]
        row[name] = {
            "before": round(before, 2),
            "after": round(after, 2),
            "gap_closed": round((before - after) / (before - dense[name]), 3),
            "char_before": round(metrics["before"]["char_ppl"], 4),
            "char_after": round(metrics["after"]["char_ppl"], 4),
        }
    record(section, row)
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"/".join(section): row}), flush=True)
    return row


def lr_check(args) -> None:
    student = students(args, [f"search-{args.plan}"])[f"search-{args.plan}"]
    for method, lrs in (("full", args.lrs_full), ("lora", args.lrs_lora)):
        if method not in args.methods:
            continue
        for lr in lrs:
            run_heal(args, student, method, args.tokens[0], lr, ["lr_check", f"search-{args.plan}", method, f"{lr:g}"])


def best_lr(method: str) -> float:
    """The lr of the `lr` check with the lowest in-domain perplexity after healing."""
    runs = json.loads(RESULTS.read_text())["lr_check"]
    rows = [row for plan in runs.values() for row in plan.get(method, {}).values()]
    if not rows:
        raise SystemExit(f"no lr check for {method}: run `bench/heal.py lr` first or give --lr {method}=VALUE")
    return min(rows, key=lambda r: r["pydocs-valid"]["after"])["lr"]


def heal_matrix(args) -> None:
    searched = [] if args.skip_search else [f"search-{b}" for b in args.plans]
    names = searched + [f"{k}-{b}" for b in args.plans for k in args.baselines]
    chosen = students(args, names)
    skipped = {n: "no plan reaches the budget" for n in names if n not in chosen}
    if skipped:
        record(["not_run"], (json.loads(RESULTS.read_text()).get("not_run", {}) if RESULTS.is_file() else {}) | skipped)
    lrs = {m: float(args.lr[m]) if args.lr.get(m, "default") not in ("best", "default") else None for m in args.methods}
    for method in args.methods:
        if args.lr.get(method) == "best":
            lrs[method] = best_lr(method)
        lrs[method] = lrs[method] or DEFAULT_LR[method]
    for tokens in args.tokens:  # the smaller budget first, so every student gets one before any gets two
        for name in names:
            if name not in chosen:
                continue
            for method in args.methods:
                key = f"{tokens}+self{args.self_data}" if args.self_data else str(tokens)
                if done(["heals", name, method, key], lrs[method]):
                    print(f"heals/{name}/{method}/{tokens} at lr {lrs[method]:g}: already measured", flush=True)
                    continue
                run_heal(args, chosen[name], method, tokens, lrs[method], ["heals", name, method, key])


def done(path: list[str], lr: float) -> bool:
    """Whether heal.json already holds this heal at this learning rate (so a re-run goes on where one stopped)."""
    node = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for key in path:
        node = node.get(key, {})
    return node.get("lr") == lr


def selection(args) -> None:
    """Heal-aware against proxy-only selection: one search as bench/search_quality.py runs it, `--candidates`
    front plans just under the budgets (`heal.budgets`' rule; the proxy's pick at each budget among them)
    healed alike, then per budget the plan each rule picks: proxy-only the lowest KL, heal-aware the lowest
    healed pydocs-valid perplexity."""
    sys.path.insert(0, str(ROOT / "bench"))
    import search_quality as sq

    from prunesearch.search.context import SearchContext
    from prunesearch.search.engine import run_search
    from prunesearch.search.healselect import pick_candidates
    from prunesearch.search.results import pareto_front

    os.environ["PRUNESEARCH_HOME"] = str(args.workdir / "home")
    spec_args = argparse.Namespace(model=args.model, data=args.data, min_keep_layers=0.25, seed=args.seed)
    spec = sq.make_spec(spec_args, "tpe", args.trials, 16_384)
    storage = f"sqlite:///{args.workdir / 'selection.db'}"
    context = SearchContext(spec)
    if not (args.reuse_search and (args.workdir / "selection.db").is_file()):
        (args.workdir / "selection.db").unlink(missing_ok=True)
        run_search(spec, storage=storage, study_name="selection", context=context)
    front = sorted(pareto_front(storage, "selection"), key=lambda x: x["metrics"]["latency_fraction"])
    under = {b: [x for x in front if x["metrics"]["latency_fraction"] <= b] for b in args.plans}
    proxy = {b: min(xs, key=lambda x: x["metrics"]["kl"])["trial"] for b, xs in under.items() if xs}
    # the search's own rule (`heal.budgets`): the members just under each budget, which includes the proxy's picks
    chosen = pick_candidates(front, args.candidates, "kl", [b * context.dense_latency for b in args.plans])
    lr = best_lr("full") if args.lr.get("full", "best") == "best" else float(args.lr["full"])
    healed = {}
    for record_ in (x for x in front if x["trial"] in chosen):
        trial = record_["trial"]
        folder = args.workdir / "students" / f"selection-trial-{trial}"
        plan = PrunePlan.from_dict(record_["plan"])
        export_checkpoint(apply_plan(context.model, plan, context.scores), context.tokenizer, plan, folder, {})
        student = {"dir": str(folder), "latency_fraction": round(record_["metrics"]["latency_fraction"], 3)}
        section = ["selection", "candidates", f"trial-{trial}"]
        row = run_heal(args, student, "full", args.tokens[0], lr, section)
        healed[trial] = row | {"kl": round(record_["metrics"]["kl"], 4)}
        record(section, healed[trial])
    picks = {}
    for budget, xs in under.items():
        candidates = [x["trial"] for x in xs if x["trial"] in healed]
        if not candidates:
            continue
        aware = min(candidates, key=lambda t: healed[t]["pydocs-valid"]["after"])
        picks[str(budget)] = {
            rule: {"trial": t, "kl": healed[t]["kl"], "latency_fraction": healed[t]["latency_fraction"]}
            | {n: healed[t][n] for n in EVALS}
            for rule, t in (("proxy", proxy[budget]), ("heal_aware", aware))
        }
    record(["selection", "picks"], picks)
    record(["selection", "settings"], {"trials": args.trials, "front": len(front), "tokens": args.tokens[0]})
    print(json.dumps(picks), flush=True)


# ---------------------------------------------------------------- throughput and memory


def bare_loop(student, teacher, blocks: torch.Tensor, steps: int, batch: int, lr: float) -> float:
    """The same work as a heal step, in a dozen lines: seconds for `steps` steps."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(steps):
        ids = blocks[step * batch : (step + 1) * batch]
        with torch.no_grad():
            log_p = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits[:, :-1].float(), -1)
        log_q = F.log_softmax(student(input_ids=ids, use_cache=False).logits[:, :-1].float(), -1)
        loss = F.kl_div(log_q.flatten(0, 1), log_p.flatten(0, 1), log_target=True, reduction="batchmean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def trainable(student, method: str, rank: int = 16):
    """The student as the bare loop trains it: every weight, or PEFT LoRA on every projection."""
    if method == "full":
        return student.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(student, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=names))


def calibration_blocks(args, tokenizer, steps: int, batch: int = 8) -> torch.Tensor:
    docs = load_calibration(args.data / "pydocs-calib.txt", tokenizer)
    return token_blocks(tokenizer, docs, 256, steps * batch * 256)


def throughput(args) -> None:
    student = students(args, [f"search-{args.plan}"])[f"search-{args.plan}"]
    teacher, tokenizer = load_base_model(args.model)
    teacher.requires_grad_(False)
    blocks = calibration_blocks(args, tokenizer, args.steps[0])
    tokens = args.steps[0] * 8 * 256
    times: dict = {m: {"library": [], "bare": []} for m in args.methods}
    for repeat in range(args.repeats):
        for method in args.methods:
            order = ("library", "bare") if repeat % 2 == 0 else ("bare", "library")
            for impl in order:
                if impl == "library":
                    settings = HealSettings(method=method, steps=args.steps[0], seed=args.seed)
                    out = args.workdir / "throughput-out"
                    result = heal(student["dir"], args.model, args.data / "pydocs-calib.txt", out, settings)
                    shutil.rmtree(out, ignore_errors=True)
                    seconds = result.seconds
                else:
                    model = trainable(load_student(Path(student["dir"]), torch.device("cpu")), method)
                    model.train()
                    seconds = bare_loop(model, teacher, blocks, args.steps[0], 8, DEFAULT_LR[method])
                times[method][impl].append(round(tokens / seconds, 1))
                print(f"repeat {repeat} {method} {impl}: {tokens / seconds:.0f} tokens/s", flush=True)
    summary = {
        method: {
            "library_tokens_per_s": statistics.median(t["library"]),
            "bare_tokens_per_s": statistics.median(t["bare"]),
            "ratio": round(statistics.median(t["library"]) / statistics.median(t["bare"]), 3),
            "runs": t,
        }
        for method, t in times.items()
    }
    record(["throughput"], summary | {"steps": args.steps[0], "tokens_per_step": 8 * 256, "command": command()})
    print(json.dumps(summary), flush=True)


def memory(args) -> None:
    student = students(args, [f"search-{args.plan}"])[f"search-{args.plan}"]
    rows = {}
    for method in args.methods:
        for impl in ("library", "bare"):
            probe = [sys.executable, __file__, "memory-probe", "--impl", impl, "--methods", method]
            probe += ["--steps", str(args.steps[0]), "--student", student["dir"], "--model", str(args.model)]
            done = subprocess.run(probe, capture_output=True, text=True, check=True, env=os.environ | PROBE_ENV)
            rows.setdefault(method, {})[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            print(method, impl, rows[method][impl], flush=True)
        bare = rows[method]["bare"]
        bound = bare["static_mb"] + bare["activations_mb"]
        rows[method]["bound_mb"] = round(bound, 1)
        for impl in ("library", "bare"):
            rows[method][f"{impl}_over_bound"] = round(rows[method][impl]["train_peak_over_baseline_mb"] / bound, 3)
    record(["memory"], rows | {"command": command(), "probe_env": PROBE_ENV})


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """VmHWM: the peak resident memory since start or since the last `reset_peak_rss` (Linux)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS


def memory_probe(args) -> None:
    """In a fresh process: peak RSS during training (and over the whole run) over the post-import baseline,
    for `--steps` steps of one implementation. Training's peak is read by resetting VmHWM as training starts,
    so loading, tokenising and writing the checkpoint do not count."""
    import peft  # noqa: F401  (imported before the baseline, as the library would import it)
    import transformers

    import prunesearch.pruning.heal as heal_module

    method = args.methods[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    blocks = calibration_blocks(args, tokenizer, args.steps[0])
    baseline = rss_mb()
    row: dict = {"baseline_mb": round(baseline, 1)}

    def measured_training(train):
        def wrapped(*a, **k):
            row["at_train_start_mb"] = round(rss_mb() - baseline, 1)
            reset_peak_rss()
            train(*a, **k)
            row["train_peak_over_baseline_mb"] = round(peak_rss_mb() - baseline, 1)

        return wrapped

    if args.impl == "library":
        heal_module.train = measured_training(heal_module.train)  # the library's own loop, only timed around
        out = args.workdir / f"memory-out-{os.getpid()}"
        settings = HealSettings(method=method, steps=args.steps[0])
        heal(args.student, args.model, args.data / "pydocs-calib.txt", out, settings)
        shutil.rmtree(out, ignore_errors=True)
    else:
        teacher, _ = load_base_model(args.model)
        teacher.requires_grad_(False)
        model = trainable(load_student(Path(args.student), torch.device("cpu")), method)
        model.train()
        row |= static_bytes(teacher, model) | {"activations_mb": saved_activation_mb(model, teacher, blocks[:8])}
        measured_training(lambda: bare_loop(model, teacher, blocks, args.steps[0], 8, DEFAULT_LR[method]))()
    row["process_peak_over_baseline_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline, 1
    )
    print(json.dumps(row))


def static_bytes(teacher, student) -> dict:
    """Teacher + student weights + gradients and two AdamW moments of the trainable ones (fp32), in MiB."""
    size = lambda ps: sum(p.numel() * p.element_size() for p in ps) / 2**20  # noqa: E731
    trained = size(p for p in student.parameters() if p.requires_grad)
    return {
        "teacher_mb": round(size(teacher.parameters()), 1),
        "student_mb": round(size(student.parameters()), 1),
        "grads_and_adam_mb": round(3 * trained, 1),
        "static_mb": round(size(teacher.parameters()) + size(student.parameters()) + 3 * trained, 1),
    }


def saved_activation_mb(student, teacher, ids: torch.Tensor) -> float:
    """Bytes autograd saves for backward over one batch in the bare loop, plus the teacher's log-probs."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.no_grad():
        log_p = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits[:, :-1], -1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        log_q = F.log_softmax(student(input_ids=ids, use_cache=False).logits[:, :-1], -1)
        F.kl_div(log_q.flatten(0, 1), log_p.flatten(0, 1), log_target=True, reduction="batchmean")
    return round((sum(saved) + log_p.numel() * 4) / 2**20, 1)


# ---------------------------------------------------------------- CLI


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "memory", "lr", "heal", "select", "memory-probe"])
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    ints = lambda s: [int(float(x)) for x in s.split(",")]  # noqa: E731
    words = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--model", type=Path, default=SHARED / "models/llama-docs")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench/results/heal-work")
    parser.add_argument("--plan", type=float, default=0.5, help="budget of the plan for throughput, memory, lr")
    parser.add_argument("--plans", type=floats, default=[0.5, 0.6, 0.7])
    parser.add_argument(
        "--baselines",
        type=words,
        default=["shortgpt", "uniform", "torch_pruning"],
        help="students beside the searched plan: shortgpt, uniform, torch_pruning, filled (the searched plan filled)",
    )
    parser.add_argument("--skip-search", action="store_true", help="heal: the baselines (and filled plans) only")
    parser.add_argument("--methods", type=words, default=["full", "lora"])
    parser.add_argument("--tokens", type=ints, default=None)
    parser.add_argument("--steps", type=ints, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=100, help="select: trials of the search")
    parser.add_argument("--candidates", type=int, default=6, help="select: front plans healed")
    parser.add_argument("--reuse-search", action="store_true", help="select: keep the last run's finished search")
    parser.add_argument("--lr", type=lambda s: dict(x.split("=") for x in words(s)), default={})
    parser.add_argument("--lrs-full", type=floats, default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--lrs-lora", type=floats, default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--self-data", type=int, default=0, help="heal: tokens of teacher-written text mixed in")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impl", choices=["library", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file figures are merged into")
    args = parser.parse_args()
    RESULTS = args.results
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    defaults = {
        "throughput": ([6], None),
        "memory": ([3], None),
        "memory-probe": ([3], None),
        "lr": (None, [60_000]),
        "select": (None, [100_000]),
    }
    steps, tokens = defaults.get(args.what, (None, [250_000]))
    args.steps, args.tokens = args.steps or steps, args.tokens or tokens
    {
        "throughput": throughput,
        "memory": memory,
        "memory-probe": memory_probe,
        "lr": lr_check,
        "heal": heal_matrix,
        "select": selection,
    }[args.what](args)


if __name__ == "__main__":
    main()
