"""Run an exported draft with its target in transformers' assisted generation, and count what it accepts.

`load_assistant(draft_dir, target, target_tokenizer)` loads a prunesearch export as an `assistant_model`: a draft
with the target's vocabulary as it is; a trimmed-vocabulary draft adapted to read and write target ids
(`draftvocab.py`). `assisted_generate(target, draft, input_ids, ...)` calls `target.generate(...,
assistant_model=draft)` with a constant lookahead and returns the output ids and `AssistStats`: drafted and
accepted tokens, counted with forward hooks (every draft forward proposes one token; every target forward is one
verification round, which yields its accepted drafts plus one token of the target's own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers

from prunesearch.choices import MAX_LOOKAHEAD

from .draftvocab import adapt_to_target_vocabulary, read_token_map
from .modeling import load_pruned
from .specdecode import AssistStats
from .speculative import GREEDY

__all__ = ["AssistStats", "DraftError", "assisted_generate", "load_assistant", "plain_generate", "set_lookahead"]


class DraftError(ValueError):
    """A draft that cannot run with its target as asked (wrong vocabulary, bad settings, unreadable data)."""


def load_assistant(draft_dir: str | Path, target, target_tokenizer, *, dtype: torch.dtype = torch.float32):
    """A prunesearch draft export, ready as `assistant_model` for `target` (on the target's device).

    A trimmed vocabulary (token_map.json) is adapted to the target's ids; the draft's tokenizer must then be the
    trimmed one the export ships (its tokens are the target's under new ids)."""
    draft = load_pruned(draft_dir, dtype=dtype, device=str(target.device))
    token_map = read_token_map(draft_dir)
    target_vocab = target.config.get_text_config().vocab_size
    if token_map is None:
        if draft.config.vocab_size != target_vocab:
            raise DraftError(f"draft vocabulary {draft.config.vocab_size} != target's {target_vocab} and no token map")
        return draft
    draft_tokenizer = transformers.AutoTokenizer.from_pretrained(draft_dir, local_files_only=True)
    try:
        return adapt_to_target_vocabulary(draft, token_map, target_tokenizer, draft_tokenizer, target_vocab)
    except ValueError as exc:
        raise DraftError(f"{draft_dir}: {exc}") from None


def set_lookahead(draft, lookahead: int) -> None:
    """Draft exactly `lookahead` tokens per round: a constant schedule and no confidence cut-off."""
    if not 1 <= lookahead <= MAX_LOOKAHEAD:
        raise DraftError(f"lookahead must be in 1..{MAX_LOOKAHEAD}, got {lookahead}")
    config = draft.generation_config
    config.num_assistant_tokens = lookahead
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0


def sampling_kwargs(temperature: float) -> dict[str, Any]:
    """`generate` arguments for greedy (temperature 0) or pure sampling at `temperature` (no top-k / top-p)."""
    if temperature < 0:
        raise DraftError(f"temperature must be >= 0, got {temperature}")
    if temperature == GREEDY:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


@contextmanager
def _count_forwards(module: torch.nn.Module) -> Iterator[list[int]]:
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def assisted_generate(
    target,
    draft,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = GREEDY,
    lookahead: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, AssistStats]:
    """Speculative decoding of one prompt (`input_ids`, shape (1, n)) with transformers' assisted generation.

    Returns the full output ids (prompt included) and the counts of this call."""
    set_lookahead(draft, lookahead)
    torch.manual_seed(seed)
    with _count_forwards(target) as rounds, _count_forwards(draft) as drafted, torch.inference_mode():
        started = time.perf_counter()
        output = target.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            assistant_model=draft,
            max_new_tokens=max_new_tokens,
            **sampling_kwargs(temperature),
        )
        seconds = time.perf_counter() - started
    new_tokens = output.shape[-1] - input_ids.shape[-1]
    # every round yields its accepted drafts plus one target token (the last round may stop short at EOS)
    accepted = max(0, min(new_tokens - rounds[0], drafted[0]))
    return output, AssistStats(new_tokens, rounds[0], drafted[0], accepted, seconds)


def plain_generate(
    model, input_ids: torch.Tensor, *, max_new_tokens: int, temperature: float = GREEDY, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """Ordinary decoding of one prompt: the output ids and the wall time in seconds."""
    torch.manual_seed(seed)
    with torch.inference_mode():
        started = time.perf_counter()
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            **sampling_kwargs(temperature),
        )
    return output, time.perf_counter() - started
