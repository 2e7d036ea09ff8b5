"""Perplexity by the project's protocol: non-overlapping windows, fp32, NLL per token and per character."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Perplexity:
    token_ppl: float
    char_ppl: float  # exp(total NLL / characters): comparable across vocabularies
    tokens: int
    characters: int


@torch.inference_mode()
def perplexity(model, tokenizer, text: str, *, seq_len: int = 256, batch_size: int = 8) -> Perplexity:
    """Perplexity of `model` on `text`, cut into non-overlapping `seq_len`-token windows (the tail dropped).

    Every window's first token is only context, so `tokens` counts the predicted tokens; the character count
    covers the text the full windows span."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = len(ids) // seq_len
    if windows == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    blocks = torch.tensor(ids[: windows * seq_len]).reshape(windows, seq_len)
    device = next(model.parameters()).device
    total_nll, predicted = 0.0, 0
    for start in range(0, windows, batch_size):
        batch = blocks[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        predicted += batch[:, 1:].numel()
    characters = len(tokenizer.decode(blocks.reshape(-1).tolist()))
    return Perplexity(
        token_ppl=math.exp(total_nll / predicted),
        char_ppl=math.exp(total_nll / characters),
        tokens=predicted,
        characters=characters,
    )
