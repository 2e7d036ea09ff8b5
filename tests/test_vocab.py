"""Vocabulary trimming: the real byte-level BPE asset, a tiny trained byte-level BPE, a byte_fallback BPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from prunesearch.pruning.vocab import VocabTrimError, select_kept_tokens, token_frequencies, trim_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL_DIR = SHARED / "models" / "llama-docs"
CALIB = SHARED / "data" / "pydocs-calib.txt"

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "for i in range(10):\n    print(i * i)\n",
    "Lists, tuples and dictionaries are the built-in containers.",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "Exceptions propagate until an except clause handles them; finally always runs.",
    "import os, sys; print(os.path.join(sys.prefix, 'lib'))",
] * 40
ARBITRARY = [
    "Hello, world!",
    "  leading and trailing   spaces  \t\n\n\n",
    "def f(x):\n\treturn {'a': [1, 2, 3]} if x else None  # comment\r\n",
    "Grüße aus Köln — naïve café, Ελληνικά, Русский текст, 日本語のテキスト, 中文, 한국어, العربية, עברית",
    "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇩🇪 plus \u200b zero width, \x00 nul, \x7f del",
    "<|endoftext|> inside text, <|pad|>, and <s></s> lookalikes",
    "",
]


@pytest.fixture(scope="module")
def real() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def real_freqs(real):
    text = CALIB.read_text(encoding="utf-8")[:20_000]
    return token_frequencies(real, text.split("\n\n"))


def _tiny_byte_level() -> PreTrainedTokenizerFast:
    """A few hundred tokens, byte-level, with an added special at the end used by the post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(["<|end|>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A <|end|>",
        pair="<s> $A <|end|> $B:1 <|end|>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("<|end|>", tok.token_to_id("<|end|>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=["<|end|>"],
        chat_template="{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    )


def _tiny_byte_fallback() -> PreTrainedTokenizerFast:
    """A Llama-style BPE: metaspace normalizer, `<0xNN>` byte tokens, byte_fallback decoding."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())
    trained = sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    names = trained[:3] + [f"<0x{b:02X}>" for b in range(256)] + trained[3:]
    data["model"]["vocab"] = {t: i for i, t in enumerate(names)}
    data["model"]["byte_fallback"] = True
    decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    data["decoder"] = json.loads(decoder.__getstate__())
    backend = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny() -> PreTrainedTokenizerFast:
    return _tiny_byte_level()


@pytest.fixture(scope="module")
def tiny_bf() -> PreTrainedTokenizerFast:
    return _tiny_byte_fallback()


def _merge_parts(tokenizer) -> dict[int, tuple[int, int]]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = model["vocab"]
    return {vocab[a + b]: (vocab[a], vocab[b]) for a, b in model["merges"]}


def test_token_frequencies_counts_ids(real):
    counts = token_frequencies(real, ["hello world", "hello"])
    hello = real.encode("hello", add_special_tokens=False)
    assert all(counts[i] >= 2 for i in hello)
    assert sum(counts.values()) == len(real.encode("hello world")) + len(hello)


def test_token_frequencies_streams_generators(tiny):
    counts = token_frequencies(tiny, (text for text in CORPUS[:300]))
    assert sum(counts.values()) == sum(len(tiny.encode(t, add_special_tokens=False)) for t in CORPUS[:300])


@pytest.mark.parametrize("size", [258, 259, 300, 1000, 4096, 8192])
def test_select_honours_size_and_invariants(real, real_freqs, size):
    kept = select_kept_tokens(real, real_freqs, size)
    assert len(kept) == size
    assert kept == sorted(set(kept))
    kept_set = set(kept)
    assert {0, 1} <= kept_set
    assert set(range(2, 258)) <= kept_set  # the 256 byte symbols, never merge products
    for token, (a, b) in _merge_parts(real).items():
        if token in kept_set:
            assert a in kept_set and b in kept_set


def test_minimum_size_error(real, real_freqs, tiny, tiny_bf):
    with pytest.raises(VocabTrimError, match="at least 258 tokens"):
        select_kept_tokens(real, real_freqs, 257)
    with pytest.raises(VocabTrimError, match="at least 260 tokens"):  # 4 specials + 256 bytes
        select_kept_tokens(tiny, {}, 100)
    with pytest.raises(VocabTrimError, match="at least 260 tokens"):  # 3 specials + 256 <0xNN> + "▁"
        select_kept_tokens(tiny_bf, {}, 259)
    with pytest.raises(VocabTrimError, match="exceeds"):
        select_kept_tokens(real, real_freqs, 8193)


def test_frequent_token_beats_rare_one(real):
    parts = _merge_parts(real)
    first, second = sorted(t for t, (a, b) in parts.items() if a < 258 and b < 258)[:2]
    assert select_kept_tokens(real, {first: 5, second: 9}, 259) == [*range(258), second]
    assert select_kept_tokens(real, {first: 9, second: 5}, 259) == [*range(258), first]


def test_closure_that_does_not_fit_is_skipped(real):
    parts = _merge_parts(real)
    deep = max(parts, key=lambda t: len(real.convert_ids_to_tokens(t)))
    shallow = min(t for t, (a, b) in parts.items() if a < 258 and b < 258)
    kept = select_kept_tokens(real, {deep: 100, shallow: 1}, 259)
    assert deep not in kept and shallow in kept


def test_calibration_frequencies_pick_common_tokens(real, real_freqs):
    kept = set(select_kept_tokens(real, real_freqs, 600))
    top = [t for t, _ in real_freqs.most_common(20)]
    assert set(top) <= kept


@pytest.mark.parametrize("size", [258, 300, 1000, 4000, 8192])
def test_real_round_trip_arbitrary_text(real, real_freqs, size):
    trimmed = trim_tokenizer(real, select_kept_tokens(real, real_freqs, size))
    assert len(trimmed) == size
    for text in ARBITRARY:
        ids = trimmed.encode(text, add_special_tokens=False)
        assert all(0 <= i < size for i in ids)
        assert trimmed.decode(ids) == text


@pytest.mark.parametrize("size", [260, 300, None])
def test_tiny_round_trip_arbitrary_text(tiny, size):
    size = size or len(tiny)
    counts = token_frequencies(tiny, CORPUS)
    trimmed = trim_tokenizer(tiny, select_kept_tokens(tiny, counts, size))
    for text in ARBITRARY:
        ids = trimmed.encode(text, add_special_tokens=False)
        assert all(0 <= i < size for i in ids)
        assert trimmed.decode(ids) == text


def test_kept_text_encodes_the_same(real):
    text = CALIB.read_text(encoding="utf-8")[:10_000]
    counts = token_frequencies(real, [text])
    kept = select_kept_tokens(real, counts, 2000)
    assert set(counts) <= set(kept)
    trimmed = trim_tokenizer(real, kept)
    assert [kept[i] for i in trimmed.encode(text)] == real.encode(text)


def test_full_size_is_identity(real):
    trimmed = trim_tokenizer(real, list(range(len(real))))
    for text in ARBITRARY:
        assert trimmed.encode(text) == real.encode(text)


def test_special_attributes_and_post_processor(tiny):
    counts = token_frequencies(tiny, CORPUS)
    kept = select_kept_tokens(tiny, counts, 300)
    trimmed = trim_tokenizer(tiny, kept)
    assert trimmed.special_tokens_map == tiny.special_tokens_map
    assert trimmed.chat_template == tiny.chat_template
    end_id = trimmed.convert_tokens_to_ids("<|end|>")
    assert end_id == kept.index(tiny.convert_tokens_to_ids("<|end|>")) == 299
    assert trimmed.pad_token_id == kept.index(tiny.pad_token_id)
    ids = trimmed.encode("fox")
    assert ids[0] == trimmed.bos_token_id and ids[-1] == end_id
    assert trimmed.decode(ids, skip_special_tokens=True) == "fox"


def test_real_specials_keep_their_ids(real, real_freqs):
    trimmed = trim_tokenizer(real, select_kept_tokens(real, real_freqs, 500))
    assert (trimmed.eos_token_id, trimmed.bos_token_id, trimmed.pad_token_id) == (0, 0, 1)
    assert trimmed.encode("a<|endoftext|>b")[1] == 0


def test_save_and_load(real, real_freqs, tiny, tmp_path):
    for name, tokenizer, size in (("real", real, 700), ("tiny", tiny, 280)):
        counts = real_freqs if tokenizer is real else token_frequencies(tiny, CORPUS)
        trimmed = trim_tokenizer(tokenizer, select_kept_tokens(tokenizer, counts, size))
        trimmed.save_pretrained(tmp_path / name)
        loaded = AutoTokenizer.from_pretrained(tmp_path / name)
        assert len(loaded) == size
        assert loaded.special_tokens_map == trimmed.special_tokens_map
        assert loaded.chat_template == trimmed.chat_template
        for text in ARBITRARY:
            assert loaded.encode(text) == trimmed.encode(text)


@pytest.mark.parametrize("size", [260, 280, None])
def test_byte_fallback(tiny_bf, size):
    size = size or len(tiny_bf)
    counts = token_frequencies(tiny_bf, CORPUS)
    kept = select_kept_tokens(tiny_bf, counts, size)
    assert len(kept) == size
    byte_ids = set(tiny_bf.convert_tokens_to_ids([f"<0x{b:02X}>" for b in range(256)]))
    assert byte_ids <= set(kept)
    trimmed = trim_tokenizer(tiny_bf, kept)
    for text in ARBITRARY[:5]:
        ids = trimmed.encode(text, add_special_tokens=False)
        assert all(0 <= i < size for i in ids)
        assert trimmed.unk_token_id not in ids
        assert trimmed.decode(ids) == tiny_bf.decode(tiny_bf.encode(text, add_special_tokens=False))


def test_byte_fallback_single_characters_are_optional(tiny_bf):
    kept = select_kept_tokens(tiny_bf, {}, 260)
    single = [i for i in kept if len(tiny_bf.convert_ids_to_tokens(i)) == 1]
    assert single == [tiny_bf.convert_tokens_to_ids("▁")]  # kept only because the decoder rewrites it


@pytest.mark.parametrize(
    "model",
    [
        models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], unk_id=0),
        models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"),
        models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"),
    ],
)
def test_non_bpe_is_rejected(model):
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(model))
    with pytest.raises(VocabTrimError, match="only BPE tokenizers are supported"):
        select_kept_tokens(tokenizer, {}, 2)
    with pytest.raises(VocabTrimError, match="only BPE"):
        trim_tokenizer(tokenizer, [0, 1])


def test_trim_rejects_bad_kept_ids(real):
    base = list(range(258))
    with pytest.raises(VocabTrimError, match="not in the tokenizer"):
        trim_tokenizer(real, [*base, 9000])
    with pytest.raises(VocabTrimError, match="duplicates"):
        trim_tokenizer(real, [*base, 5])
    with pytest.raises(VocabTrimError, match="mandatory"):
        trim_tokenizer(real, base[1:])


def test_trim_follows_the_given_order(tiny):
    kept = select_kept_tokens(tiny, token_frequencies(tiny, CORPUS), 300)
    in_order, reversed_order = trim_tokenizer(tiny, kept), trim_tokenizer(tiny, kept[::-1])
    assert reversed_order.convert_tokens_to_ids("<|end|>") == 0
    for text in ARBITRARY:
        ids = reversed_order.encode(text)
        assert [kept[::-1][i] for i in ids] == [kept[i] for i in in_order.encode(text)]
        assert reversed_order.decode(ids) == in_order.decode(in_order.encode(text))
