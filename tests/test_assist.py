"""Exported drafts in transformers' assisted generation: lossless greedy output (depth-cut and trimmed-vocabulary
drafts), consistent acceptance counts, teacher-forced alpha 1 for draft == target, the trimmed-vocabulary
adapter, and the `draft-check` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from prunesearch.cli import main
from prunesearch.pruning.assist import (
    DraftError,
    assisted_generate,
    load_assistant,
    plain_generate,
)
from prunesearch.pruning.draftcheck import (
    alpha_from_tokens_per_round,
    heldout_token_ids,
    measure_generation,
    teacher_forced_acceptance,
)
from prunesearch.pruning.draftvocab import TargetVocabularyHead, read_token_map, target_to_draft_ids
from prunesearch.pruning.export import load_base_model, write_draft_adapter
from prunesearch.pruning.speculative import expected_tokens

from .tiny_drafts import CALIB, DRAFT_PLANS, TINY, build_drafts, calibration_prompts


@pytest.fixture(scope="module")
def drafts(tmp_path_factory) -> dict[str, Path]:
    return build_drafts(tmp_path_factory.mktemp("drafts"))


@pytest.fixture(scope="module")
def target():
    return load_base_model(TINY)


@pytest.fixture(scope="module")
def prompts(target) -> list[torch.Tensor]:
    return calibration_prompts(target[1])


@pytest.mark.parametrize("name", list(DRAFT_PLANS))
@pytest.mark.parametrize("lookahead", [1, 3])
def test_assisted_greedy_equals_plain_greedy(name, lookahead, drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts[name], model, tokenizer)
    for prompt in prompts:
        expected, _ = plain_generate(model, prompt, max_new_tokens=24)
        output, stats = assisted_generate(model, draft, prompt, max_new_tokens=24, lookahead=lookahead)
        assert torch.equal(output, expected)
        assert stats.new_tokens == output.shape[-1] - prompt.shape[-1]
        assert 0 <= stats.accepted <= stats.drafted <= stats.rounds * lookahead
        assert stats.rounds >= 1 and stats.new_tokens <= stats.accepted + stats.rounds


def test_trimmed_draft_proposes_only_kept_tokens(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["trimmed"], model, tokenizer)
    kept = set(read_token_map(drafts["trimmed"]))
    output, _ = plain_generate(draft, prompts[0], max_new_tokens=16, temperature=1.0)
    assert set(output[0, prompts[0].shape[-1] :].tolist()) <= kept
    logits = draft(prompts[0]).logits
    assert logits.shape[-1] == model.config.vocab_size
    trimmed = [i for i in range(model.config.vocab_size) if i not in kept]
    assert torch.isneginf(logits[..., trimmed]).all() and torch.isfinite(logits[..., sorted(kept)]).all()


def test_draft_equal_to_target_accepts_everything(target, prompts):
    model, tokenizer = target
    draft = load_assistant(TINY, model, tokenizer)
    token_ids = heldout_token_ids(tokenizer, CALIB, 600)
    alphas = teacher_forced_acceptance(model, draft, token_ids, (0.0, 0.7, 1.0), seq_len=128)
    assert alphas == pytest.approx({0.0: 1.0, 0.7: 1.0, 1.0: 1.0}, abs=1e-5)
    _, stats = assisted_generate(model, draft, prompts[0], max_new_tokens=20, lookahead=4)
    assert stats.drafted > 0 and stats.accepted == stats.drafted


def test_sampling_runs_and_counts_are_consistent(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["trimmed"], model, tokenizer)
    output, stats = assisted_generate(model, draft, prompts[1], max_new_tokens=20, temperature=1.0, lookahead=3)
    assert output.shape[-1] <= prompts[1].shape[-1] + 20
    assert 0 <= stats.accepted <= stats.drafted and 0.0 <= stats.acceptance <= 1.0


def test_trimmed_alpha_counts_trimmed_mass_as_rejected(drafts, target):
    """Teacher-forced alpha of the trimmed draft is below 1 and never above the target's mass on kept tokens."""
    model, tokenizer = target
    draft = load_assistant(drafts["trimmed"], model, tokenizer)
    token_ids = heldout_token_ids(tokenizer, CALIB, 512)
    alpha = teacher_forced_acceptance(model, draft, token_ids, (1.0,), seq_len=128)[1.0]
    kept = torch.tensor(read_token_map(drafts["trimmed"]))
    with torch.inference_mode():
        probs = torch.cat([model(w.unsqueeze(0)).logits[0].softmax(-1) for w in token_ids.split(128)])
    assert 0.0 < alpha < float(probs[:, kept].sum(-1).mean()) + 1e-6


