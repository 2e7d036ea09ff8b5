"""Vocabulary trimming for BPE tokenizers: count, choose which tokens stay, rebuild the tokenizer.

Everything works on the backend tokenizer's JSON (`tokenizers.Tokenizer.to_str()`), which describes the
model, added tokens and pipeline completely. A kept set is always closed under merges (a kept token's two
merge parts are kept) and contains the base alphabet, so the trimmed tokenizer still encodes any text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .draftvocab import target_to_draft_ids

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_BATCH = 256


class VocabTrimError(ValueError):
    """The tokenizer cannot be trimmed as asked (unsupported model type, size too small, bad ids)."""


@dataclass(frozen=True)
class _BpeVocab:
    """What trimming needs from a BPE tokenizer: id <-> token, merge parts, and the mandatory ids."""

    tokens: dict[int, str]  # every id, model vocabulary and added tokens alike
    parts: dict[int, tuple[int, int]]  # token id -> ids of the parts of the first merge producing it
    mandatory: frozenset[int]  # specials, added tokens, base alphabet, unk (before closure)


def token_frequencies(tokenizer: Any, texts: Iterable[str]) -> Counter[int]:
    """Count token ids over `texts`, encoded without special tokens (batched, streaming)."""
    counts: Counter[int] = Counter()
    texts = iter(texts)
    while batch := list(islice(texts, _BATCH)):
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def select_kept_tokens(tokenizer: Any, frequencies: Mapping[int, int], size: int) -> list[int]:
    """Choose exactly `size` original token ids to keep, sorted ascending.

    Always kept: special and added tokens, the base alphabet (for byte-level BPE the tokens no merge
    produces; with `byte_fallback` the `<0xNN>` tokens) and the merge closure of everything kept. The rest of
    the budget goes by descending frequency (ties: lower id first; unseen tokens last, by id), each token
    together with its closure; a token whose closure does not fit is skipped.
    """
    vocab = _bpe_vocab(tokenizer)
    if size > len(vocab.tokens):
        raise VocabTrimError(f"size {size} exceeds the tokenizer's {len(vocab.tokens)} tokens")
    kept = _closure(vocab, vocab.mandatory, frozenset())
    if len(kept) > size:
        raise VocabTrimError(
            f"size {size} is too small: special tokens, base alphabet and their merge closure "
            f"need at least {len(kept)} tokens"
        )
    order = sorted(vocab.tokens, key=lambda i: (-frequencies.get(i, 0), i))
    for token_id in order:
        if len(kept) == size:
            break
        if token_id in kept:
            continue
        extra = _closure(vocab, {token_id}, kept)
        if len(kept) + len(extra) <= size:
            kept |= extra
    return sorted(kept)


def mandatory_token_count(tokenizer: Any) -> int:
    """The smallest vocabulary `select_kept_tokens` can build: special and added tokens, the base alphabet and
    their merge closure (raises `VocabTrimError` for a tokenizer that cannot be trimmed)."""
    vocab = _bpe_vocab(tokenizer)
    return len(_closure(vocab, vocab.mandatory, frozenset()))


def draft_reads(tokenizer: Any, kept_ids: Sequence[int], vocab_size: int) -> list[int]:
    """For every original id, the original id a draft that keeps only `kept_ids` reads in its place: itself
    when kept, else the last piece the trimmed tokenizer splits its string into (`draftvocab.target_to_draft_ids`,
    the mapping the exported draft runs with), as an original id. The search's proxy feeds these ids so that it
    reads what the draft will read."""
    kept = list(kept_ids)
    lookup = target_to_draft_ids(kept, tokenizer, trim_tokenizer(tokenizer, kept), vocab_size)
    return [kept[i] for i in lookup.tolist()]


def trim_tokenizer(tokenizer: Any, kept_ids: Sequence[int]) -> PreTrainedTokenizerFast:
    """Build a tokenizer holding only `kept_ids`, re-indexed 0..n-1 in the order given.

    Merges are filtered to those whose parts and result are all kept (original priority preserved); the
    pre-tokenizer, normalizer, decoder and post-processor are kept (token ids in a post-processor and
    padding are re-mapped), as are the named special tokens and the chat template.
    """
    vocab = _bpe_vocab(tokenizer)
    _check_kept(vocab, kept_ids)
    # Every kept token, added ones included, goes into the model vocabulary at its new id; added tokens
    # then resolve to that id when the backend is rebuilt, whatever order the caller chose.
    new_id = {vocab.tokens[old]: new for new, old in enumerate(kept_ids)}
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    model["vocab"] = new_id
    model["merges"] = [[a, b] for a, b in _merge_pairs(model) if {a, b, _merged(model, a, b)} <= new_id.keys()]
    for added in data["added_tokens"]:
        added["id"] = new_id[added["content"]]
    _remap_post_processor(data.get("post_processor"), new_id)
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_token"]]
    return _wrap(tokenizer, Tokenizer.from_str(json.dumps(data)))


def _bpe_vocab(tokenizer: Any) -> _BpeVocab:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabTrimError("vocabulary trimming needs a fast tokenizer (tokenizers backend)")
    data = json.loads(backend.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise VocabTrimError(
            f"only BPE tokenizers are supported (byte-level or byte_fallback), got {model.get('type')}"
        )
    token_id = dict(model["vocab"])
    token_id.update({t["content"]: t["id"] for t in data["added_tokens"]})
    parts: dict[int, tuple[int, int]] = {}
    for a, b in _merge_pairs(model):
        parts.setdefault(token_id[_merged(model, a, b)], (token_id[a], token_id[b]))
    tokens = {i: t for t, i in token_id.items()}
    mandatory = {t["id"] for t in data["added_tokens"]} | set(_special_ids(tokenizer))
    mandatory |= _alphabet(model, token_id, parts)
    mandatory |= {token_id[s] for s in _decoder_symbols(data.get("decoder")) if s in token_id}
    if model.get("unk_token") is not None:
        mandatory.add(token_id[model["unk_token"]])
    return _BpeVocab(tokens=tokens, parts=parts, mandatory=frozenset(mandatory))


def _special_ids(tokenizer: Any) -> list[int]:
    return [i for i in tokenizer.all_special_ids if i is not None]


def _merge_pairs(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    # tokenizers writes merges as [a, b] pairs; older files use "a b" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


def _merged(model: Mapping[str, Any], a: str, b: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    if prefix and b.startswith(prefix):
        b = b[len(prefix) :]
    return a + b


def _alphabet(model: Mapping[str, Any], token_id: Mapping[str, int], parts: Mapping[int, Any]) -> set[int]:
    """Ids the model falls back to for any character: byte tokens, or else the unmerged single characters."""
    if model.get("byte_fallback"):
        return {i for t, i in token_id.items() if _BYTE_TOKEN.fullmatch(t)}
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    return {i for t, i in token_id.items() if i not in parts and len(_core(t, prefix, suffix)) == 1}


def _decoder_symbols(node: Any) -> set[str]:
    """Strings the decoder rewrites (Replace patterns, Metaspace's "▁").

    They must stay tokens: with byte_fallback, a dropped "▁" would come back as raw bytes, which the decoder's
    Replace step (run before ByteFallback) no longer sees, so decoding would leak "▁" instead of spaces.
    """
    if isinstance(node, list):
        return set().union(*(_decoder_symbols(child) for child in node))
    if not isinstance(node, dict):
        return set()
    found = set().union(*(_decoder_symbols(child) for child in node.values()))
    if node.get("type") == "Replace" and isinstance(node.get("pattern"), dict):
        found.add(node["pattern"].get("String"))
    if node.get("type") == "Metaspace":
        found.add(node.get("replacement"))
    return {s for s in found if isinstance(s, str)}


def _core(token: str, prefix: str, suffix: str) -> str:
    if prefix and token.startswith(prefix):
        token = token[len(prefix) :]
    if suffix and token.endswith(suffix):
        token = token[: -len(suffix)]
    return token


def _closure(vocab: _BpeVocab, roots: Iterable[int], kept: frozenset[int] | set[int]) -> set[int]:
    """`roots` and, recursively, their merge parts, leaving out what is already in `kept`."""
    found: set[int] = set()
    stack = [i for i in roots if i not in kept]
    while stack:
        token_id = stack.pop()
        if token_id in found:
            continue
        found.add(token_id)
        stack.extend(p for p in vocab.parts.get(token_id, ()) if p not in kept and p not in found)
    return found


def _check_kept(vocab: _BpeVocab, kept_ids: Sequence[int]) -> None:
    unknown = [i for i in kept_ids if i not in vocab.tokens]
    if unknown:
        raise VocabTrimError(f"kept ids not in the tokenizer: {unknown[:10]}")
    if len(set(kept_ids)) != len(kept_ids):
        raise VocabTrimError("kept ids contain duplicates")
    missing = vocab.mandatory - set(kept_ids)
    if missing:
        raise VocabTrimError(
            f"kept ids leave out {len(missing)} mandatory tokens (specials or base alphabet), "
            f"e.g. {sorted(missing)[:10]}; use select_kept_tokens"
        )


def _remap_post_processor(node: Any, remap: Mapping[str, int]) -> None:
    """Re-map token ids inside TemplateProcessing / Bert / Roberta processors, recursing into Sequences."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for special in node["special_tokens"].values():
            special["ids"] = [_remap_token(remap, t) for t in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            node[key] = [node[key][0], _remap_token(remap, node[key][0])]
    elif kind == "Sequence":
        for child in node.get("processors", []):
            _remap_post_processor(child, remap)


def _remap_token(remap: Mapping[str, int], token: str) -> int:
    if token not in remap:
        raise VocabTrimError(f"post-processor token {token!r} is not kept")
    return remap[token]


def _wrap(original: Any, backend: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a backend tokenizer with the original's special-token attributes and settings."""
    kwargs: dict[str, Any] = dict(original.special_tokens_map)
    extra = list(getattr(original, "extra_special_tokens", None) or [])
    if extra:
        kwargs["extra_special_tokens"] = extra
    for key in ("chat_template", "model_max_length", "padding_side", "truncation_side", "model_input_names"):
        value = getattr(original, key, None)
        if value is not None:
            kwargs[key] = value
    kwargs["clean_up_tokenization_spaces"] = getattr(original, "clean_up_tokenization_spaces", False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
