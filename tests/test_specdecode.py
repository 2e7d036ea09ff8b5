"""The lean speculative-decoding loop: greedy output equals the target's (depth-cut and trimmed-vocabulary drafts),
draft == target accepts everything, sampling keeps the target's distribution (chi-square over many seeds, also
with a draft that cannot propose some tokens), stopping at end-of-sequence, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from prunesearch.pruning.assist import load_assistant, plain_generate
from prunesearch.pruning.draftvocab import TargetVocabularyHead
from prunesearch.pruning.export import load_base_model, write_custom_generate
from prunesearch.pruning.leancheck import measure_lean
from prunesearch.pruning.specdecode import column_major_linears, plain_generate_lean, speculative_generate
from prunesearch.pruning.speculative import speedup

from .tiny_drafts import DRAFT_PLANS, TINY, build_drafts, calibration_prompts

SAMPLES = 800
Z_P001 = 3.09  # standard normal quantile at 1 - 0.001


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads spin against other jobs and run ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
@pytest.mark.parametrize("lookahead", [1, 4])
def test_greedy_equals_plain_greedy(name, lookahead, drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts[name], model, tokenizer)
    for prompt in prompts:
        expected, _ = plain_generate(model, prompt, max_new_tokens=24)
        output, stats = speculative_generate(model, draft, prompt, max_new_tokens=24, lookahead=lookahead)
        assert torch.equal(output, expected)
        assert stats.new_tokens == output.shape[-1] - prompt.shape[-1]
        assert 0 <= stats.accepted <= stats.drafted <= stats.rounds * lookahead
        assert stats.new_tokens == stats.accepted + stats.rounds  # no early stop: every round adds one target token


@pytest.mark.parametrize("name", list(DRAFT_PLANS))
def test_column_major_weights_keep_the_greedy_output(name, drafts, target, prompts):
    """The CPU layout changes how the weights lie, not what they are: same greedy tokens, same weight values."""
    model, tokenizer = target
    expected = [plain_generate(model, prompt, max_new_tokens=16)[0] for prompt in prompts]
    laid_out, _ = load_base_model(TINY)
    draft = load_assistant(drafts[name], laid_out, tokenizer)
    linears = [m for m in laid_out.modules() if isinstance(m, torch.nn.Linear)]
    assert column_major_linears(laid_out) == len(linears) and column_major_linears(draft) > 0
    for module, original in zip(linears, (m for m in model.modules() if isinstance(m, torch.nn.Linear)), strict=True):
        assert module.weight.t().is_contiguous() and torch.equal(module.weight, original.weight)
    for prompt, want in zip(prompts, expected, strict=True):
        assert torch.equal(plain_generate_lean(laid_out, prompt, max_new_tokens=16)[0], want)
        assert torch.equal(speculative_generate(laid_out, draft, prompt, max_new_tokens=16, lookahead=3)[0], want)


def test_column_major_leaves_a_tied_head_alone():
    """A head tied to the embedding keeps the embedding's row-major layout (its lookups read rows)."""
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            tie_word_embeddings=True,
        )
    )  # fmt: skip
    assert model.lm_head.weight is model.model.embed_tokens.weight
    changed = column_major_linears(model)
    assert changed == len([m for m in model.modules() if isinstance(m, torch.nn.Linear)]) - 1
    assert model.model.embed_tokens.weight.is_contiguous() and model.lm_head.weight is model.model.embed_tokens.weight


def test_lean_plain_equals_generate(target, prompts):
    model, _ = target
    for prompt in prompts:
        expected, _ = plain_generate(model, prompt, max_new_tokens=20)
        output, stats = plain_generate_lean(model, prompt, max_new_tokens=20)
        assert torch.equal(output, expected)
        assert stats.rounds == stats.new_tokens == 20 and stats.drafted == 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_draft_equal_to_target_accepts_everything(temperature, target, prompts):
    model, _ = target
    output, stats = speculative_generate(
        model, model, prompts[0], max_new_tokens=21, lookahead=4, temperature=temperature
    )
    assert stats.drafted == 16 and stats.accepted == stats.drafted and stats.rounds == 5
    assert output.shape[-1] == prompts[0].shape[-1] + 21


