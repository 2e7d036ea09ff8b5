"""Speculative-decoding drafts of llama-docs (issue 11): searched fronts, spaces, acceptance measured against
predicted, real assisted generation on this CPU, and a healed draft.

    python bench/drafts.py calibrate                 # fit local-calibrated to this CPU (latency-calibrate)
    python bench/drafts.py search [--trials 100] [--hardware h100-sxm,local-calibrated] [--spaces ...]
    python bench/drafts.py alpha [--sizes 1792,2880,4416] [--temperature 0]  # predicted vs teacher-forced alpha
    python bench/drafts.py regions --from h100-sxm/joint@4  # a draft's acceptance on each quarter of pydocs-calib
    python bench/drafts.py split --workdir W   # W/split: pydocs-calib's first 75% as calibration, the rest held out
    python bench/drafts.py check [--from local-calibrated/joint,h100-sxm/joint]
    python bench/drafts.py heal [--tokens 100000]
    python bench/drafts.py selfheal [--cuts 0:2048,0-1:2048] [--heal-steps 300] [--self-data 150000] --threads 1
    python bench/drafts.py verify [--batches 1,4] [--repeats 30] --threads 1  # measured v(g) of the target

Every stage merges its figures into --results (default bench/results/drafts.json) with the command that produced
them, so stages run separately. Searches are greedy (temperature 0) unless --temperature is given; the
calibration text is pydocs-calib, the held-out texts pydocs-valid (in domain) and kerneldocs-valid (out of
domain). Times are wall seconds on this machine with its load average, so only the search-time target reads
them; speedups are ratios taken side by side in one process (pruning/draftcheck.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import resultsfile  # bench/, on the path as the script's folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench/results/drafts.json"
HELD_OUT = {"in_domain": "pydocs-valid.txt", "out_of_domain": "kerneldocs-valid.txt"}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def command() -> str:
    return "python bench/drafts.py " + " ".join(sys.argv[1:])


# ---------------------------------------------------------------- stages


def calibrate(args) -> None:
    started = time.perf_counter()
    cli = [sys.executable, "-m", "prunesearch.cli", "latency-calibrate", "--model", str(args.model)]
    subprocess.run(cli, check=True)
    seconds = round(time.perf_counter() - started, 1)
    resultsfile.record(args.results, ["calibration"], {"seconds": seconds, "command": command()})


def search(args) -> None:
    from prunesearch.search.draftjob import draft_spec, run_draft_search

    for hardware in args.hardware:
        key = hardware if args.engine is None else f"{hardware}+{args.engine}"  # the results' and --from's name
        if args.workload:
            key += "," + ",".join(f"{k}={v}" for k, v in args.workload.items())
        for space in args.spaces:
            out = args.workdir / "searches" / key / space
            spec = draft_spec(
                args.model,
                args.data / "pydocs-calib.txt",
                trials=args.trials,
                hardware=hardware,
                engine=args.engine,
                space=space,
                temperature=args.temperature,
                seed=args.seed,
                calibration_tokens=args.calibration_tokens,
                base={"workload": args.workload} if args.workload else None,
            )
            load_before, started = load(), time.perf_counter()
            points = run_draft_search(spec, out)
            seconds = time.perf_counter() - started
            row = {
                "trials": args.trials,
                "seconds": round(seconds, 1),
                "load_average": [load_before, load()],
                "best": points[0] if points else None,
                "front": points,
                "storage": f"sqlite:///{(out / 'study.db').resolve()}",
                "study": out.resolve().name,
                "command": command(),
            }
            resultsfile.record(args.results, ["searches", key, space], row)
            best = points[0] if points else {}
            print(f"{key}/{space}: {seconds:.0f} s, best speedup {best.get('speedup')}", flush=True)


def _search_row(args, name: str) -> dict:
    hardware, space = name.split("@")[0].split("/")
    data = json.loads(args.results.read_text())
    return data["searches"][hardware][space]


def export_best(args, name: str) -> Path:
    """Export the front's best draft of search `name` (HARDWARE/SPACE), or its point number K with `@K`."""
    from prunesearch.search.results import export_trial

    row = _search_row(args, name)
    point = row["front"][int(name.split("@")[1])] if "@" in name else row["best"]
    out = args.workdir / "drafts" / name.replace("/", "-").replace("@", "-")
    if not (out / "config.json").is_file():
        export_trial(row["storage"], row["study"], point["trial"], out)
    return out


