"""Perplexity by the project's protocol: non-overlapping windows, fp32, NLL per token and per character; and by
lm-evaluation-harness's rolling windows (every token scored once), the protocol `prunesearch evaluate` runs."""

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
    nll: float  # the summed negative log-likelihood of the tokens counted, in nats


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
        nll=total_nll,
    )


def rolling_windows(n_tokens: int, max_length: int) -> list[tuple[int, int, int]]:
    """lm-evaluation-harness's `loglikelihood_rolling` windows over `n_tokens` tokens with one prefix token in
    front (position 0 of the sequence `[prefix, *tokens]`): `(start, end, scored)` slices `[start, end)` of that
    sequence whose inputs are `[start, end - 1)` and whose last `scored` targets count.

    Every token is scored exactly once: the first window predicts up to `max_length` tokens from the prefix on,
    each later one the next `max_length` with one token of context (the previous window's last), and the last
    one ends at the text's end, its inputs reaching back a full `max_length` where the text allows."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    windows, scored = [], 0
    while scored < n_tokens:
        count = min(max_length, n_tokens - scored)
        end = scored + count + 1  # in the prefixed sequence: the window predicts positions scored+1 .. end-1
        windows.append((max(0, end - max_length - 1), end, count))
        scored += count
    return windows


@torch.inference_mode()
def rolling_perplexity(
    model, tokenizer, text: str, *, max_length: int, prefix_token_id: int, batch_size: int = 8
) -> Perplexity:
    """Perplexity of `model` on all of `text` by lm-evaluation-harness's rolling windows (`rolling_windows`): the
    protocol `prunesearch evaluate` runs through the harness, computed here the project's way (fp32 logits,
    summed cross entropy). `characters` counts the whole text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("text has no tokens")
    sequence = torch.tensor([prefix_token_id, *ids])
    device = next(model.parameters()).device
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for window in rolling_windows(len(ids), max_length):
        by_length.setdefault(window[1] - window[0], []).append(window)
    total_nll = 0.0
    for windows in by_length.values():  # windows of one length batch together (at most two lengths)
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            batch = torch.stack([sequence[start:end] for start, end, _ in chunk]).to(device)
            logits = model(input_ids=batch[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            total_nll += sum(float(row[-scored:].sum()) for row, (_, _, scored) in zip(nll, chunk, strict=True))
    return Perplexity(
        token_ppl=math.exp(total_nll / len(ids)),
        char_ppl=math.exp(total_nll / len(text)),
        tokens=len(ids),
        characters=len(text),
        nll=total_nll,
    )
