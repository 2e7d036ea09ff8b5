"""A lean, lossless speculative-decoding loop for one prompt: target and draft forwards, nothing else.

transformers' assisted generation (`assist.py`) runs the draft's own `generate()` every round; on a small model
that per-call overhead costs more than the draft saves. This loop keeps one `transformers.DynamicCache` per model
and calls only their forwards:

1. the draft proposes `lookahead` tokens, one forward each (its first forward of a round also reads the tokens
   the target added since the draft last ran);
2. the target scores the last accepted token and all drafts in one forward (`lookahead + 1` positions);
3. Leviathan et al.'s rule (2023, "Fast Inference from Transformers via Speculative Decoding") keeps a prefix of
   the drafts and adds one token of the target's: greedy keeps drafts while they equal the target's argmax, then
   the target's argmax; sampling (pure, at `temperature`) keeps draft token x with probability
   min(1, p(x) / q(x)) and on rejection samples from max(0, p - q) normalised; when every draft is kept, the
   extra token is sampled from p. The output has the target's own distribution (greedy: its tokens exactly);
4. both caches are cropped (`DynamicCache.crop`) back to the kept tokens.

Invariant between rounds: the target's cache holds every token but the last. The draft may read target ids
through `draftvocab.py` (a trimmed vocabulary: its logits are -inf on trimmed ids, which it then never proposes;
the target's mass there is rejected). `plain_generate_lean` is the same loop without a draft, one target forward
per token: the fair baseline for it. Batch 1 only.

`column_major_linears(model)` is an optional CPU layout for both models (and the plain baseline): every linear
weight stored transposed, so the (g + 1)-row products of a verification forward stop paying for MKL's slow path
with a transposed weight (see its docstring).

This module needs only torch and transformers (no prunesearch import), so it can be shipped in an export as
transformers' `custom_generate/generate.py` (`customgen.py`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache

GREEDY = 0.0  # temperature meaning "greedy decoding"


@dataclass(frozen=True)
class AssistStats:
    """One generation: tokens produced, verification rounds, drafted and accepted tokens, wall time."""

    new_tokens: int
    rounds: int
    drafted: int
    accepted: int
    seconds: float
    draft_seconds: float = 0.0  # lean loop only: time in the draft's forwards (proposals)
    verify_seconds: float = 0.0  # lean loop only: time in the target's verification forwards
    prefill_seconds: float = 0.0  # lean loop only: reading the prompt (both models' caches)

    @property
    def acceptance(self) -> float:
        """Accepted / drafted: the real per-token acceptance rate (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"acceptance": self.acceptance, "tokens_per_second": self.tokens_per_second}


class _Picker:
    """Token choice and the acceptance rule at one temperature, with its own seeded generator."""

    def __init__(self, temperature: float, seed: int, device: torch.device):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == GREEDY

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax at the temperature, in float32 (-inf logits get probability 0)."""
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def pick(self, logits: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """A token from one position's logits, and its distribution (None when greedy)."""
        if self.greedy:
            return int(logits.argmax()), None
        probs = self.probs(logits)
        return self.sample(probs), probs

    def sample(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def verify(self, drafts: list[int], draft_probs: list, target_logits: torch.Tensor) -> tuple[int, int]:
        """How many drafts are kept, and the target's token after them. `target_logits`: (len(drafts) + 1, V)."""
        if self.greedy:
            choices = target_logits.argmax(-1).tolist()
            kept = 0
            while kept < len(drafts) and drafts[kept] == choices[kept]:
                kept += 1
            return kept, choices[kept]
        target_probs = self.probs(target_logits)
        for i, (token, q) in enumerate(zip(drafts, draft_probs, strict=True)):
            p = target_probs[i]
            ratio = float(p[token]) / float(q[token])  # q[token] > 0: the draft sampled it
            if float(torch.rand((), generator=self.generator, device=p.device)) >= ratio:
                return i, self.sample(_residual(p, q))
        return len(drafts), self.sample(target_probs[-1])


def column_major_linears(model: torch.nn.Module) -> int:
    """Store every `nn.Linear` weight column-major (its transpose contiguous), in place; returns how many.

    Why: `F.linear(x, W)` computes `x @ W.T`. With `W` row-major (as loaded) that is a GEMM with a transposed
    operand, and on CPU (MKL, fp32) its cost for 2-5 rows of `x` (a verification forward of g + 1 tokens) rises
    far above one row's: on llama-docs a 2-token forward cost about 1.23 one-token forwards and a 3-token one 1.40,
    against 1.10 and 1.19 with `W.T` contiguous, which is a plain GEMM; the one-token step got faster too. The
    values are unchanged (another kernel may round differently). A weight shared with an embedding (tied LM head)
    is left as it is, so the embedding's row lookups stay contiguous. Call it on the target and the draft (and
    use the same target for the plain baseline); save such a model only after making its weights contiguous."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) not in embedded:
                module.weight.data = module.weight.data.t().contiguous().t()
                changed += 1
    return changed


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(0, p - q) normalised: the distribution of a rejected position (p itself if rounding left no mass)."""
    rest = (p - q).clamp_(min=0.0)
    total = float(rest.sum())
    return rest / total if total > 0 else p


def _crop_to(cache: DynamicCache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _forward(model, token_ids: list[int], cache: DynamicCache, device, keep: int = 1) -> torch.Tensor:
    """Logits of the last `keep` positions after reading `token_ids` on top of `cache`, shape (keep, V)."""
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)
    return model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=keep).logits[0]


