"""Training-free repair of a pruned model: one linear map of its final hidden state, fitted in closed form.

Removing layers moves the residual stream away from where the LM head reads it. Much of that shift is linear,
so a least-squares map A from the pruned model's final (normed) hidden states H to the dense model's D on the
calibration text takes back a large share of the one-shot loss with no training (ReplaceMe and LLM-Streamline
fit linear maps in place of removed blocks for the same reason). The map is folded into the LM head
(logits = (H A) W^T = H (W A^T)^T), so the repaired checkpoint keeps the plan's exact shapes and loads as before.

The fit is ridge regression shrunk towards the identity (no repair): A = (H^T H + l I)^-1 (H^T D + l I), with
l = `ridge` x the mean diagonal of H^T H, so a map fitted on few tokens stays close to doing nothing. How much a
plan's loss a map takes back also predicts how much a heal will (docs/benchmarks.md, "A probe for a
healability-aware proxy"), which is why the search can score candidates after it (`repair: refit`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .modules import decoder, embedding, lm_head

__all__ = ["RIDGE", "MapStatistics", "final_hidden_states", "fit_final_map", "fold_into_head"]

RIDGE = 1e-3


class MapStatistics:
    """The sufficient statistics of the least-squares fit, H^T H and H^T D, summed batch by batch in float64."""

    def __init__(self, hidden_size: int, device: torch.device | str = "cpu"):
        self.gram = torch.zeros(hidden_size, hidden_size, dtype=torch.float64, device=device)
        self.cross = torch.zeros_like(self.gram)
        self.rows = 0

    def add(self, hidden: torch.Tensor, target: torch.Tensor) -> MapStatistics:
        """Add rows of pruned hidden states and the dense ones at the same positions (any leading shape)."""
        h = hidden.reshape(-1, hidden.shape[-1]).double()
        d = target.reshape(-1, target.shape[-1]).double()
        self.gram += h.T @ h
        self.cross += h.T @ d
        self.rows += len(h)
        return self

    def solve(self, ridge: float = RIDGE) -> torch.Tensor:
        """The map A (hidden x hidden, float32; hidden states map as H @ A): the identity when no row was added."""
        size = self.gram.shape[0]
        identity = torch.eye(size, dtype=torch.float64, device=self.gram.device)
        if self.rows == 0:
            return identity.float()
        strength = ridge * float(self.gram.diagonal().mean()) or ridge
        return torch.linalg.solve(self.gram + strength * identity, self.cross + strength * identity).float()


@torch.no_grad()
def final_hidden_states(model, blocks: torch.Tensor, batch_size: int = 8) -> Iterable[torch.Tensor]:
    """The final normed hidden states of every position that predicts a next token, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        stack = decoder(model)
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size]
            yield stack(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
    finally:
        model.train(was_training)


def fit_final_map(dense, pruned, blocks: torch.Tensor, *, batch_size: int = 8, ridge: float = RIDGE) -> torch.Tensor:
    """The map of `pruned`'s final hidden states onto `dense`'s, fitted on every position of `blocks`."""
    stats = MapStatistics(dense.config.hidden_size, blocks.device)
    pairs = zip(
        final_hidden_states(pruned, blocks, batch_size), final_hidden_states(dense, blocks, batch_size), strict=True
    )
    for hidden, target in pairs:
        stats.add(hidden.float(), target.float())
    return stats.solve(ridge)


@torch.no_grad()
def fold_into_head(model, mapping: torch.Tensor) -> None:
    """Fold the map into the LM head (W <- W A^T), in place. A head tied to the input embedding is untied first
    (the embedding must stay as it is), and the config says so, so the checkpoint saves and loads both."""
    head = lm_head(model)
    weight = head.weight
    folded = (weight.float() @ mapping.to(weight.device).T).to(weight.dtype)
    if weight is embedding(model).weight or getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
        text_config = model.config.get_text_config()
        text_config.tie_word_embeddings = False
    head.weight = torch.nn.Parameter(folded, requires_grad=weight.requires_grad)