def test_target_to_draft_ids_maps_kept_tokens_and_splits_the_others(drafts, target):
    _, tokenizer = target
    draft_tokenizer = transformers.AutoTokenizer.from_pretrained(drafts["trimmed"])
    token_map = read_token_map(drafts["trimmed"])
    lookup = target_to_draft_ids(token_map, tokenizer, draft_tokenizer, len(tokenizer))
    assert lookup[torch.tensor(token_map)].tolist() == list(range(len(token_map)))
    missing = [i for i in range(len(tokenizer)) if i not in set(token_map)]
    assert missing
    for target_id in missing[:50]:
        piece = draft_tokenizer.convert_ids_to_tokens(int(lookup[target_id]))
        assert tokenizer.convert_ids_to_tokens(target_id).endswith(piece)


def test_vocabulary_head_scatters_logits():
    head = torch.nn.Linear(4, 3, bias=False)
    wrapped = TargetVocabularyHead(head, [5, 0, 2], target_vocab_size=7)
    hidden = torch.randn(2, 4)
    out = wrapped(hidden)
    assert torch.equal(out[:, [5, 0, 2]], head(hidden))
    assert torch.isneginf(out[:, [1, 3, 4, 6]]).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 0.95])
def test_alpha_from_tokens_per_round_inverts_expected_tokens(alpha):
    assert alpha_from_tokens_per_round(expected_tokens(alpha, 4), 4) == pytest.approx(alpha, abs=1e-6)


def test_measure_generation_reports_consistent_counts(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["depth"], model, tokenizer)
    report = measure_generation(model, draft, prompts[:2], max_new_tokens=12, lookahead=2, repeats=2)
    assert 0 <= report["accepted"] <= report["drafted"]
    assert report["acceptance"] == pytest.approx(report["accepted"] / report["drafted"], abs=1e-4)
    assert 1.0 <= report["tokens_per_round"] <= 3.0 and 0.0 <= report["alpha_from_rounds"] <= 1.0
    assert report["plain_tokens_per_second"] > 0 and report["assisted_tokens_per_second"] > 0


def test_wrong_vocabulary_is_refused(drafts, target, tmp_path):
    model, tokenizer = target
    broken = tmp_path / "draft"
    broken.mkdir()
    for path in drafts["trimmed"].iterdir():
        if path.name != "token_map.json":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(DraftError, match="no token map"):
        load_assistant(broken, model, tokenizer)


def test_draft_check_cli(drafts, capsys):
    argv = ["draft-check", "--target", str(TINY), "--draft", str(drafts["trimmed"]), "--data", str(CALIB)]
    small = ["--prompts", "1", "--new-tokens", "8", "--repeats", "1", "--alpha-tokens", "512", "--lookahead", "2"]
    assert main([*argv, *small, "--temperature", "1.0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["teacher_forced_acceptance"]) == {"0.0", "1.0"}
    assert set(report["generation"]) == {"0.0", "1.0"}
    assert all(0.0 <= v <= 1.0 for v in report["teacher_forced_acceptance"].values())
    assert main([*argv, *small, "--lookahead", "9"]) == 2
    assert capsys.readouterr().err.strip().startswith("prunesearch draft-check: error: --lookahead")
    assert main([*argv[:-1], str(TINY / "missing.txt"), *small]) == 2
    assert "not found" in capsys.readouterr().err


def test_shipped_adapter_runs_without_prunesearch(drafts, target, prompts, tmp_path):
    """The copy written into an export imports on its own and, on the remote-code draft, drafts what ours does."""
    import importlib.util
    import shutil

    model, tokenizer = target
    export = tmp_path / "draft"
    shutil.copytree(drafts["trimmed"], export)
    path = write_draft_adapter(export)
    spec = importlib.util.spec_from_file_location("shipped_draft_vocab", path)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert imports and not any("prunesearch" in line or line.startswith("from .") for line in imports)
    draft = transformers.AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32)
    draft_tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    token_map = shipped.read_token_map(export)
    shipped.adapt_to_target_vocabulary(draft, token_map, tokenizer, draft_tokenizer, model.config.vocab_size)
    ours = load_assistant(drafts["trimmed"], model, tokenizer)
    with torch.inference_mode():
        assert torch.allclose(draft(prompts[0]).logits, ours(prompts[0]).logits, atol=1e-5)
    expected, _ = plain_generate(model, prompts[0], max_new_tokens=16)
    output, _ = assisted_generate(model, draft, prompts[0], max_new_tokens=16, lookahead=3)
    assert torch.equal(output, expected)
