"""Training data of a heal: token blocks in the student's vocabulary, and a resumable order over them.

Text is tokenised by the student's tokenizer (a trimmed one where the plan trimmed the vocabulary); the teacher
reads the same tokens mapped back to original ids through `token_map.json`, so both models see one segmentation
of the text and the student's targets always lie in its vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .calibration import CalibrationDoc, CalibrationError, token_blocks


class HealDataError(ValueError):
    """The training data cannot feed the heal as configured."""


def training_blocks(
    tokenizer, docs: Sequence[CalibrationDoc], extra: Sequence[CalibrationDoc], seq_len: int, max_tokens: int
) -> torch.Tensor:
    """Blocks of `seq_len` tokens from the user's documents (at most `max_tokens`) and all of `extra`
    (self-generated text), concatenated; the order is shuffled later, per epoch."""
    try:
        blocks = [token_blocks(tokenizer, docs, seq_len, max_tokens)]
        if extra:
            blocks.append(token_blocks(tokenizer, extra, seq_len, 1 << 62))
    except CalibrationError as exc:
        raise HealDataError(f"training data: {exc}") from None
    return torch.cat(blocks)


class BlockOrder:
    """Which blocks feed micro-batch `k`: a fresh seeded permutation per epoch, so any position in the stream
    is a pure function of (seed, k) and a resumed heal reads exactly what an uninterrupted one would."""

    def __init__(self, num_blocks: int, batch: int, seed: int):
        if num_blocks < batch:
            raise HealDataError(
                f"training data holds {num_blocks} blocks, fewer than one batch of {batch}; "
                "give more text or lower --batch / --seq-len"
            )
        self.num_blocks, self.batch, self.seed = num_blocks, batch, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_blocks, generator=generator)}
        return self._perms[epoch]

    def indices(self, micro_batch: int) -> torch.Tensor:
        positions = range(micro_batch * self.batch, (micro_batch + 1) * self.batch)
        return torch.stack([self._perm(p // self.num_blocks)[p % self.num_blocks] for p in positions])
