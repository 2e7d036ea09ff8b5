"""lm-eval parity on a real checkpoint: the perplexity `prunesearch evaluate` reports through lm-evaluation-harness
against the project's own evaluation of the same text.

    python bench/lmeval_parity.py [--model ../shared/models/llama-docs] [--data ../shared/data/pydocs-valid.txt]

Three figures of one text, all in fp32 on the CPU: lm-eval's (rolling windows of --max-length tokens), the
project's `rolling_perplexity` over the same windows, and the project's standard protocol (`perplexity`:
non-overlapping windows of --max-length + 1 tokens, each first token only context, the tail dropped). Prints JSON
and writes bench/results/lmeval_parity.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from prunesearch.choices import DType
from prunesearch.pruning.evaluate import perplexity, rolling_perplexity
from prunesearch.pruning.lmeval import EvalRequest, evaluate, load_model
from prunesearch.pruning.lmtasks import task_name

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "llama-docs")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "pydocs-valid.txt")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lmeval_parity.json")
    args = parser.parse_args()
    text = args.data.read_text(encoding="utf-8")

    start = time.perf_counter()
    report = evaluate(
        EvalRequest(model=args.model, data=(args.data,), device="cpu", max_length=args.max_length, batch_size=8)
    )
    harness_s = time.perf_counter() - start
    harness = report["results"][task_name("ppl", args.data)]

    model, tokenizer = load_model(args.model, device="cpu", dtype=DType.FP32)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    rolling = rolling_perplexity(model, tokenizer, text, max_length=args.max_length, prefix_token_id=prefix)
    project_s = time.perf_counter() - start
    standard = perplexity(model, tokenizer, text, seq_len=args.max_length + 1, batch_size=args.batch_size)

    n_bytes = len(text.encode("utf-8"))
    project_byte_ppl = math.exp(rolling.nll / n_bytes)
    result = {
        "model": str(args.model),
        "data": str(args.data),
        "bytes": n_bytes,
        "tokens": rolling.tokens,
        "max_length": args.max_length,
        "lm_eval": {**harness, "seconds": round(harness_s, 1)},
        "project_rolling": {
            "byte_perplexity": project_byte_ppl,
            "bits_per_byte": rolling.nll / n_bytes / math.log(2),
            "token_perplexity": rolling.token_ppl,
            "seconds": round(project_s, 1),
        },
        "project_standard": {"token_perplexity": standard.token_ppl, "char_perplexity": standard.char_ppl},
        "byte_ppl_rel_diff": harness["byte_perplexity"] / project_byte_ppl - 1,
        "token_ppl_rel_diff_vs_standard": rolling.token_ppl / standard.token_ppl - 1,
        "machine": {"cpu": _cpu(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _cpu() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")


if __name__ == "__main__":
    main()
