"""Cross-fitted vocabulary choice: the draft acceptance of a trimmed vocabulary, scored on text it was not chosen
from (docs/drafts.md, "Acceptance").

A draft keeps the `k` tokens most frequent in the calibration text (`pruning.vocab.select_kept_tokens`). Scored on
that same text, the choice looks better than it is: every token the scored blocks use often enough is kept, so
trimmed-token rejections are under-counted on new text. Here the calibration text is cut into `FOLDS` contiguous
regions (the token stream the blocks are cut from, at block boundaries), and the blocks of region `j` are scored
with the `k` tokens chosen from the counts of all calibration text *minus region j*. Regions are contiguous
because text is local: a block's neighbours share its rare words (names, topics), so leaving out only the block
itself, or a random set of blocks, still keeps most of them. The exported draft still chooses from all the text
(more data, a better choice); only its estimate is out of sample, and slightly pessimistic, since each region's
choice sees (FOLDS - 1) / FOLDS of the text.

With the default calibration size (a few thousand tokens of a larger file) every scored block lies in the first
region, so there is one choice per vocabulary size, as without cross-fitting. For chat data the counts are of
assistant turns (`coverage_text`) and a region's tokens are all of its rendered text, so a region removes a little
more than its own assistant tokens (never less).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from prunesearch.pruning.calibration import CalibrationDoc, token_blocks

FOLDS = 4


@dataclass(frozen=True)
class VocabFolds:
    """Which fold each scored calibration block belongs to, and the token counts each fold's vocabulary is
    chosen from."""

    block_fold: tuple[int, ...]  # per scored block, in the order of the calibration blocks
    counts: tuple[Counter[int], ...]  # per fold: all calibration counts minus the fold's region

    @property
    def used(self) -> tuple[int, ...]:
        """The folds that hold at least one scored block (the only ones a vocabulary is chosen for)."""
        return tuple(sorted(set(self.block_fold)))


def vocab_folds(
    tokenizer,
    docs: Sequence[CalibrationDoc],
    frequencies: Mapping[int, int],
    seq_len: int,
    n_blocks: int,
    folds: int = FOLDS,
) -> VocabFolds:
    """Cut the calibration stream (all documents, as `token_blocks` cuts them) into `folds` contiguous regions
    of whole blocks; the first `n_blocks` blocks are the scored ones. Fewer folds when the text has fewer blocks
    (one block: its fold is chosen from nothing, and the estimate says so)."""
    stream = token_blocks(tokenizer, docs, seq_len, _all_tokens(docs, seq_len))
    chunks = len(stream)
    folds = max(1, min(folds, chunks))
    region = [min(folds - 1, chunk * folds // chunks) for chunk in range(chunks)]
    counts = []
    for fold in range(folds):
        ids = stream[torch.tensor([r == fold for r in region])].flatten().tolist()
        counts.append(Counter(frequencies) - Counter(ids))  # Counter subtraction drops what falls to zero
    return VocabFolds(block_fold=tuple(region[:n_blocks]), counts=tuple(counts))


def _all_tokens(docs: Sequence[CalibrationDoc], seq_len: int) -> int:
    """A token budget no calibration text reaches (a BPE token holds at least one character)."""
    return max(seq_len, sum(len(doc.text) + 1 for doc in docs))
