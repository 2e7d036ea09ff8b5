"""Probe for a healability-aware proxy (issue 9, "Next"): does a closed-form linear refit of a pruned model's
final hidden state reorder plans the way healing does?

For each plan (the searched picks of `bench/results/search_quality.json` and ShortGPT at the same budgets), the
pruned model's final (normed) hidden states on the calibration text are mapped to the dense model's by least
squares (an affine map, as ReplaceMe-style training-free fixes fit one), and the KL to the dense model is
measured before and after the map on calibration, pydocs-valid and kerneldocs-valid tokens. The map is fitted on
calibration tokens only, so the validation columns are out of sample. Nothing here is product code.

    python bench/refit_probe.py [--tokens 16384] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import resultsfile  # bench/, on the path as the script's folder
import search_quality as sq
import torch

from prunesearch.pruning.calibration import load_calibration, token_blocks
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.surgery import apply_plan
from prunesearch.search.context import SearchContext

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench/results/refit_probe.json"
TEXTS = {"calib": "pydocs-calib", "valid": "pydocs-valid", "kvalid": "kerneldocs-valid"}


@torch.no_grad()
def final_hidden(model, blocks: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """The final normed hidden state at every position, (tokens, hidden)."""
    size = model.config.hidden_size
    parts = [model.model(input_ids=blocks[i : i + batch]).last_hidden_state for i in range(0, len(blocks), batch)]
    return torch.cat([part.reshape(-1, size) for part in parts])


@torch.no_grad()
def mean_kl(dense_h: torch.Tensor, h: torch.Tensor, head, chunk: int = 4096) -> float:
    """Mean KL(dense || pruned) of the next-token distributions the head gives the two hidden states."""
    total = 0.0
    for i in range(0, len(h), chunk):
        p = torch.log_softmax(head(dense_h[i : i + chunk]), -1)
        q = torch.log_softmax(head(h[i : i + chunk]), -1)
        total += (p.exp() * (p - q)).sum().item()
    return total / len(h)


def affine(h: torch.Tensor) -> torch.Tensor:
    return torch.cat([h, torch.ones(len(h), 1)], 1)


def probe(context: SearchContext, blocks: dict[str, torch.Tensor], plans: dict[str, PrunePlan]) -> dict:
    dense, head = context.model, context.model.lm_head
    dense_h = {name: final_hidden(dense, b) for name, b in blocks.items()}
    rows = {}
    for name, plan in plans.items():
        model = apply_plan(dense, plan, context.scores).eval()
        pruned_h = {text: final_hidden(model, b) for text, b in blocks.items()}
        fitted = torch.linalg.lstsq(affine(pruned_h["calib"]).double(), dense_h["calib"].double()).solution.float()
        rows[name] = {
            "removed_layers": [i for i, layer in enumerate(plan.layers) if layer.removed],
            **{
                TEXTS[text]: {
                    "kl": round(mean_kl(dense_h[text], pruned_h[text], head), 4),
                    "kl_refit": round(mean_kl(dense_h[text], affine(pruned_h[text]) @ fitted, head), 4),
                }
                for text in blocks
            },
        }
        print(json.dumps({name: rows[name]}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHARED / "models/llama-docs")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--tokens", type=int, default=16_384, help="tokens of each text")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PRUNESEARCH_HOME", tempfile.mkdtemp(prefix="refit-probe-"))
    spec_args = argparse.Namespace(model=args.model, data=args.data, min_keep_layers=0.25, seed=0, seq_len=256)
    context = SearchContext(sq.make_spec(spec_args, "tpe", 1, args.tokens))
    blocks = {"calib": context.evaluator.blocks.cpu()}
    for key in ("valid", "kvalid"):
        docs = load_calibration(str(args.data / f"{TEXTS[key]}.txt"), context.tokenizer)
        blocks[key] = token_blocks(context.tokenizer, docs, 256, args.tokens).cpu()
    quality = json.loads((ROOT / "bench/results/search_quality.json").read_text())["quality"]
    searched = {row["budget"]: row for row in quality}
    plans = {}
    for budget in (0.7, 0.8):
        plans[f"search-{budget}"] = PrunePlan.from_dict(searched[budget]["search"]["plan"])
        plans[f"shortgpt-{budget}"] = sq.shortgpt_under(context, budget)
    rows = probe(context, blocks, plans)
    command = "python bench/refit_probe.py " + " ".join(sys.argv[1:])
    resultsfile.record(RESULTS, ["probe"], {"command": command, "plans": rows})


if __name__ == "__main__":
    main()
