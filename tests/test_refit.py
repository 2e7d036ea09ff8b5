"""Training-free repair (`pruning/refit.py`): the closed-form fit, folding it into the LM head, and exports."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from prunesearch.cli import main
from prunesearch.pruning.calibration import load_calibration, token_blocks
from prunesearch.pruning.modules import embedding, lm_head
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.refit import MapStatistics, final_hidden_states, fit_final_map, fold_into_head
from prunesearch.pruning.surgery import apply_plan

from .factories import ARCHS, TINY_LLAMA, save_tiny_checkpoint, tiny_model

CALIB = TINY_LLAMA / "calib.txt"


def _cut(model) -> PrunePlan:
    """Two of four layers removed, one MLP halved: a cut that moves the final hidden state a lot."""
    config = model.config
    full = LayerPlan(config.num_attention_heads, config.intermediate_size)
    half = LayerPlan(config.num_attention_heads, config.intermediate_size // 2)
    return PrunePlan(layers=(full, LayerPlan(0, 0), LayerPlan(0, 0), half))


def test_solve_recovers_a_known_map():
    torch.manual_seed(0)
    hidden, truth = torch.randn(500, 12), torch.randn(12, 12)
    stats = MapStatistics(12).add(hidden[:200], hidden[:200] @ truth).add(hidden[200:], hidden[200:] @ truth)
    assert stats.rows == 500
    assert torch.allclose(stats.solve(ridge=0.0), truth, atol=1e-4)
    assert torch.allclose(stats.solve(), truth, atol=0.05)  # the default ridge barely shrinks a well-posed fit


def test_a_map_fitted_on_nothing_or_on_few_rows_stays_near_the_identity():
    assert torch.equal(MapStatistics(6).solve(), torch.eye(6))
    torch.manual_seed(0)
    hidden = torch.randn(3, 6)  # fewer rows than dimensions: only the ridge makes the fit well-posed
    far = MapStatistics(6).add(hidden, hidden @ torch.randn(6, 6))
    assert (far.solve(ridge=1e6) - torch.eye(6)).abs().max() < 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_the_fit_never_moves_hidden_states_further_from_the_dense_ones(arch):
    """Ridge towards the identity: the fitted map's squared error is at most the unrepaired one's."""
    dense = tiny_model(arch)
    pruned = apply_plan(dense, _cut(dense), None)
    blocks = torch.randint(3, dense.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(1))
    mapping = fit_final_map(dense, pruned, blocks, batch_size=3)
    hidden = torch.cat(list(final_hidden_states(pruned, blocks)))
    target = torch.cat(list(final_hidden_states(dense, blocks)))
    before, after = (hidden - target).square().sum(), (hidden @ mapping - target).square().sum()
    assert after < 0.9 * before


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_folding_into_the_head_equals_mapping_the_hidden_states(arch):
    model = tiny_model(arch)
    tied = model.config.tie_word_embeddings
    embedding_before, head_before = embedding(model).weight.clone(), lm_head(model).weight.clone()
    ids = torch.randint(3, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    hidden = model.model(input_ids=ids).last_hidden_state
    torch.manual_seed(3)
    mapping = torch.eye(model.config.hidden_size) + 0.1 * torch.randn(
        model.config.hidden_size, model.config.hidden_size
    )
    fold_into_head(model, mapping)
    expected = (hidden @ mapping) @ head_before.T
    assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-4)
    assert torch.equal(embedding(model).weight, embedding_before)  # a tied head is untied, never the embedding moved
    assert lm_head(model).weight is not embedding(model).weight
    if tied:
        assert model.config.tie_word_embeddings is False


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: tied embeddings
def test_a_repaired_export_carries_the_fitted_map_and_loads(arch, tmp_path, prunesearch_home):
    teacher_dir = tmp_path / "teacher"
    save_tiny_checkpoint(arch, teacher_dir)
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    plan = _cut(teacher)
    settings = ImportanceCalibration(path=CALIB, seq_len=32, max_tokens=1024)
    plain = prune_checkpoint(teacher_dir, plan, tmp_path / "plain", calibration=settings)
    summary = prune_checkpoint(teacher_dir, plan, tmp_path / "refit", calibration=settings, repair="refit")
    assert (plain["repair"], summary["repair"]) == ("none", "refit")
    assert summary["parameters"]["after"] >= plain["parameters"]["after"]  # a tied head, untied, counts twice
    provenance = json.loads((tmp_path / "refit" / "provenance.json").read_text())
    assert provenance["repair"]["method"] == "refit" and provenance["repair"]["tokens"] == 1024
    assert "repair" not in json.loads((tmp_path / "plain" / "provenance.json").read_text())
    assert "training-free repair | refit" in (tmp_path / "refit" / "README.md").read_text()
    assert "training-free repair" not in (tmp_path / "plain" / "README.md").read_text()
    unrepaired = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain", trust_remote_code=True)
    repaired = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "refit", trust_remote_code=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    blocks = token_blocks(tokenizer, load_calibration(CALIB, tokenizer), 32, 1024)
    mapping = fit_final_map(teacher, unrepaired, blocks)
    assert torch.allclose(lm_head(repaired).weight, lm_head(unrepaired).weight @ mapping.T, atol=1e-5)
    assert torch.equal(embedding(repaired).weight, embedding(unrepaired).weight)


def test_cli_prune_refit_needs_calibration(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "layers": [{"heads": 4, "ffn": 64}] * 4}))
    code = main(
        ["prune", "--model", str(TINY_LLAMA), "--plan", str(plan), "--out", str(tmp_path / "out"), "--repair", "refit"]
    )
    assert code == 2
    assert "--repair refit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