def _stop_ids(model, eos_token_id: int | list[int] | None) -> set[int]:
    """Tokens that end generation: `eos_token_id`, else the model's generation config's (as `generate` does)."""
    if eos_token_id is None:
        config = getattr(model, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(t) for t in eos_token_id}


def _until_stop(tokens: list[int], stop: set[int]) -> tuple[list[int], bool]:
    """`tokens` up to and including the first stop token, and whether one was found."""
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[: i + 1], True
    return tokens, False


def _check(input_ids: torch.Tensor, max_new_tokens: int, lookahead: int | None = None) -> list[int]:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape (1, n) with n >= 1, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if lookahead is not None and lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}")
    return input_ids[0].tolist()


def _prefill(model, tokens: list[int], device) -> DynamicCache:
    """A cache holding every token but the last."""
    cache = DynamicCache()
    if len(tokens) > 1:
        _forward(model, tokens[:-1], cache, device)
    return cache


def _output(tokens: list[int], device) -> torch.Tensor:
    return torch.tensor([tokens], dtype=torch.long, device=device)


def speculative_generate(
    target,
    draft,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    lookahead: int,
    temperature: float = GREEDY,
    seed: int = 0,
    eos_token_id: int | list[int] | None = None,
) -> tuple[torch.Tensor, AssistStats]:
    """Speculative decoding of one prompt (`input_ids`, shape (1, n), target ids) with `draft` proposing
    `lookahead` tokens per round. Returns the full output ids (prompt included) and the counts of this call.

    `draft` must read and write the target's ids (`draftvocab.adapt_to_target_vocabulary` for a trimmed one).
    Generation stops after `max_new_tokens` or at an end-of-sequence token (`eos_token_id`, default the
    target's generation config's), as `generate` does."""
    tokens = _check(input_ids, max_new_tokens, lookahead)
    device = target.device
    picker = _Picker(temperature, seed, device)
    stop = _stop_ids(target, eos_token_id)
    limit = len(tokens) + max_new_tokens
    tally = _Tally()
    with torch.inference_mode():
        started = time.perf_counter()
        target_cache, draft_cache = _prefill(target, tokens, device), _prefill(draft, tokens, device)
        tally.prefill_seconds = time.perf_counter() - started
        while len(tokens) < limit:
            clock = time.perf_counter()
            drafts, draft_probs = _propose(draft, draft_cache, tokens, min(lookahead, limit - len(tokens) - 1), picker)
            tally.draft_seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            logits = _forward(target, [tokens[-1], *drafts], target_cache, device, keep=len(drafts) + 1)
            tally.verify_seconds += time.perf_counter() - clock
            kept, extra = picker.verify(drafts, draft_probs, logits)
            new, stopped = _until_stop([*drafts[:kept], extra], stop)
            tally.count(len(drafts), min(kept, len(new)))
            tokens.extend(new)
            _crop_to(target_cache, len(tokens) - 1)
            _crop_to(draft_cache, min(len(tokens) - 1, draft_cache.get_seq_length()))
            if stopped:
                break
        seconds = time.perf_counter() - started
    return _output(tokens, input_ids.device), tally.stats(len(tokens) - input_ids.shape[1], seconds)


