"""Measure an exported draft against its target: teacher-forced acceptance on held-out text, and real
acceptance and tokens/s of assisted generation against plain target decoding.

- `teacher_forced_acceptance(target, draft, token_ids, temperatures)`: both models read the same target tokens
  (the draft through its token map, `draftvocab.py`) in non-overlapping windows; at every position
  `speculative.acceptance` gives the probability the draft's next token is accepted. Its mean is the alpha the
  search predicts. Greedy (temperature 0) counts argmax agreement.
- `measure_generation(target, draft, prompts, ...)`: for each prompt, plain target decoding, assisted decoding
  and plain draft decoding, interleaved and repeated (the order rotates per repeat); the figures are medians
  over those runs, after one untimed warm-up of each. The draft's cost ratio `c` comes from the same runs
  (draft vs target seconds per token), so `predicted_speedup` applies `speculative.speedup` to the *measured*
  acceptance (verification priced as one target step, the paper's formula). Two acceptance figures:
  `acceptance` = accepted / drafted (what transformers' assisted generation achieves per drafted token), and
  `alpha_from_rounds`, the alpha whose expected tokens per round equals the measured one (comparable with
  teacher-forced alpha).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .assist import DraftError, assisted_generate, load_assistant, plain_generate
from .export import load_base_model, read_speculative
from .speculative import GREEDY, acceptance, expected_tokens, speedup

EVAL_SEQ_LEN = 256
_PREDICTED = ("acceptance", "lookahead", "temperature", "predicted_speedup")


def heldout_token_ids(tokenizer, path: str | Path, max_tokens: int) -> torch.Tensor:
    """The first `max_tokens` target token ids of a UTF-8 text file (no special tokens), 1-D."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DraftError(f"{path}: cannot read the text file ({exc})") from None
    ids = tokenizer(text[: max_tokens * 16], add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise DraftError(f"{path}: too little text to measure acceptance")
    return torch.tensor(ids, dtype=torch.long)


def teacher_forced_acceptance(
    target, draft, token_ids: torch.Tensor, temperatures: Sequence[float] = (GREEDY,), seq_len: int = EVAL_SEQ_LEN
) -> dict[float, float]:
    """Mean acceptance per drafted token at each temperature, both models reading `token_ids` (target ids).

    `draft` must read and write target ids (`assist.load_assistant` adapts trimmed drafts); its logits over
    trimmed ids are -inf, so the target's mass there counts as rejected."""
    totals = dict.fromkeys(temperatures, 0.0)
    positions = 0
    with torch.inference_mode():
        for start in range(0, token_ids.numel() - 1, seq_len):
            window = token_ids[start : start + seq_len].unsqueeze(0).to(target.device)
            if window.shape[-1] < 2:
                break
            target_logits = target(window).logits[0].float()
            draft_logits = draft(window).logits[0].float()
            for temperature in temperatures:
                totals[temperature] += acceptance(target_logits, draft_logits, None, temperature).sum().item()
            positions += window.shape[-1]
    return {temperature: total / positions for temperature, total in totals.items()}


def alpha_from_tokens_per_round(tokens_per_round: float, lookahead: int) -> float:
    """The per-token acceptance alpha whose expected tokens per round (`speculative.expected_tokens`) is the
    measured mean, by bisection. Accepted / drafted under-counts alpha: drafts after the first rejection of a
    round are never tested; this inversion is the figure comparable with teacher-forced alpha."""
    low, high = 0.0, 1.0
    if tokens_per_round >= lookahead + 1:
        return 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_tokens(mid, lookahead) < tokens_per_round else (low, mid)
    return (low + high) / 2


def prompts_from_ids(token_ids: torch.Tensor, count: int, length: int) -> list[torch.Tensor]:
    """`count` prompts of `length` tokens, taken at evenly spaced offsets of the held-out token ids."""
    room = token_ids.numel() - length
    if count < 1 or length < 1 or room < 0:
        raise DraftError(f"cannot take {count} prompts of {length} tokens from {token_ids.numel()} tokens")
    step = room // count if count > 1 else 0
    return [token_ids[i * step : i * step + length].unsqueeze(0) for i in range(count)]


@dataclass
class _Runs:
    plain_tps: list[float]
    assisted_tps: list[float]
    draft_tps: list[float]
    ratios: list[float]
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    new_tokens: int = 0


def measure_generation(
    target,
    draft,
    prompts: Sequence[torch.Tensor],
    *,
    max_new_tokens: int = 64,
    temperature: float = GREEDY,
    lookahead: int = 4,
    repeats: int = 3,
) -> dict[str, Any]:
    """Real acceptance and tokens/s of assisted generation against plain target decoding (medians)."""
    warm_up = _Runs([], [], [], [])  # first calls pay one-off costs (allocations, lazy imports); not counted
    _one_prompt(warm_up, target, draft, prompts[0].to(target.device), 0, 0, 4, temperature, lookahead)
    runs = _Runs([], [], [], [])
    for repeat in range(repeats):
        for index, prompt in enumerate(prompts):
            prompt = prompt.to(target.device)
            seed = repeat * len(prompts) + index
            _one_prompt(runs, target, draft, prompt, seed, repeat, max_new_tokens, temperature, lookahead)
    return _summary(runs, lookahead, temperature, max_new_tokens, len(prompts), repeats)


def _one_prompt(runs: _Runs, target, draft, prompt, seed, repeat, max_new_tokens, temperature, lookahead) -> None:
    """Plain target, assisted and plain draft decoding of one prompt, in an order that rotates with `repeat`."""
    results: dict[str, Any] = {}
    kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    jobs = {
        "plain": lambda: plain_generate(target, prompt, **kwargs),
        "assisted": lambda: assisted_generate(target, draft, prompt, lookahead=lookahead, **kwargs),
        "draft": lambda: plain_generate(draft, prompt, **kwargs),
    }
    names = list(jobs)
    for name in names[repeat % 3 :] + names[: repeat % 3]:
        results[name] = jobs[name]()
    plain_out, plain_s = results["plain"]
    draft_out, draft_s = results["draft"]
    _, stats = results["assisted"]
    plain_tps = (plain_out.shape[-1] - prompt.shape[-1]) / plain_s
    runs.plain_tps.append(plain_tps)
    runs.assisted_tps.append(stats.tokens_per_second)
    runs.draft_tps.append((draft_out.shape[-1] - prompt.shape[-1]) / draft_s)
    runs.ratios.append(stats.tokens_per_second / plain_tps)
    runs.drafted += stats.drafted
    runs.accepted += stats.accepted
    runs.rounds += stats.rounds
    runs.new_tokens += stats.new_tokens


def _summary(runs: _Runs, lookahead, temperature, max_new_tokens, prompts, repeats) -> dict[str, Any]:
    alpha = runs.accepted / runs.drafted if runs.drafted else 0.0
    per_round = runs.new_tokens / runs.rounds if runs.rounds else 1.0
    alpha_rounds = alpha_from_tokens_per_round(per_round, lookahead)
    plain, assisted, draft = (statistics.median(v) for v in (runs.plain_tps, runs.assisted_tps, runs.draft_tps))
    draft_cost = plain / draft if draft > 0 else 0.0
    return {
        "temperature": temperature,
        "lookahead": lookahead,
        "prompts": prompts,
        "repeats": repeats,
        "max_new_tokens": max_new_tokens,
        "acceptance": round(alpha, 4),
        "alpha_from_rounds": round(alpha_rounds, 4),
        "tokens_per_round": round(per_round, 3),
        "drafted": runs.drafted,
        "accepted": runs.accepted,
        "plain_tokens_per_second": round(plain, 2),
        "assisted_tokens_per_second": round(assisted, 2),
        "draft_tokens_per_second": round(draft, 2),
        "measured_speedup": round(statistics.median(runs.ratios), 3),
        "draft_cost": round(draft_cost, 4),
        "predicted_speedup": round(speedup(alpha_rounds, lookahead, draft_cost), 3),
    }


@dataclass(frozen=True)
class DraftCheckSettings:
    """What `check_draft` measures. `temperature` None: the draft's speculative.json temperature, else greedy;
    `lookahead` None: speculative.json's, else 4. Greedy is always measured too."""

    temperature: float | None = None
    lookahead: int | None = None
    prompts: int = 4
    prompt_tokens: int = 32
    new_tokens: int = 64
    repeats: int = 3
    alpha_tokens: int = 16_384


def check_draft(target_dir: str | Path, draft_dir: str | Path, data: str | Path, settings: DraftCheckSettings) -> dict:
    """Teacher-forced alpha on `data` and real assisted generation on prompts from it, greedy and (when asked)
    sampling; speculative.json's predictions beside them when the draft has one."""
    for path in (target_dir, draft_dir):
        if not (Path(path) / "config.json").is_file():
            raise DraftError(f"{path} is not a model directory (no config.json)")
    if not Path(data).is_file():
        raise DraftError(f"{data}: data file not found")
    spec = read_speculative(draft_dir) or {}
    temperature = settings.temperature if settings.temperature is not None else spec.get("temperature", GREEDY)
    lookahead = settings.lookahead or int(spec.get("lookahead", 4))
    temperatures = sorted({GREEDY, float(temperature)})
    target, tokenizer = load_base_model(target_dir)
    draft = load_assistant(draft_dir, target, tokenizer)
    token_ids = heldout_token_ids(tokenizer, data, settings.alpha_tokens)
    alphas = teacher_forced_acceptance(target, draft, token_ids, temperatures)
    prompts = prompts_from_ids(token_ids, settings.prompts, settings.prompt_tokens)
    runs = {
        str(t): measure_generation(
            target, draft, prompts, max_new_tokens=settings.new_tokens, temperature=t,
            lookahead=lookahead, repeats=settings.repeats,
        )
        for t in temperatures
    }  # fmt: skip
    return {
        "target": str(target_dir),
        "draft": str(draft_dir),
        "data": str(data),
        "teacher_forced_acceptance": {str(t): round(a, 4) for t, a in alphas.items()},
        "generation": runs,
        "speculative_json": {k: spec[k] for k in _PREDICTED if k in spec},
        "threads": torch.get_num_threads(),
    }
