"""A trimmed draft's acceptance as the search predicts it: scored on calibration text its vocabulary was not chosen
from (search/vocabfit.py), reading trimmed tokens as the exported draft does (pruning/draftvocab.py)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from prunesearch.pruning.architectures import model_shape
from prunesearch.pruning.calibration import load_calibration, token_blocks
from prunesearch.pruning.draftvocab import read_token_map, target_to_draft_ids
from prunesearch.pruning.export import load_base_model
from prunesearch.pruning.importance import compute_importance
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.speculative import acceptance
from prunesearch.pruning.stats import collect_activation_stats
from prunesearch.pruning.vocab import (
    draft_reads,
    mandatory_token_count,
    select_kept_tokens,
    token_frequencies,
    trim_tokenizer,
)
from prunesearch.search.context import SearchContext
from prunesearch.search.draftjob import draft_spec
from prunesearch.search.evaluator import CandidateEvaluator, VocabChoice
from prunesearch.search.parametrize import VOCAB_STEP, FixedParams
from prunesearch.search.vocabfit import FOLDS, vocab_folds

from ..tiny_drafts import CALIB, TINY

SEQ_LEN = 64
RARE = "Quetzalcoatl xylophagous zugzwang bdellium " * 2  # words the rest of the text never uses
KEPT_SIZE = 320  # the tiny tokenizer's 258 mandatory tokens and the 62 most frequent others


@pytest.fixture(scope="module")
def target():
    return load_base_model(TINY)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """The tiny model's calibration text with rare words added to its first 8 paragraphs (about 500 tokens,
    all in the first fold's region: a quarter of about 8,000)."""
    paragraphs = [p for p in CALIB.read_text().split("\n\n") if p.strip()]
    text = "\n\n".join(p + ("\n" + RARE if i < 8 else "") for i, p in enumerate(paragraphs))
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def context(calibration, tmp_path_factory, target):
    import os

    os.environ["PRUNESEARCH_HOME"] = str(tmp_path_factory.mktemp("home"))
    _, tokenizer = target
    tokens = len(token_blocks(tokenizer, load_calibration(calibration), SEQ_LEN, 10**6).flatten())
    base = {"calibration_settings": {"tokens": tokens, "seq_len": SEQ_LEN}, "workload": {"engine": "eager"}}
    return SearchContext(draft_spec(TINY, calibration, space="vocab", base=base))


def _vocab_cuts(size: int) -> int:
    return (1024 - size) // VOCAB_STEP


@torch.inference_mode()
def _greedy_acceptance(model, blocks: torch.Tensor, kept: list[int], reads: list[int]) -> float:
    """By hand: the dense model reads the text, the draft (the dense layers, kept tokens only) reads `reads` of
    it; the share of positions where the draft's argmax (as an original id) is the dense argmax."""
    kept_t, reads_t = torch.tensor(kept), torch.tensor(reads)
    top = model(input_ids=blocks).logits[:, :-1].argmax(-1)
    draft = model(input_ids=reads_t[blocks]).logits[:, :-1][..., kept_t]
    return (kept_t[draft.argmax(-1)] == top).double().mean().item()


def test_draft_reads_are_the_exported_drafts_input_mapping(target):
    _, tokenizer = target
    kept = select_kept_tokens(tokenizer, token_frequencies(tokenizer, [CALIB.read_text()]), 400)
    lookup = target_to_draft_ids(kept, tokenizer, trim_tokenizer(tokenizer, kept), 1024)
    reads = draft_reads(tokenizer, kept, 1024)
    assert reads == [kept[i] for i in lookup.tolist()]
    assert [reads[i] for i in kept] == kept  # a kept token reads as itself
    trimmed = sorted(set(range(1024)) - set(kept))
    assert all(reads[i] in set(kept) and reads[i] != i for i in trimmed)


@torch.inference_mode()
def test_proxy_acceptance_equals_the_exported_draft_reading_the_same_text(target, tmp_path, monkeypatch):
    """The proxy's acceptance of a vocabulary-only trim (kept tokens and input mapping given) equals that of the
    exported draft, loaded and adapted as a client runs it (`load_assistant`), on the same windows."""
    from prunesearch.pruning.assist import load_assistant

    model, tokenizer = target
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path / "home"))
    plan = PrunePlan(PrunePlan.dense(model_shape(model.config)).layers, 400)
    calibration = ImportanceCalibration(path=CALIB, seq_len=SEQ_LEN, max_tokens=4096)
    prune_checkpoint(TINY, plan, tmp_path / "draft", calibration=calibration)
    token_map = read_token_map(tmp_path / "draft")
    draft = load_assistant(tmp_path / "draft", model, tokenizer)
    blocks = token_blocks(tokenizer, load_calibration(CALIB), SEQ_LEN, 2048)
    scores = compute_importance(model, "flap", collect_activation_stats(model, blocks, progress=False))
    choice = VocabChoice(kept=token_map, reads=draft_reads(tokenizer, token_map, 1024))
    for temperature in (0.0, 1.0):
        evaluator = CandidateEvaluator(model, blocks, scores, batch_size=8, temperature=temperature)
        scored = evaluator.evaluate(plan, {0: choice}).acceptance
        expected = acceptance(model(blocks).logits[:, :-1], draft(blocks).logits[:, :-1], None, temperature)
        assert scored == pytest.approx(float(expected.mean()), abs=1e-5)
    dense_inputs = CandidateEvaluator(model, blocks, scores, batch_size=8, temperature=0.0)
    assert dense_inputs.evaluate(plan, token_map).acceptance > scored  # reading the dense ids flatters it