def test_sampling_counts_are_consistent(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["trimmed"], model, tokenizer)
    for seed in range(3):
        output, stats = speculative_generate(
            model, draft, prompts[1], max_new_tokens=20, lookahead=3, temperature=1.0, seed=seed
        )
        assert output.shape[-1] == prompts[1].shape[-1] + stats.new_tokens <= prompts[1].shape[-1] + 20
        assert 0 <= stats.accepted <= stats.drafted and stats.rounds >= 1


def test_same_seed_same_sample(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["depth"], model, tokenizer)
    kwargs = {"max_new_tokens": 16, "lookahead": 3, "temperature": 1.0}
    first, _ = speculative_generate(model, draft, prompts[2], seed=7, **kwargs)
    again, _ = speculative_generate(model, draft, prompts[2], seed=7, **kwargs)
    assert torch.equal(first, again)


def test_stops_at_end_of_sequence(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["depth"], model, tokenizer)
    prompt = prompts[0]
    free, _ = plain_generate_lean(model, prompt, max_new_tokens=24)
    generated = free[0, prompt.shape[-1] :].tolist()
    stop = generated[5]
    end = prompt.shape[-1] + generated.index(stop) + 1
    output, stats = speculative_generate(model, draft, prompt, max_new_tokens=24, lookahead=3, eos_token_id=stop)
    assert torch.equal(output, free[:, :end])
    lean, _ = plain_generate_lean(model, prompt, max_new_tokens=24, eos_token_id=[stop])
    assert torch.equal(lean, free[:, :end]) and stats.accepted <= stats.drafted


def test_bad_input_is_refused(target, prompts):
    model, _ = target
    with pytest.raises(ValueError, match="lookahead"):
        speculative_generate(model, model, prompts[0], max_new_tokens=4, lookahead=0)
    with pytest.raises(ValueError, match="shape"):
        speculative_generate(model, model, torch.cat(prompts[:2]), max_new_tokens=4, lookahead=2)
    with pytest.raises(ValueError, match="temperature"):
        plain_generate_lean(model, prompts[0], max_new_tokens=4, temperature=-1.0)


# --- sampling is lossless in distribution, on a 16-token vocabulary -------------------------------------------


def _tiny_lm(seed: int, sharpness: float) -> transformers.LlamaForCausalLM:
    """A random 16-token Llama whose next-token distributions are far from uniform (scaled LM head)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


def _trimmed(model: transformers.LlamaForCausalLM, kept: list[int]) -> transformers.LlamaForCausalLM:
    """`model` with an LM head over `kept` only, scattered to 16 ids (-inf elsewhere), as draftvocab adapts."""
    head = torch.nn.Linear(model.config.hidden_size, len(kept), bias=False)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight[kept])
    model.set_output_embeddings(TargetVocabularyHead(head, kept, 16))
    return model


def _exact_marginals(target, prompt: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's distribution of the first and second generated tokens (the second summed over the first)."""
    with torch.inference_mode():
        first = torch.softmax(target(prompt).logits[0, -1] / temperature, -1)
        nexts = torch.cat([prompt.repeat(16, 1), torch.arange(16).unsqueeze(1)], dim=1)
        second = first @ torch.softmax(target(nexts).logits[:, -1] / temperature, -1)
    return first, second