def alpha(args) -> None:
    """Predicted (the search's cross-fitted estimate) against teacher-forced acceptance on held-out text, for
    vocabulary-only drafts of the given sizes, exported as a draft search exports them."""
    from prunesearch.pruning import draftcheck
    from prunesearch.pruning.assist import load_assistant
    from prunesearch.pruning.export import load_base_model
    from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
    from prunesearch.search.context import SearchContext
    from prunesearch.search.draftjob import draft_spec
    from prunesearch.search.parametrize import VOCAB_STEP, FixedParams

    calibration = args.data / "pydocs-calib.txt"
    spec = draft_spec(
        args.model, calibration, space="vocab", temperature=args.temperature, calibration_tokens=args.calibration_tokens
    )
    context = SearchContext(spec)
    target, tokenizer = load_base_model(args.model)
    settings = spec.calibration_settings
    for size in args.sizes:
        outcome = context.evaluate(FixedParams({"vocab_cuts": (context.shape.vocab_size - size) // VOCAB_STEP}))
        out = args.workdir / "alpha" / f"vocab-{size}-t{args.temperature}"
        importance = ImportanceCalibration(path=calibration, seq_len=settings.seq_len, max_tokens=settings.tokens)
        prune_checkpoint(args.model, outcome.plan, out, calibration=importance, draft_temperature=args.temperature)
        draft = load_assistant(out, target, tokenizer)
        row = {"vocab": outcome.plan.vocab, "predicted": round(outcome.metrics["acceptance"], 4), "command": command()}
        row["coverage"] = round(outcome.metrics["coverage"], 4)
        for domain, file in HELD_OUT.items():
            ids = draftcheck.heldout_token_ids(tokenizer, args.data / file, args.alpha_tokens)
            measured = draftcheck.teacher_forced_acceptance(target, draft, ids, [args.temperature])
            row[f"teacher_forced_{domain}"] = round(measured[args.temperature], 4)
        resultsfile.record(args.results, ["alpha", f"t{args.temperature}", str(size)], row)
        print(json.dumps(row), flush=True)


def split(args) -> None:
    """A data folder for `--data` whose pydocs-calib.txt is the first 75% of pydocs-calib's paragraphs and whose
    pydocs-valid.txt is the rest: held-out text from the calibration file's own source (kerneldocs-valid linked)."""
    out = args.workdir / "split"
    out.mkdir(parents=True, exist_ok=True)
    paragraphs = (args.data / "pydocs-calib.txt").read_text().split("\n\n")
    cut = int(len(paragraphs) * 0.75)
    (out / "pydocs-calib.txt").write_text("\n\n".join(paragraphs[:cut]))
    (out / "pydocs-valid.txt").write_text("\n\n".join(paragraphs[cut:]))
    link = out / "kerneldocs-valid.txt"
    link.unlink(missing_ok=True)
    link.symlink_to((args.data / "kerneldocs-valid.txt").resolve())
    print(out)


def regions(args) -> None:
    """Teacher-forced greedy acceptance of exported drafts (`--from`, as `check` names them) on the first
    --alpha-tokens tokens of each quarter of pydocs-calib: how hard each part of the calibration text is."""
    import torch

    from prunesearch.pruning import draftcheck
    from prunesearch.pruning.assist import load_assistant
    from prunesearch.pruning.export import load_base_model

    target, tokenizer = load_base_model(args.model)
    text = (args.data / "pydocs-calib.txt").read_text()
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    quarter = len(ids) // 4
    for name in args.sources:
        draft = load_assistant(export_best(args, name), target, tokenizer)
        by_region = [
            draftcheck.teacher_forced_acceptance(target, draft, ids[r * quarter : r * quarter + args.alpha_tokens])
            for r in range(4)
        ]
        row = {"calibration_quarters": [round(a[0.0], 4) for a in by_region], "command": command()}
        resultsfile.record(args.results, ["regions", name], row)
        print(json.dumps({name: row}), flush=True)


def check(args) -> None:
    from prunesearch.pruning import draftcheck
    from prunesearch.pruning.assist import load_assistant
    from prunesearch.pruning.export import load_base_model, read_speculative

    target, tokenizer = load_base_model(args.model)
    for name in args.sources:
        draft_dir = export_best(args, name)
        draft = load_assistant(draft_dir, target, tokenizer)
        speculative = read_speculative(draft_dir) or {}
        lookahead = int(speculative.get("lookahead") or 4)
        row: dict = {"draft": str(draft_dir), "predicted": speculative, "command": command()}
        temperatures = sorted({0.0, *args.temperatures})
        for domain, file in HELD_OUT.items():
            ids = draftcheck.heldout_token_ids(tokenizer, args.data / file, args.alpha_tokens)
            alphas = draftcheck.teacher_forced_acceptance(target, draft, ids, temperatures)
            row[f"teacher_forced_{domain}"] = {str(t): round(a, 4) for t, a in alphas.items()}
        if args.new_tokens > 0:  # 0: acceptance only
            row.update(generation(args, target, draft, tokenizer, lookahead, temperatures))
        resultsfile.record(args.results, ["checks", name], row)
        print(json.dumps({name: row}, default=str)[:2000], flush=True)


def generation(args, target, draft, tokenizer, lookahead: int, temperatures) -> dict:
    """Assisted generation (transformers) and the lean loop on held-out in-domain prompts, at each temperature."""
    import torch

    from prunesearch.pruning import draftcheck

    ids = draftcheck.heldout_token_ids(tokenizer, args.data / HELD_OUT["in_domain"], args.alpha_tokens)
    prompts = draftcheck.prompts_from_ids(ids, args.prompts, args.prompt_tokens)
    rows: dict = {"generation": {}}
    for temperature in temperatures:
        with torch.inference_mode():
            measured = draftcheck.measure_generation(
                target,
                draft,
                prompts,
                max_new_tokens=args.new_tokens,
                temperature=temperature,
                lookahead=lookahead,
                repeats=args.repeats,
            )
        rows["generation"][str(temperature)] = measured | {"load_average": load()}
    return rows | lean(args, target, draft, prompts, lookahead, temperatures)


def lean(args, target, draft, prompts, lookahead: int, temperatures) -> dict:
    """The lean loop (pruning/specdecode.py) against lean plain decoding, lookaheads 1 to the searched one."""
    from prunesearch.pruning.leancheck import measure_lean

    rows = {}
    for temperature in temperatures:
        rows[str(temperature)] = measure_lean(
            target,
            draft,
            prompts,
            lookaheads=tuple(range(1, max(lookahead, 2) + 1)),
            max_new_tokens=args.new_tokens,
            temperature=temperature,
            repeats=args.repeats,
        ) | {"load_average": load()}
    return {"lean": rows}


def heal(args) -> None:
    from prunesearch.pruning.healdraft import heal_draft
    from prunesearch.pruning.healsettings import HealSettings

    name = args.sources[0]
    draft_dir = export_best(args, name)
    out = args.workdir / "healed" / name.replace("/", "-")
    settings = HealSettings(method=args.method, tokens=args.tokens, seed=args.seed)
    started = time.perf_counter()
    result, acceptance = heal_draft(
        draft_dir,
        args.model,
        args.data / "pydocs-calib.txt",
        out,
        settings,
        acceptance_eval=args.data / HELD_OUT["in_domain"],
    )
    row = {
        "draft": name,
        "method": args.method,
        "tokens": result.tokens,
        "train_s": result.seconds,
        "wall_s": round(time.perf_counter() - started, 1),
        "acceptance": acceptance,
        "command": command(),
    }
    resultsfile.record(args.results, ["heal", name], row)
    print(json.dumps(row, default=str), flush=True)


def selfheal(args) -> None:
    """Cheap drafts cut from the target (kept layers, vocabulary), healed on the target's own greedy continuations
    (self-data at temperature 0), measured in the lean loop on held-out prompts, greedy and at --temperatures,
    with the weights as loaded and column-major (`specdecode.column_major_linears`)."""
    from prunesearch.pruning.assist import load_assistant
    from prunesearch.pruning.draftcheck import heldout_token_ids, prompts_from_ids, teacher_forced_acceptance
    from prunesearch.pruning.export import load_base_model
    from prunesearch.pruning.specdecode import column_major_linears

    layouts = {"row_major": load_base_model(args.model), "column_major": load_base_model(args.model)}
    column_major_linears(layouts["column_major"][0])
    tokenizer = layouts["row_major"][1]
    ids = heldout_token_ids(tokenizer, args.data / HELD_OUT["in_domain"], args.alpha_tokens)
    prompts = prompts_from_ids(ids, args.prompts, args.prompt_tokens)
    temperatures = sorted({0.0, *args.temperatures})
    for cut in args.cuts:
        draft_dir = _cut_and_heal(args, cut)
        row: dict = {"draft": str(draft_dir), "command": command(), "lean": {}}
        draft = load_assistant(draft_dir, *layouts["row_major"])
        alphas = teacher_forced_acceptance(layouts["row_major"][0], draft, ids, temperatures)
        row["teacher_forced_in_domain"] = {str(t): round(a, 4) for t, a in alphas.items()}
        for layout in args.layouts:
            target, _ = layouts[layout]
            draft = load_assistant(draft_dir, target, tokenizer)
            if layout == "column_major":
                column_major_linears(draft)
            row["lean"][layout] = lean(args, target, draft, prompts, args.lookahead, temperatures)["lean"]
        key = f"{cut} healed {args.heal_steps}" + (", vocabulary by emissions" if args.vocab_by == "emissions" else "")
        resultsfile.record(args.results, ["selfheal", key], row)
        print(json.dumps({cut: row}, default=str)[:3000], flush=True)


def _cut_and_heal(args, cut: str) -> Path:
    """`LAYERS:VOCAB` (e.g. `0-1:2048`, `0:full`): the target with only those layers and that many tokens (FLAP on
    pydocs-calib), healed on greedy self-data; both kept in the workdir and reused when present."""
    from prunesearch.pruning.heal import heal as heal_checkpoint
    from prunesearch.pruning.healsettings import HealSettings
    from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
    from prunesearch.pruning.plan import LayerPlan, PrunePlan

    layers_text, vocab_text = cut.split(":")
    first, _, last = layers_text.partition("-")
    kept = range(int(first), int(last or first) + 1)
    name = cut.replace(":", "-v") + ("-text" if args.vocab_by == "text" else "")
    cut_dir, healed = args.workdir / "selfheal" / name, args.workdir / "selfheal" / f"{name}-healed{args.heal_steps}"
    calibration = args.data / "pydocs-calib.txt"
    if not (cut_dir / "config.json").is_file():
        config = json.loads((args.model / "config.json").read_text())
        whole = LayerPlan(config["num_attention_heads"], config["intermediate_size"])
        layers = tuple(whole if i in kept else LayerPlan(0, 0) for i in range(config["num_hidden_layers"]))
        vocab = None if vocab_text == "full" else int(vocab_text)
        plan = PrunePlan(layers=layers, vocab=vocab)
        importance = ImportanceCalibration(calibration, max_tokens=16_384)
        emitted = 0.0 if args.vocab_by == "emissions" else None  # greedy drafts keep the target's argmax tokens
        prune_checkpoint(args.model, plan, cut_dir, calibration=importance, draft_temperature=emitted)
    if args.heal_steps and not (healed / "config.json").is_file():
        settings = HealSettings(
            steps=args.heal_steps, lr=5e-4, seq_len=128, batch=8, seed=args.seed,
            self_data_tokens=args.self_data, self_data_temperature=0.0,
        )  # fmt: skip
        heal_checkpoint(cut_dir, args.model, calibration, healed, settings)
    return healed if args.heal_steps else cut_dir


def verify(args) -> None:
    """The target's verification cost v(g), g = 1..8, timed on this CPU as `--hardware measured` prices it
    (`MeasuredLatencyModel.verification_costs`), per batch size; fp32, a 256-token prompt."""
    from prunesearch.profilers.latency import Workload
    from prunesearch.profilers.measured import MeasuredLatencyModel

    config = json.loads((args.model / "config.json").read_text())
    model = MeasuredLatencyModel(warmup=2, verify_rounds=args.repeats)
    for batch in args.batches:
        started = time.perf_counter()
        costs = model.verification_costs(config, Workload(batch, 256, 64, "fp32"), 8)
        row = {
            "v": [round(v, 3) for v in costs],
            "seconds": round(time.perf_counter() - started, 1),
            "load_average": load(),
            "threads": args.threads,
            "command": command(),
        }
        resultsfile.record(args.results, ["verify", f"batch {batch}"], row)
        print(json.dumps({f"batch {batch}": row}), flush=True)


def main(argv: list[str] | None = None) -> int:
    words = lambda s: [w for w in s.split(",") if w]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = {"calibrate": calibrate, "search": search, "alpha": alpha, "regions": regions, "split": split}
    stages |= {"check": check, "heal": heal, "selfheal": selfheal, "verify": verify}
    parser.add_argument("what", choices=list(stages))
    parser.add_argument("--model", type=Path, default=SHARED / "models/llama-docs")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench/results/drafts-work")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--hardware", type=words, default=["h100-sxm", "local-calibrated"])
    parser.add_argument("--engine", default=None, help="the workload's engine (default: the hardware's)")
    parser.add_argument(
        "--workload", type=json.loads, default=None, help='search: the job\'s workload, e.g. {"batch": 256}'
    )
    parser.add_argument("--spaces", type=words, default=["joint", "vocab", "depth", "structure"])
    parser.add_argument("--temperature", type=float, default=0.0, help="search: 0 is greedy")
    parser.add_argument("--calibration-tokens", type=int, default=None)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in words(s)], default=[1792, 2880, 4416], help="alpha")
    parser.add_argument("--from", dest="sources", type=words, default=["local-calibrated/joint", "h100-sxm/joint"])
    parser.add_argument("--temperatures", type=lambda s: [float(x) for x in words(s)], default=[1.0])
    parser.add_argument("--alpha-tokens", type=int, default=16_384, help="held-out tokens for teacher-forced alpha")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64, help="check: 0 measures acceptance only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=100_000, help="heal: training tokens")
    parser.add_argument("--method", default="full", help="heal: full or lora")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cuts", type=words, default=["0:2048", "0-1:2048"], help="selfheal: LAYERS:VOCAB drafts")
    parser.add_argument("--heal-steps", type=int, default=300, help="selfheal: 0 measures the cut unhealed")
    parser.add_argument(
        "--vocab-by", choices=["emissions", "text"], default="emissions", help="selfheal: how a cut's tokens are kept"
    )
    parser.add_argument("--self-data", type=int, default=150_000, help="selfheal: greedy self-data tokens")
    parser.add_argument("--lookahead", type=int, default=3, help="selfheal: lookaheads 1 to this")
    parser.add_argument("--layouts", type=words, default=["row_major", "column_major"])
    parser.add_argument("--batches", type=lambda s: [int(x) for x in words(s)], default=[1, 4], help="verify")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("PRUNESEARCH_HOME", str(args.workdir / "home"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    stages[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
