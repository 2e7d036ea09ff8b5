"""Calibration files: formats, errors, fingerprints and token blocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from prunesearch.pruning.calibration import (
    CalibrationDoc,
    CalibrationError,
    calibration_fingerprint,
    load_calibration,
    render_chat,
    token_blocks,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL_DIR = SHARED / "models" / "llama-docs"
CALIB = SHARED / "data" / "pydocs-calib.txt"
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A mutable sequence."},
    {"role": "user", "content": "And a tuple?"},
    {"role": "assistant", "content": "An immutable one."},
]
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|endoftext|>{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(MODEL_DIR)


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, records: list, name: str = "calib.jsonl") -> Path:
    return _write(tmp_path, name, "\n".join(json.dumps(r) for r in records) + "\n")


def test_txt_splits_on_blank_lines(tmp_path):
    path = _write(tmp_path, "calib.txt", "\n\nfirst line\nsecond line\n\n\n  \nsecond doc\n   indented\n\n\t\nlast\n")
    docs = load_calibration(path)
    assert [d.text for d in docs] == ["first line\nsecond line", "second doc\n   indented", "last"]
    assert all(d.coverage_text == d.text for d in docs)


def test_txt_real_asset_prefix(tmp_path):
    path = _write(tmp_path, "prefix.txt", CALIB.read_text(encoding="utf-8")[:50_000])
    docs = load_calibration(str(path))
    assert len(docs) > 10
    assert all(d.text.strip() and "\n\n" not in d.text for d in docs)


def test_jsonl_text_records(tmp_path):
    path = _jsonl(tmp_path, [{"text": "alpha"}, {"text": "beta", "source": "x"}])
    assert load_calibration(path) == [CalibrationDoc("alpha", "alpha"), CalibrationDoc("beta", "beta")]


def test_jsonl_skips_blank_lines_and_empty_texts(tmp_path):
    path = _write(tmp_path, "calib.jsonl", '{"text": "a"}\n\n   \n{"text": ""}\n{"text": "b"}\n')
    assert [d.text for d in load_calibration(path)] == ["a", "b"]


def test_chat_without_template_joins_roles(tmp_path, tokenizer):
    path = _jsonl(tmp_path, [{"messages": CHAT}])
    expected = "system: Be brief.\nuser: What is a list?\nassistant: A mutable sequence.\n"
    expected += "user: And a tuple?\nassistant: An immutable one."
    for tok in (None, tokenizer):  # the asset tokenizer has no chat template
        (doc,) = load_calibration(path, tok)
        assert doc.text == expected
        assert doc.coverage_text == "A mutable sequence.\nAn immutable one."


def test_chat_with_template(tmp_path):
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    tok.chat_template = TEMPLATE
    (doc,) = load_calibration(_jsonl(tmp_path, [{"messages": CHAT[1:3]}]), tok)
    assert doc.text == "<user>What is a list?<|endoftext|><assistant>A mutable sequence.<|endoftext|>"
    assert doc.coverage_text == "A mutable sequence."


def test_chat_docs_keep_their_messages_and_text_docs_none(tmp_path):
    (chat,) = load_calibration(_jsonl(tmp_path, [{"messages": CHAT}]))
    (text,) = load_calibration(_jsonl(tmp_path, [{"text": "alpha"}], name="text.jsonl"))
    assert chat.messages == CHAT and text.messages is None


def test_render_chat_opens_the_assistant_turn_when_asked(tokenizer):
    assert render_chat(CHAT[1:2], None, add_generation_prompt=True) == "user: What is a list?\nassistant:"
    assert render_chat(CHAT[1:2], tokenizer) == "user: What is a list?"
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    tok.chat_template = TEMPLATE + "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert render_chat(CHAT[1:2], tok, add_generation_prompt=True) == "<user>What is a list?<|endoftext|><assistant>"
    assert render_chat(CHAT[1:2], tok) == "<user>What is a list?<|endoftext|>"


def test_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match=r"nope\.txt: calibration file not found"):
        load_calibration(tmp_path / "nope.txt")


def test_unknown_extension(tmp_path):
    path = _write(tmp_path, "calib.csv", "a,b\n")
    with pytest.raises(CalibrationError, match=r"calib\.csv.*'\.csv'.*supported: \.txt, \.jsonl"):
        load_calibration(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', '{"text": "broken"'], r"bad\.jsonl:2: invalid JSON"),
        (
            ['{"text": "ok"}', "", '{"prompt": "x"}'],
            r"bad\.jsonl:3: object has neither 'text' nor 'messages'",
        ),
        (['["text"]'], r"bad\.jsonl:1: expected a JSON object, got list"),
        (['{"text": 3}'], r"bad\.jsonl:1: 'text' must be a string"),
        (['{"messages": []}'], r"bad\.jsonl:1: 'messages' must be a non-empty list"),
        (['{"messages": [{"role": "user"}]}'], r"bad\.jsonl:1: messages\[0\] must be an object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    path = _write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(CalibrationError, match=message):
        load_calibration(path)


@pytest.mark.parametrize(("name", "content"), [("e.txt", ""), ("e.txt", "\n \n\t\n"), ("e.jsonl", "\n\n")])
def test_empty_files(tmp_path, name, content):
    with pytest.raises(CalibrationError, match=r"e\.(txt|jsonl): calibration file holds no documents"):
        load_calibration(_write(tmp_path, name, content))


def test_calibration_error_is_value_error():
    assert issubclass(CalibrationError, ValueError)


def test_fingerprint_is_stable_and_order_sensitive(tmp_path):
    path = _write(tmp_path, "calib.txt", "one\n\ntwo\n\nthree\n")
    docs = load_calibration(path)
    fingerprint = calibration_fingerprint(docs)
    assert fingerprint == calibration_fingerprint(load_calibration(path))
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert fingerprint != calibration_fingerprint(docs[::-1])
    assert calibration_fingerprint([CalibrationDoc("ab", "ab")]) != calibration_fingerprint(
        [CalibrationDoc("a", "a"), CalibrationDoc("b", "b")]
    )
    # A known value guards against accidental changes to the hashing scheme.
    known = "bb59c55504f86c0981df84802a0b7492f8aef3d23d76a68f91fb65abe988b62b"
    assert calibration_fingerprint([CalibrationDoc("x", "x")]) == known


def test_token_blocks_shape_and_content(tokenizer):
    docs = [CalibrationDoc("def f(x):", "def f(x):"), CalibrationDoc("return x", "return x")]
    first = tokenizer.encode(docs[0].text, add_special_tokens=False)
    second = tokenizer.encode(docs[1].text, add_special_tokens=False)
    stream = [*first, tokenizer.eos_token_id, *second]
    blocks = token_blocks(tokenizer, docs, seq_len=2, max_tokens=100)
    assert blocks.dtype == torch.long
    assert blocks.shape == (len(stream) // 2, 2)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]


def test_token_blocks_respects_max_tokens(tmp_path, tokenizer):
    docs = load_calibration(_write(tmp_path, "c.txt", CALIB.read_text(encoding="utf-8")[:50_000]))
    assert token_blocks(tokenizer, docs, seq_len=64, max_tokens=1000).shape == (15, 64)
    assert token_blocks(tokenizer, docs, seq_len=128, max_tokens=1024).shape == (8, 128)


def test_token_blocks_without_eos_concatenates(tokenizer):
    no_eos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    assert no_eos.eos_token_id is None
    docs = [CalibrationDoc("abc def", "abc def"), CalibrationDoc("ghi", "ghi")]
    stream = [i for d in docs for i in no_eos.encode(d.text, add_special_tokens=False)]
    blocks = token_blocks(no_eos, docs, seq_len=1, max_tokens=100)
    assert blocks.flatten().tolist() == stream


def test_token_blocks_streams(tokenizer):
    def docs() -> Iterator[CalibrationDoc]:
        yield CalibrationDoc("word " * 200, "")
        raise AssertionError("tokenized more documents than needed")

    assert token_blocks(tokenizer, docs(), seq_len=16, max_tokens=64).shape == (4, 16)


def test_token_blocks_too_few_tokens(tokenizer):
    docs = [CalibrationDoc("short", "short")]
    n = len(tokenizer.encode("short", add_special_tokens=False))
    with pytest.raises(CalibrationError, match=rf"only {n} tokens, fewer than one block of seq_len=256"):
        token_blocks(tokenizer, docs, seq_len=256, max_tokens=10_000)


def test_token_blocks_bad_arguments(tokenizer):
    docs = [CalibrationDoc("text", "text")]
    with pytest.raises(CalibrationError, match="smaller than one block"):
        token_blocks(tokenizer, docs, seq_len=256, max_tokens=100)
    with pytest.raises(CalibrationError, match="must be positive"):
        token_blocks(tokenizer, docs, seq_len=0, max_tokens=100)