def _chi_square_rejects(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson's test of `counts` against `probs` at p = 0.001, bins with under 5 expected pooled into one.

    The critical value is Wilson and Hilferty's approximation of the chi-square quantile."""
    expected = probs.double() * counts.sum()
    small = expected < 5
    observed = torch.cat([counts.double()[~small], counts.double()[small].sum().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if float(expected[-1]) < 5:  # too little pooled mass for a bin of its own: fold it into the largest
        observed, expected = observed[:-1].clone(), expected[:-1].clone()
        observed[expected.argmax()] += counts.sum() - observed.sum()
        expected[expected.argmax()] += probs.double().sum() * counts.sum() - expected.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = len(expected) - 1
    critical = dof * (1 - 2 / (9 * dof) + Z_P001 * (2 / (9 * dof)) ** 0.5) ** 3
    return statistic > critical


@pytest.mark.parametrize("draft_kind", ["full", "trimmed"])
def test_sampling_keeps_the_targets_distribution(draft_kind):
    temperature = 0.8
    target = _tiny_lm(seed=0, sharpness=40.0)
    draft = _tiny_lm(seed=1, sharpness=40.0)
    if draft_kind == "trimmed":
        draft = _trimmed(draft, kept=list(range(0, 16, 2)))
    prompt = torch.tensor([[3, 7, 1, 12]])
    first, second = _exact_marginals(target, prompt, temperature)
    counts = torch.zeros(2, 16)
    drafted = accepted = 0
    for seed in range(SAMPLES):
        output, stats = speculative_generate(
            target, draft, prompt, max_new_tokens=3, lookahead=2, temperature=temperature, seed=seed
        )
        counts[0, output[0, 4]] += 1
        counts[1, output[0, 5]] += 1
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert 0 < accepted < drafted  # the draft differs from the target: some drafts rejected, some kept
    with torch.inference_mode():
        proposals = torch.softmax(draft(prompt).logits[0, -1] / temperature, -1)
    assert not _chi_square_rejects(counts[0], first)
    assert not _chi_square_rejects(counts[1], second)
    assert _chi_square_rejects(counts[0], proposals)  # the test tells the draft's distribution apart


def test_custom_generate_route(drafts, target, prompts, tmp_path):
    """The loop shipped in an export runs through `generate(custom_generate=DIR, trust_remote_code=True)`."""
    model, tokenizer = target
    export = tmp_path / "draft"
    export.mkdir()
    path = write_custom_generate(export)
    assert path == export / "custom_generate" / "generate.py"
    imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert imports and not any("prunesearch" in line or line.startswith("from .") for line in imports)
    draft = load_assistant(drafts["trimmed"], model, tokenizer)
    route = {"custom_generate": str(export), "trust_remote_code": True, "max_new_tokens": 20}
    for prompt in prompts[:2]:
        expected, _ = plain_generate(model, prompt, max_new_tokens=20)
        assert torch.equal(model.generate(prompt, assistant_model=draft, lookahead=3, **route), expected)
        assert torch.equal(model.generate(prompt, **route), expected)
    sampled = model.generate(prompts[0], assistant_model=draft, do_sample=True, temperature=1.0, seed=3, **route)
    again = model.generate(prompts[0], assistant_model=draft, do_sample=True, temperature=1.0, seed=3, **route)
    assert torch.equal(sampled, again) and sampled.shape[-1] == prompts[0].shape[-1] + 20


def test_measure_lean_reports_consistent_figures(drafts, target, prompts):
    model, tokenizer = target
    draft = load_assistant(drafts["depth"], model, tokenizer)
    report = measure_lean(model, draft, prompts[:2], lookaheads=(1, 3), max_new_tokens=10, repeats=2)
    assert [row["lookahead"] for row in report["lookaheads"]] == [1, 3]
    assert report["plain_tokens_per_second"] > 0 and report["draft_cost"] > 0
    for row in report["lookaheads"]:
        assert 0.0 <= row["acceptance"] <= 1.0 and 0.0 <= row["alpha_from_rounds"] <= 1.0
        assert 1.0 <= row["tokens_per_round"] <= row["lookahead"] + 1
        assert row["measured_speedup"] > 0 and row["verify_cost"] > 0
        assert row["prefill_share"] > 0 and row["round_overhead"] >= 0
        priced = speedup(row["alpha_from_rounds"], row["lookahead"], report["draft_cost"], row["verify_cost"])
        assert row["predicted_speedup_priced"] == pytest.approx(priced, rel=0.01)
