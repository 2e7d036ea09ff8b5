"""Exports of draft trials (a job with `objectives.speculative`) carry `speculative.json`, and their model card
says what the draft is for and how to generate with it; other exports are unchanged."""

from __future__ import annotations

import json

import pytest

from prunesearch.cli import main
from prunesearch.pruning.export import (
    CUSTOM_GENERATE_FILE,
    DRAFT_ADAPTER_FILE,
    SPECULATIVE_FILE,
    TOKEN_MAP_FILE,
    read_speculative,
)
from prunesearch.pruning.modelcard import render_model_card
from prunesearch.search.results import export_trial
from prunesearch.service.settings import BUNDLED_EXAMPLES

from ..draft_trials import DRAFT_METRICS, add_draft_trial, create_draft_study, draft_plan, draft_spec_dict

KEYS = [
    "target",
    "acceptance",
    "lookahead",
    "temperature",
    "predicted_speedup",
    "draft_ms",
    "target_ms",
    "coverage",
    "hardware",
    "engine",
    "token_map",
    "format",
]


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def test_a_trimmed_draft_export_carries_speculative_json_and_a_draft_card(storage, tmp_path):
    study = create_draft_study(storage, "draft", draft_spec_dict(temperature=0.7))
    number = add_draft_trial(study, draft_plan(vocab=512))
    summary = export_trial(storage, "draft", number, tmp_path / "out")
    out = tmp_path / "out"
    draft = json.loads((out / SPECULATIVE_FILE).read_text())
    assert sorted(draft) == sorted(KEYS) and draft == read_speculative(out)
    provenance = json.loads((out / "provenance.json").read_text())
    assert draft["target"] == {
        "path": str(BUNDLED_EXAMPLES.resolve()),
        "fingerprint": provenance["base_model_fingerprint"],
    }
    assert len(draft["target"]["fingerprint"]) >= 16
    assert (draft["acceptance"], draft["lookahead"], draft["predicted_speedup"]) == (0.62, 4, 1.87)
    assert (draft["draft_ms"], draft["target_ms"], draft["coverage"]) == (0.41, 2.05, 0.97)
    assert (draft["temperature"], draft["hardware"], draft["engine"], draft["format"]) == (0.7, "h100-sxm", "graphs", 1)
    assert draft["token_map"] == TOKEN_MAP_FILE and (out / TOKEN_MAP_FILE).is_file()
    assert summary["vocab"]["after"] == 512
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "# A speculative-decoding draft of tiny-llama" in card
    assert "draft model for speculative decoding with the target `tiny-llama`" in card
    assert "assistant_model=draft" in card and "adapt_to_target_vocabulary(draft, token_map" in card
    assert "def adapt_to_target_vocabulary" in (out / DRAFT_ADAPTER_FILE).read_text()  # what the card imports
    # never in the draft's folder: transformers would take it as the draft's own generate in assisted decoding
    assert not (out / CUSTOM_GENERATE_FILE).exists()
    assert "num_assistant_tokens = 4" in card and '- "speculative-decoding"' in card


def test_a_whole_vocabulary_draft_has_no_token_map_and_a_fixed_lookahead_is_recorded(storage, tmp_path):
    study = create_draft_study(storage, "draft", draft_spec_dict(lookahead=3))
    metrics = {k: v for k, v in DRAFT_METRICS.items() if k != "lookahead"}  # a fixed lookahead is not searched
    number = add_draft_trial(study, draft_plan(kept_layers=3, vocab=None), metrics)
    export_trial(storage, "draft", number, tmp_path / "out")
    draft = read_speculative(tmp_path / "out")
    assert draft["token_map"] is None and not (tmp_path / "out" / TOKEN_MAP_FILE).exists()
    assert draft["lookahead"] == 3 and draft["temperature"] == 0.0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "target.generate(**inputs, assistant_model=draft, max_new_tokens=64)" in card
    assert "adapt_to_target_vocabulary" not in card and not (tmp_path / "out" / DRAFT_ADAPTER_FILE).exists()


def test_a_draft_trial_without_draft_metrics_exports_nulls_not_made_up_values(storage, tmp_path):
    """Until a trial records them (a baseline, a trial scored before the draft objective), they are null."""
    study = create_draft_study(storage, "draft")
    number = add_draft_trial(study, draft_plan(), metrics={})
    export_trial(storage, "draft", number, tmp_path / "out")
    draft = read_speculative(tmp_path / "out")
    assert [draft[k] for k in ("acceptance", "lookahead", "predicted_speedup", "coverage")] == [None] * 4
    assert draft["target"]["fingerprint"] and draft["token_map"] == TOKEN_MAP_FILE


def test_an_export_of_a_job_without_drafts_has_no_speculative_json(storage, tmp_path):
    spec = draft_spec_dict()
    spec["objectives"] = {}
    study = create_draft_study(storage, "plain", spec)
    number = add_draft_trial(study, draft_plan(), metrics={})
    export_trial(storage, "plain", number, tmp_path / "out")
    assert read_speculative(tmp_path / "out") is None and not (tmp_path / "out" / SPECULATIVE_FILE).exists()
    assert not (tmp_path / "out" / CUSTOM_GENERATE_FILE).exists()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "# tiny-llama, structurally pruned by prunesearch" in card
    assert "speculative" not in card and "assistant_model" not in card


