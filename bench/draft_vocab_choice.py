"""Which tokens a trimmed draft should keep: the calibration text's most frequent, or the target's most emitted
(pruning/targetmass.py). For a vocabulary-only draft, the share of held-out positions whose target argmax the
vocabulary keeps is the ceiling of its greedy acceptance; this measures that share, and its cross-fitted estimate
on the calibration text (search/vocabfit.py: chosen without a region, measured on it), for both choices.

    python bench/draft_vocab_choice.py [--sizes 1792,2880,4416] [--tokens 16384] [--threads 1]

Target llama-docs, calibration pydocs-calib (all of it), held out: the first --tokens tokens of pydocs-valid (in
domain) and kerneldocs-valid (out of domain). Writes bench/results/draft_vocab_choice.json. No timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEQ_LEN = 256


def greedy_picks(model, ids: list[int]) -> list[int]:
    """The target's argmax after every position of `ids`, read in SEQ_LEN windows."""
    picks: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(ids), SEQ_LEN):
            window = torch.tensor([ids[start : start + SEQ_LEN]])
            picks += model(input_ids=window).logits[0].argmax(-1).tolist()
    return picks


def share_kept(kept: list[int], tokens: list[int]) -> float:
    keep = set(kept)
    return round(sum(t in keep for t in tokens) / len(tokens), 4)


def measure(tokenizer, calib: list[int], picks: dict[str, list[int]], size: int, folds: int = 4) -> dict:
    from prunesearch.pruning.vocab import select_kept_tokens

    region = len(calib) // folds
    rows = {}
    for name, source in (("text_counts", calib), ("target_emissions", picks["calib"])):
        kept = select_kept_tokens(tokenizer, Counter(source), size)
        estimate = []
        for fold in range(folds):
            rest = source[: fold * region] + source[(fold + 1) * region :]
            fold_kept = select_kept_tokens(tokenizer, Counter(rest), size)
            estimate.append(share_kept(fold_kept, picks["calib"][fold * region : (fold + 1) * region]))
        rows[name] = {
            "cross_fitted_estimate": round(sum(estimate) / folds, 4),
            "pydocs_valid": share_kept(kept, picks["in_domain"]),
            "kerneldocs_valid": share_kept(kept, picks["out_of_domain"]),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED / "models/llama-docs")
    parser.add_argument("--sizes", default="1792,2880,4416")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/draft_vocab_choice.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()

    def ids(name: str, limit: int | None = None) -> list[int]:
        text = (SHARED / "data" / name).read_text()
        return tokenizer(text, add_special_tokens=False)["input_ids"][:limit]

    calib = ids("pydocs-calib.txt")
    held_out = {
        "in_domain": ids("pydocs-valid.txt", args.tokens),
        "out_of_domain": ids("kerneldocs-valid.txt", args.tokens),
    }
    picks = {"calib": greedy_picks(model, calib)} | {k: greedy_picks(model, v) for k, v in held_out.items()}
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {
        "command": "python bench/draft_vocab_choice.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "calibration_tokens": len(calib),
        "share_of_target_argmax_kept": {size: measure(tokenizer, calib, picks, size) for size in sizes},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
