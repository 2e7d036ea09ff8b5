"""Run a draft with a trimmed vocabulary in its target's token ids, so it works as a plain `assistant_model`.

A trimmed draft (prunesearch export with `token_map.json`) knows a subset of the target's tokens under new ids.
`adapt_to_target_vocabulary` wraps its input embedding and LM head in place:

- input: a target id is looked up through `target_to_draft` (kept tokens: their draft id). A target token the
  draft does not have can only reach the draft through its context (the draft never proposes it); it is fed as
  the *last piece* the draft's own BPE splits that token's string into, i.e. the token the draft would have seen
  in that position had it tokenized the text itself. This keeps one draft position per target position, so
  transformers' assisted generation needs no re-tokenization and the KV cache of draft and target stay aligned.
- output: the draft's logits are scattered to their original ids; trimmed ids get -inf, i.e. probability 0.
  So the draft never proposes a trimmed token, and the target's mass on trimmed tokens is rejected, as in
  `prunesearch.pruning.speculative.acceptance`.

Speculative decoding stays lossless: the target verifies every drafted token (greedy: argmax; sampling:
Leviathan et al.'s rejection sampling, exact for any draft distribution). The adapter costs one index lookup per
input token and one scatter of the draft's logits per step; the draft's LM head stays trimmed.

This module needs only torch and transformers (no prunesearch import), so it can be copied next to an export
and used without prunesearch installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

TOKEN_MAP_FILE = "token_map.json"


def read_token_map(draft_dir: str | Path) -> list[int] | None:
    """new (draft) id -> original (target) id, or None when the draft's vocabulary is the target's."""
    path = Path(draft_dir) / TOKEN_MAP_FILE
    return json.loads(path.read_text())["new_to_original"] if path.is_file() else None


def target_to_draft_ids(
    token_map: list[int], target_tokenizer, draft_tokenizer, target_vocab_size: int
) -> torch.Tensor:
    """For every target id, the draft id fed in its place (see the module docstring for trimmed tokens)."""
    lookup = torch.full((target_vocab_size,), -1, dtype=torch.long)
    lookup[torch.tensor(token_map, dtype=torch.long)] = torch.arange(len(token_map))
    draft_bpe = draft_tokenizer.backend_tokenizer.model
    fallback = draft_tokenizer.unk_token_id if draft_tokenizer.unk_token_id is not None else 0
    target_tokens = target_tokenizer.convert_ids_to_tokens(list(range(len(target_tokenizer))))
    for target_id in (lookup == -1).nonzero().flatten().tolist():
        token = target_tokens[target_id] if target_id < len(target_tokens) else None
        pieces = draft_bpe.tokenize(token) if token else []
        lookup[target_id] = pieces[-1].id if pieces else fallback
    return lookup


class TargetIdsEmbedding(nn.Module):
    """The draft's input embedding, indexed by target ids."""

    def __init__(self, embedding: nn.Embedding, target_to_draft: torch.Tensor):
        super().__init__()
        self.embedding = embedding
        self.register_buffer("target_to_draft", target_to_draft.to(embedding.weight.device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.target_to_draft[input_ids])


class TargetVocabularyHead(nn.Module):
    """The draft's trimmed LM head, its logits scattered over the target's vocabulary (-inf where trimmed)."""

    def __init__(self, head: nn.Module, token_map: list[int], target_vocab_size: int):
        super().__init__()
        self.head = head
        self.target_vocab_size = target_vocab_size
        kept = torch.tensor(token_map, dtype=torch.long, device=head.weight.device)
        self.register_buffer("kept", kept, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        full = logits.new_full((*logits.shape[:-1], self.target_vocab_size), float("-inf"))
        return full.index_copy_(-1, self.kept, logits)


def adapt_to_target_vocabulary(draft, token_map: list[int], target_tokenizer, draft_tokenizer, target_vocab_size: int):
    """Make `draft` (a trimmed-vocabulary causal LM) read and write target ids, in place; returns it.

    Afterwards `draft.config.vocab_size` is the target's, so `target.generate(..., assistant_model=draft)` treats
    it as a same-tokenizer assistant. Call once per loaded draft."""
    if isinstance(draft.get_input_embeddings(), TargetIdsEmbedding):
        raise ValueError("draft is already adapted to the target's vocabulary")
    if len(token_map) != draft.config.vocab_size or max(token_map) >= target_vocab_size:
        raise ValueError("token map does not fit the draft's vocabulary and the target's")
    lookup = target_to_draft_ids(token_map, target_tokenizer, draft_tokenizer, target_vocab_size)
    draft.set_input_embeddings(TargetIdsEmbedding(draft.get_input_embeddings(), lookup))
    draft.set_output_embeddings(TargetVocabularyHead(draft.get_output_embeddings(), token_map, target_vocab_size))
    draft.config.vocab_size = target_vocab_size
    draft.config.tie_word_embeddings = False  # the wrappers must not be re-tied to each other
    return draft