@dataclass
class _Tally:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    prefill_seconds: float = 0.0

    def count(self, drafted: int, accepted: int) -> None:
        self.rounds, self.drafted, self.accepted = self.rounds + 1, self.drafted + drafted, self.accepted + accepted

    def stats(self, new_tokens: int, seconds: float) -> AssistStats:
        return AssistStats(
            new_tokens,
            self.rounds,
            self.drafted,
            self.accepted,
            seconds,
            self.draft_seconds,
            self.verify_seconds,
            self.prefill_seconds,
        )


def _propose(draft, cache: DynamicCache, tokens: list[int], count: int, picker: _Picker) -> tuple[list[int], list]:
    """`count` draft tokens, one forward each; the first forward reads every token the draft's cache lacks."""
    drafts: list[int] = []
    probs: list = []
    pending = tokens[cache.get_seq_length() :]
    for _ in range(count):
        token, q = picker.pick(_forward(draft, pending, cache, draft.device)[-1])
        drafts.append(token)
        probs.append(q)
        pending = [token]
    return drafts, probs


def plain_generate_lean(
    target,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = GREEDY,
    seed: int = 0,
    eos_token_id: int | list[int] | None = None,
) -> tuple[torch.Tensor, AssistStats]:
    """Ordinary decoding by the same loop, without a draft: one target forward per token on its cache.

    The baseline `speculative_generate` is measured against (same prefill, same per-forward overhead)."""
    tokens = _check(input_ids, max_new_tokens)
    device = target.device
    picker = _Picker(temperature, seed, device)
    stop = _stop_ids(target, eos_token_id)
    with torch.inference_mode():
        started = time.perf_counter()
        cache = _prefill(target, tokens, device)
        prefill = time.perf_counter() - started
        for _ in range(max_new_tokens):
            token, _ = picker.pick(_forward(target, tokens[-1:], cache, device)[-1])
            tokens.append(token)
            if token in stop:
                break
        seconds = time.perf_counter() - started
    new_tokens = len(tokens) - input_ids.shape[1]
    return _output(tokens, input_ids.device), AssistStats(
        new_tokens, new_tokens, 0, 0, seconds, prefill_seconds=prefill
    )


def generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config=None,
    assistant_model=None,
    *,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    lookahead: int | None = None,
    seed: int = 0,
    eos_token_id: int | list[int] | None = None,
    **unused,
) -> torch.Tensor:
    """transformers' `custom_generate` entry point (this file shipped as `custom_generate/generate.py`):
    `target.generate(ids, custom_generate=DIR, trust_remote_code=True, assistant_model=draft, max_new_tokens=N,
    lookahead=g)` runs `speculative_generate` (or `plain_generate_lean` without an assistant) and returns the ids.

    Pure sampling at `temperature` when `do_sample`, else greedy; `lookahead` defaults to the assistant's
    `generation_config.num_assistant_tokens`. Logits processors, stopping criteria and streamers are refused."""
    refused = [name for name in ("logits_processor", "stopping_criteria", "streamer") if unused.get(name)]
    if refused:
        raise ValueError(f"the lean speculative loop does not support {', '.join(refused)}")
    config = generation_config or model.generation_config
    max_new_tokens = max_new_tokens or config.max_new_tokens
    if max_new_tokens is None:
        raise ValueError("pass max_new_tokens")
    sample = do_sample if do_sample is not None else bool(config.do_sample)
    heat = (temperature if temperature is not None else (config.temperature or 1.0)) if sample else GREEDY
    kwargs = {"max_new_tokens": max_new_tokens, "temperature": heat, "seed": seed, "eos_token_id": eos_token_id}
    if assistant_model is None:
        return plain_generate_lean(model, inputs, **kwargs)[0]
    lookahead = lookahead or getattr(assistant_model.generation_config, "num_assistant_tokens", None) or 4
    return speculative_generate(model, assistant_model, inputs, lookahead=int(lookahead), **kwargs)[0]