@torch.inference_mode()
def _emissions(model, blocks: torch.Tensor) -> Counter[int]:
    """By hand: how often each token is the model's argmax over every position of `blocks` (greedy emissions)."""
    return Counter(model(input_ids=blocks).logits.argmax(-1).flatten().tolist())


def test_vocabulary_folds_are_contiguous_regions_weighed_by_the_targets_emissions_elsewhere(
    context, calibration, target
):
    model, tokenizer = target
    docs = load_calibration(calibration)
    stream = token_blocks(tokenizer, docs, SEQ_LEN, 10**6)
    folds = context.folds
    assert folds.used == tuple(range(FOLDS)) and len(folds.block_fold) == len(stream)
    assert list(folds.block_fold) == sorted(folds.block_fold)  # contiguous regions, in text order
    assert folds.total == _emissions(model, stream)
    for fold in range(FOLDS):
        others = [b for b, f in enumerate(folds.block_fold) if f != fold]
        assert abs(len(stream) - len(others) - len(stream) / FOLDS) <= 1
        assert folds.weights[fold] == _emissions(model, stream[others])
    again = vocab_folds(model, tokenizer, docs, SEQ_LEN, 3, temperature=0.0)
    assert again.block_fold == (0, 0, 0) and again.used == (0,)


def test_a_drafts_vocabulary_keeps_what_the_target_emits_and_coverage_counts_the_text(context, calibration, target):
    model, tokenizer = target
    docs = load_calibration(calibration)
    emitted = _emissions(model, token_blocks(tokenizer, docs, SEQ_LEN, 10**6))
    kept = context.kept_tokens(KEPT_SIZE)
    assert list(kept) == select_kept_tokens(tokenizer, emitted, KEPT_SIZE)
    text = token_frequencies(tokenizer, [doc.coverage_text for doc in docs])
    assert list(kept) != select_kept_tokens(tokenizer, text, KEPT_SIZE)  # not the text's most frequent
    assert context.coverage(kept) == pytest.approx(sum(text[t] for t in kept) / sum(text.values()))


@torch.inference_mode()
def test_cross_fitted_acceptance_is_the_hand_computation_and_below_the_in_sample_one(context, calibration, target):
    """Each region's blocks are scored with the vocabulary chosen from the target's emissions on the other
    regions; the search's acceptance is that cross-fitted one, below the in-sample one."""
    model, tokenizer = target
    docs = load_calibration(calibration)
    stream = token_blocks(tokenizer, docs, SEQ_LEN, 10**6)
    in_sample = select_kept_tokens(tokenizer, _emissions(model, stream), KEPT_SIZE)
    outcome = context.evaluate(FixedParams({"vocab_cuts": _vocab_cuts(KEPT_SIZE)}))
    assert outcome.plan.vocab == KEPT_SIZE
    total, positions = 0.0, 0
    for fold in range(FOLDS):
        region = [b for b, f in enumerate(context.folds.block_fold) if f == fold]
        others = [b for b, f in enumerate(context.folds.block_fold) if f != fold]
        kept = select_kept_tokens(tokenizer, _emissions(model, stream[others]), KEPT_SIZE)
        choice = context.scored_vocabulary(KEPT_SIZE)[fold]
        assert list(choice.kept) == kept and list(choice.reads) == draft_reads(tokenizer, kept, 1024)
        n = len(region) * (SEQ_LEN - 1)
        total += _greedy_acceptance(model, stream[region], kept, draft_reads(tokenizer, kept, 1024)) * n
        positions += n
    assert outcome.metrics["acceptance"] == pytest.approx(total / positions, abs=1e-6)
    reads = draft_reads(tokenizer, in_sample, 1024)
    in_sample_alpha = _greedy_acceptance(model, stream, in_sample, reads)
    assert outcome.metrics["acceptance"] < in_sample_alpha


def test_the_vocabulary_knob_stops_at_the_tokenizers_mandatory_tokens(context, target):
    _, tokenizer = target
    mandatory = mandatory_token_count(tokenizer)
    assert mandatory == 258  # 256 byte tokens and 2 specials
    low, high = context.knobs.vocab_bounds()
    assert low == mandatory and high == 1024  # min_keep.vocab of drafts would allow 64
    smallest = context.evaluate(FixedParams({"vocab_cuts": (high - low) // VOCAB_STEP}))
    assert smallest.plan.vocab >= mandatory and "acceptance" in smallest.metrics