def test_the_cli_export_of_a_draft_trial_writes_speculative_json(storage, tmp_path, capsys):
    study = create_draft_study(storage, "draft", draft_spec_dict(temperature=1.0))
    number = add_draft_trial(study, draft_plan(vocab=384))
    out = tmp_path / "cli"
    args = ["export", "--storage", storage, "--study", "draft", "--trial", str(number), "--out", str(out)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["trial"] == number
    draft = read_speculative(out)
    assert (draft["acceptance"], draft["temperature"], draft["token_map"]) == (0.62, 1.0, TOKEN_MAP_FILE)
    assert len(json.loads((out / TOKEN_MAP_FILE).read_text())["new_to_original"]) == 384


def test_a_healed_draft_keeps_its_speculative_json_and_draft_card(storage, tmp_path, prunesearch_home):
    from prunesearch.pruning.heal import HealSettings, heal

    study = create_draft_study(storage, "draft")
    number = add_draft_trial(study, draft_plan(vocab=512))
    export_trial(storage, "draft", number, tmp_path / "student")
    settings = HealSettings(steps=2, seq_len=32, batch=2, eval_chars=2_000)
    heal(tmp_path / "student", BUNDLED_EXAMPLES, BUNDLED_EXAMPLES / "calib.txt", tmp_path / "healed", settings)
    assert read_speculative(tmp_path / "healed") == read_speculative(tmp_path / "student") is not None
    card = (tmp_path / "healed" / "README.md").read_text()
    assert "# A speculative-decoding draft of tiny-llama" in card and "## Healing" in card


def test_a_trimmed_draft_assists_its_target_with_both_tokenizers_losslessly(storage, tmp_path):
    """transformers' assisted generation with different tokenizers also runs a trimmed draft, greedy: the
    target's own output (the card's route, the shipped adapter, is tested in tests/test_assist.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    study = create_draft_study(storage, "draft")
    number = add_draft_trial(study, draft_plan(kept_layers=3, vocab=768))
    export_trial(storage, "draft", number, tmp_path / "out")
    assert read_speculative(tmp_path / "out")["token_map"] == TOKEN_MAP_FILE
    target, tokenizer = (cls.from_pretrained(BUNDLED_EXAMPLES) for cls in (AutoModelForCausalLM, AutoTokenizer))
    draft, assistant_tokenizer = (
        cls.from_pretrained(tmp_path / "out") for cls in (AutoModelForCausalLM, AutoTokenizer)
    )
    assert draft.config.vocab_size == 768
    draft.generation_config.num_assistant_tokens = 4
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    inputs = tokenizer("The module", return_tensors="pt")
    with torch.no_grad():
        plain = target.generate(**inputs, max_new_tokens=12, do_sample=False)
        assisted = target.generate(
            **inputs,
            assistant_model=draft,
            tokenizer=tokenizer,
            assistant_tokenizer=assistant_tokenizer,
            max_new_tokens=12,
            do_sample=False,
        )
    assert assisted.tolist() == plain.tolist()


def test_the_card_of_a_remote_code_draft_loads_it_with_trust_remote_code():
    speculative = {"target": {"path": "/models/llama-docs", "fingerprint": "abc"}, "lookahead": 2, "token_map": None}
    runtimes = {"stock_transformers": False, "trust_remote_code": True}
    card = render_model_card({}, {}, {"runtimes": runtimes, "base_model": "/models/llama-docs"}, speculative)
    assert 'from_pretrained("path/to/this/folder", trust_remote_code=True)' in card
    assert "target `llama-docs`" in card and "| target fingerprint | abc |" in card
    assert render_model_card({}, {}, {"base_model": "/models/llama-docs"}).startswith("---")


def test_exporting_a_vocabulary_below_the_tokenizers_mandatory_tokens_is_a_one_line_error(storage, tmp_path, capsys):
    study = create_draft_study(storage, "draft")
    number = add_draft_trial(study, draft_plan(vocab=256))  # tiny-llama's tokenizer needs 258 tokens at least
    argv = ["export", "--storage", storage, "--study", "draft", "--trial", str(number), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "258" in err


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_trimmed_draft_export_keeps_the_vocabulary_its_search_scored(storage, tmp_path, temperature, monkeypatch):
    """The exported draft's tokens are those the search's context keeps for the same size: the target's
    emissions on the calibration text at the job's temperature, and its provenance says so."""
    from prunesearch.pruning.draftvocab import read_token_map
    from prunesearch.search.context import SearchContext
    from prunesearch.search.spec import SearchSpec

    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path / "home"))
    spec = draft_spec_dict(temperature=temperature)
    study = create_draft_study(storage, "draft", spec)
    number = add_draft_trial(study, draft_plan(vocab=512))
    export_trial(storage, "draft", number, tmp_path / "out")
    context = SearchContext(SearchSpec.model_validate(spec))
    assert read_token_map(tmp_path / "out") == list(context.kept_tokens(512))
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    kept_by = "target emissions on the calibration text"
    assert provenance["vocabulary"] == {"kept_by": kept_by, "temperature": temperature}
