"""Surgery benchmarks on a real checkpoint: speed, peak memory, and perplexity per criterion.

    python bench/surgery.py [--model ../shared/models/llama-docs] [--data ../shared/data]

Prints a Markdown report and writes bench/results/surgery.json. No timing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.calibration import load_calibration, token_blocks
from prunesearch.pruning.evaluate import perplexity
from prunesearch.pruning.export import export_checkpoint, load_base_model
from prunesearch.pruning.importance import CRITERIA, compute_importance
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.pruning.surgery import apply_plan

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident set every millisecond while active."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mixed_plan(shape) -> PrunePlan:
    """About half the decoder: uneven heads and widths, one sublayer and one layer removed."""
    n, h, f, g = shape.num_layers, shape.num_heads, shape.intermediate_size, shape.group_size
    layers = [LayerPlan(heads=max(g, (h // 2) // g * g), ffn=f // 2) for _ in range(n)]
    layers[0] = LayerPlan(heads=h, ffn=f)
    layers[n // 2] = LayerPlan(heads=0, ffn=f // 2)
    layers[n - 2] = LayerPlan(heads=0, ffn=0)
    return PrunePlan(layers=tuple(layers))


def bench_speed_and_memory(model, tokenizer, scores) -> dict:
    shape = model_shape(model.config)
    plan = mixed_plan(shape)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with tempfile.TemporaryDirectory() as out, PeakRSS() as rss:
        started = time.perf_counter()
        pruned = apply_plan(model, plan, scores)
        surgery_s = time.perf_counter() - started
        export_checkpoint(pruned, tokenizer, plan, out, {"bench": True})
        total_s = time.perf_counter() - started
    extra = rss.peak - rss.start
    return {
        "plan": plan.to_dict(),
        "surgery_s": round(surgery_s, 3),
        "surgery_plus_export_s": round(total_s, 3),
        "model_mb": round(model_bytes / 2**20, 1),
        "extra_peak_mb": round(extra / 2**20, 1),
        "peak_over_model": round((model_bytes + extra) / model_bytes, 2),
    }


def bench_quality(model, tokenizer, stats, texts: dict[str, str], cut: float) -> dict:
    shape = model_shape(model.config)
    ffn = round(shape.intermediate_size * (1 - cut))
    plan = PrunePlan(layers=(LayerPlan(heads=shape.num_heads, ffn=ffn),) * shape.num_layers)
    rows = {"dense": {name: perplexity(model, tokenizer, text).token_ppl for name, text in texts.items()}}
    for criterion in CRITERIA:
        pruned = apply_plan(model, plan, compute_importance(model, criterion, stats))
        rows[criterion] = {name: perplexity(pruned, tokenizer, text).token_ppl for name, text in texts.items()}
    return {"mlp_cut": cut, "ffn_kept": ffn, "ppl": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT.parent / "shared/models/llama-docs")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--calibration-tokens", type=int, default=65_536)
    parser.add_argument("--eval-chars", type=int, default=60_000)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load_base_model(args.model)
    docs = load_calibration(args.data / "pydocs-calib.txt", tokenizer)
    blocks = token_blocks(tokenizer, docs, 256, args.calibration_tokens)
    started = time.perf_counter()
    stats = collect_activation_stats(model, blocks, progress=False)
    importance_s = time.perf_counter() - started
    scores = compute_importance(model, "flap", stats)
    texts = {
        name: (args.data / f"{name}.txt").read_text()[: args.eval_chars]
        for name in ("pydocs-valid", "kerneldocs-valid")
    }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "importance_pass": {"tokens": blocks.numel(), "seconds": round(importance_s, 2)},
        "speed_memory": bench_speed_and_memory(model, tokenizer, scores),
        "quality": [bench_quality(model, tokenizer, stats, texts, cut) for cut in (0.25, 0.5)],
    }
    out = ROOT / "bench/results/surgery.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
