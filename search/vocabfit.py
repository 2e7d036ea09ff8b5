"""Cross-fitted vocabulary choice: the draft acceptance of a trimmed vocabulary, scored on text it was not chosen
from (docs/drafts.md, "Acceptance").

A draft keeps the `k` tokens its target emits most often on the calibration text (`pruning.targetmass`, ranked by
`pruning.vocab.select_kept_tokens`). Scored on that same text, the choice looks better than it is: every token
the scored blocks need often enough is kept, so trimmed-token rejections are under-counted on new text. Here the
calibration text is cut into `FOLDS` contiguous regions (the token stream the blocks are cut from, at block
boundaries), and the blocks of region `j` are scored with the `k` tokens chosen from the target's emissions on
all calibration text *but region j*. Regions are contiguous because text is local: a block's neighbours share its
rare words (names, topics), so leaving out only the block itself, or a random set of blocks, still keeps most of
them. The exported draft still chooses from all the text (more data, a better choice); only its estimate is out
of sample, and slightly pessimistic, since each region's choice sees (FOLDS - 1) / FOLDS of the text.

With the default calibration size (a few thousand tokens of a larger file) every scored block lies in the first
region, so there is one choice per vocabulary size, as without cross-fitting. For chat data the emissions are
the target's at every position of the rendered conversations, the user turns' included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunesearch.pruning.calibration import CalibrationDoc
from prunesearch.pruning.targetmass import as_weights, calibration_stream, target_token_mass

FOLDS = 4


@dataclass(frozen=True)
class VocabFolds:
    """Which fold each scored calibration block belongs to, and the token weights each fold's vocabulary is
    chosen by (the target's emissions, `pruning.targetmass`)."""

    block_fold: tuple[int, ...]  # per scored block, in the order of the calibration blocks
    weights: tuple[Counter[int], ...]  # per fold: the target's emissions over all calibration text but the fold's
    total: Counter[int]  # over all of it: what the exported draft's vocabulary is chosen by

    @property
    def used(self) -> tuple[int, ...]:
        """The folds that hold at least one scored block (the only ones a vocabulary is chosen for)."""
        return tuple(sorted(set(self.block_fold)))


def vocab_folds(
    model: torch.nn.Module,
    tokenizer,
    docs: Sequence[CalibrationDoc],
    seq_len: int,
    n_blocks: int,
    temperature: float,
    folds: int = FOLDS,
) -> VocabFolds:
    """Cut the calibration stream (all documents, as `token_blocks` cuts them) into `folds` contiguous regions
    of whole blocks; the first `n_blocks` blocks are the scored ones. Fewer folds when the text has fewer blocks
    (one block: its fold is chosen from nothing, and the estimate says so). One forward of the target over the
    stream gives each region's emissions at `temperature`."""
    stream = calibration_stream(tokenizer, docs, seq_len)
    chunks = len(stream)
    folds = max(1, min(folds, chunks))
    region = [min(folds - 1, chunk * folds // chunks) for chunk in range(chunks)]
    mass = target_token_mass(model, stream, temperature, region)
    others = [mass[[f for f in range(folds) if f != fold]].sum(0) for fold in range(folds)]
    return VocabFolds(
        block_fold=tuple(region[:n_blocks]),
        weights=tuple(as_weights(m) for m in others),
        total=as_weights(mass.sum(0)),
    )
