"""Which tokens a draft should keep: the ones its target emits.

A draft proposes tokens and the target accepts them; a token the draft's vocabulary lacks is a rejection
whenever the target would have emitted it (`speculative.acceptance`). So the tokens worth keeping are those the
target puts its next-token mass on at the decoding temperature, not those the calibration text happens to use:

- greedy (temperature 0): how often each token is the target's argmax;
- sampling (temperature T): the sum over positions of the target's probabilities at T.

Either is the expected number of times the target emits the token, one forward over the calibration text. The
target's predictions are smoother than the text's own counts: they put mass on tokens the text has not used yet
but new text will, and little on rare names a model cannot predict. Choosing a small vocabulary by them keeps
more of what the target emits on new text (docs/drafts.md, "Acceptance"). Coverage, as the seed paper defines
it, stays a count of the text's tokens (`vocab.token_frequencies`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from .calibration import CalibrationDoc, token_blocks

BATCH = 8


def calibration_stream(tokenizer: Any, docs: Sequence[CalibrationDoc], seq_len: int) -> torch.Tensor:
    """All of the calibration text as `token_blocks` cuts it ([n, seq_len]), not only the scored blocks."""
    budget = max(seq_len, sum(len(doc.text) + 1 for doc in docs))  # a BPE token holds at least one character
    return token_blocks(tokenizer, docs, seq_len, budget)


@torch.inference_mode()
def target_token_mass(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    temperature: float,
    groups: Sequence[int] | None = None,
    batch_size: int = BATCH,
) -> torch.Tensor:
    """The target's expected emissions of each token over every position of `blocks` ([n, seq_len] ids), summed
    per group (`groups`: a group index per block; None: one group). Returns float64 [n_groups, vocab]."""
    group_ids = torch.as_tensor(list(groups) if groups is not None else [0] * len(blocks), dtype=torch.long)
    vocab = model.get_output_embeddings().out_features
    mass = torch.zeros(int(group_ids.max()) + 1 if len(group_ids) else 1, vocab, dtype=torch.float64)
    device = next(model.parameters()).device
    for start in range(0, len(blocks), batch_size):
        logits = model(input_ids=blocks[start : start + batch_size].to(device)).logits
        for row, group in zip(logits, group_ids[start : start + batch_size].tolist(), strict=True):
            mass[group] += emissions(row.float(), temperature).cpu()  # one sequence's logits at a time
    return mass


def emissions(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Expected emissions per token of the positions in `logits` ([positions, vocab]) at `temperature`."""
    if temperature == 0:
        return torch.bincount(logits.argmax(-1), minlength=logits.shape[-1]).double()
    return torch.softmax(logits.double() / temperature, dim=-1).sum(0)


def as_weights(mass: torch.Tensor) -> Counter[int]:
    """A mass vector as the token -> weight mapping `vocab.select_kept_tokens` ranks by (zeros left out)."""
    nonzero = torch.nonzero(mass > 0).flatten()
    return Counter(dict(zip(nonzero.tolist(), mass[nonzero].tolist(), strict=True)))
