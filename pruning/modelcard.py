"""The model card (`README.md`) of an exported checkpoint, rendered from its config, plan and provenance.

Pure logic: dicts in, Markdown out. Hugging Face model-card YAML front matter (`base_model`, `tags`,
`library_name`, `pipeline_tag`), then the base model, the plan, the search's metrics and how latency was priced,
any heals, which runtimes load it, and the code that loads it. A speculative-decoding draft (its
`speculative.json`) says first which target it drafts for, what it predicts, and how to generate with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

MODEL_CARD_FILE = "README.md"

_METRICS = (
    ("kl", "KL divergence to the dense model (nats/token, proxy)"),
    ("ppl", "perplexity on the calibration text (proxy)"),
    ("latency_ms", "latency of the objective (ms)"),
    ("latency_fraction", "latency as a fraction of the dense model's"),
    ("prefill_ms", "prefill (ms)"),
    ("decode_ms_per_token", "decode (ms per token)"),
    ("total_ms", "prefill + decode (ms)"),
    ("params", "parameters"),
    ("weight_bytes", "weight bytes"),
    ("vocab_coverage", "share of calibration tokens the kept vocabulary covers"),
    ("acceptance", "draft: expected acceptance per drafted token"),
    ("lookahead", "draft: tokens drafted per round"),
    ("speedup", "draft: predicted speedup of target + draft over the target alone"),
    ("draft_ms", "draft: one draft step (ms)"),
    ("target_ms", "draft: one target step (ms)"),
    ("coverage", "draft: share of calibration tokens the draft's vocabulary covers"),
)


def render_model_card(
    config: Mapping[str, Any],
    plan: Mapping[str, Any],
    provenance: Mapping[str, Any],
    speculative: Mapping[str, Any] | None = None,
) -> str:
    """The whole README.md of a checkpoint; `speculative` is a draft's `speculative.json` (None: not a draft)."""
    runtimes = provenance.get("runtimes") or {}
    sections = [
        _front_matter(config, provenance, runtimes, draft=bool(speculative)),
        _title(provenance, draft=bool(speculative)),
        _draft_section(speculative, runtimes) if speculative else "",
        _base_section(config, provenance),
        _plan_section(plan),
        _search_section(provenance.get("search"), healed=bool(provenance.get("heals"))),
        _heal_section(provenance.get("heals") or []),
        _runtimes_section(runtimes),
        _load_section(runtimes),
    ]
    return "\n".join(section for section in sections if section)


def _front_matter(
    config: Mapping[str, Any], provenance: Mapping[str, Any], runtimes: Mapping[str, Any], *, draft: bool = False
) -> str:
    tags = ["prunesearch", "pruned", "structured-pruning", str(config.get("model_type", "unknown"))]
    if draft:
        tags += ["speculative-decoding", "draft-model"]
    if runtimes.get("trust_remote_code") and not runtimes.get("stock_transformers"):
        tags.append("custom_code")
    lines = ["---", f"base_model: {json.dumps(_base_name(provenance))}", "tags:"]
    lines += [f"- {json.dumps(tag)}" for tag in tags]
    lines += ['library_name: "transformers"', 'pipeline_tag: "text-generation"', "---", ""]
    return "\n".join(lines)


def _base_name(provenance: Mapping[str, Any]) -> str:
    """The base model's name: the last part of its local path (a hub id stays whole)."""
    base = str(provenance.get("base_model") or "unknown")
    return base if base.count("/") == 1 and not base.startswith("/") else PurePath(base).name


def _title(provenance: Mapping[str, Any], *, draft: bool) -> str:
    name = _base_name(provenance)
    if draft:
        return f"# A speculative-decoding draft of {name}, cut by prunesearch\n"
    return f"# {name}, structurally pruned by prunesearch\n"


def _draft_section(speculative: Mapping[str, Any], runtimes: Mapping[str, Any]) -> str:
    """What the draft is for (its target), what the search predicts, and how to generate with it."""
    target = speculative.get("target") or {}
    name = _base_name({"base_model": target.get("path") or target.get("name")})
    rows = [
        ("target", target.get("path") or target.get("name")),
        ("target fingerprint", target.get("fingerprint")),
        ("expected acceptance per drafted token", speculative.get("acceptance")),
        ("lookahead (tokens drafted per round)", speculative.get("lookahead")),
        ("temperature (0: greedy)", speculative.get("temperature")),
        ("predicted speedup over the target alone", speculative.get("predicted_speedup")),
        ("draft step (ms)", speculative.get("draft_ms")),
        ("target step (ms)", speculative.get("target_ms")),
        ("vocabulary coverage", speculative.get("coverage")),
        ("priced on", f"{speculative.get('hardware')} ({speculative.get('engine')} engine)"),
    ]
    lines = [
        "## Speculative-decoding draft",
        "",
        f"This checkpoint is a draft model for speculative decoding with the target `{name}`: the target verifies "
        "the tokens it drafts, so the output is the target's own. `speculative.json` holds these numbers.",
        "",
        _table(("", ""), [(k, _fmt(v)) for k, v in rows]),
        "",
        *_draft_usage(speculative, runtimes),
    ]
    return "\n".join(lines) + "\n"


def _draft_usage(speculative: Mapping[str, Any], runtimes: Mapping[str, Any]) -> list[str]:
    """transformers' assisted generation with this draft as `assistant_model`; a trimmed vocabulary passes both
    tokenizers (transformers maps the draft's tokens to the target's)."""
    remote = "" if runtimes.get("stock_transformers", True) else ", trust_remote_code=True"
    lookahead = speculative.get("lookahead")
    code = [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'target = AutoModelForCausalLM.from_pretrained("path/to/target")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/target")',
        f'draft = AutoModelForCausalLM.from_pretrained("path/to/this/folder"{remote})',
    ]
    if isinstance(lookahead, int):
        code += [
            f"draft.generation_config.num_assistant_tokens = {lookahead}  # the searched lookahead",
            'draft.generation_config.num_assistant_tokens_schedule = "constant"',
        ]
    code += ["", 'inputs = tokenizer("Your prompt", return_tensors="pt")']
    if speculative.get("token_map"):
        code += [  # draft_vocab.py ships in the folder: the draft then reads and writes the target's token ids
            'import json, sys; sys.path.insert(0, "path/to/this/folder")',
            "from draft_vocab import adapt_to_target_vocabulary",
            'token_map = json.load(open("path/to/this/folder/token_map.json"))["new_to_original"]',
            'draft_tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")  # the trimmed vocabulary',
            "adapt_to_target_vocabulary(draft, token_map, tokenizer, draft_tokenizer, target.config.vocab_size)",
            "output = target.generate(**inputs, assistant_model=draft, max_new_tokens=64)",
        ]
    else:
        code += ["output = target.generate(**inputs, assistant_model=draft, max_new_tokens=64)"]
    code += ["print(tokenizer.decode(output[0]))", "```"]
    return ["### Generating with it", "", *code]


def _base_section(config: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    rows = [
        ("base model", provenance.get("base_model")),
        ("base model fingerprint", provenance.get("base_model_fingerprint")),
        ("architecture", ", ".join(config.get("architectures") or []) or config.get("model_type")),
        ("importance criterion", provenance.get("criterion")),
        ("bias compensation (FLAP)", provenance.get("bias_compensation")),
        ("calibration file", provenance.get("calibration_file")),
        ("calibration tokens", provenance.get("calibration_tokens")),
        ("training-free repair", _repair(provenance.get("repair"))),
        ("dtype", config.get("dtype") or config.get("torch_dtype")),
    ]
    return "## Base model\n\n" + _table(("", ""), [(k, _fmt(v)) for k, v in rows if v is not None]) + "\n"


def _repair(repair: Mapping[str, Any] | None) -> str | None:
    """The repair row: which map was folded into the LM head, fitted on how many calibration tokens."""
    if not repair:
        return None
    return f"{repair['method']}: least-squares map of the final hidden state, {repair['tokens']:,} tokens"


def _plan_section(plan: Mapping[str, Any]) -> str:
    layers = plan.get("layers") or []
    removed = [i for i, layer in enumerate(layers) if not layer["heads"] and not layer["ffn"]]
    kept = [layer for i, layer in enumerate(layers) if i not in removed]
    heads = sorted({layer["heads"] for layer in kept})
    ffn = sorted({layer["ffn"] for layer in kept})
    lines = [
        "## Plan (`prune_plan.json`)",
        "",
        f"- layers: {len(layers)} in the base model, {len(layers) - len(removed)} kept"
        + (f" (removed: {', '.join(map(str, removed))})" if removed else ""),
        f"- query heads per kept layer: {', '.join(map(str, heads))} (0: attention removed)",
        f"- MLP channels per kept layer: {', '.join(map(str, ffn))} (0: MLP removed)",
        f"- vocabulary: {plan.get('vocab') if plan.get('vocab') is not None else 'kept whole'}",
        "",
        _table(("layer", "heads", "MLP"), [(str(i), str(x["heads"]), str(x["ffn"])) for i, x in enumerate(layers)]),
        "",
    ]
    return "\n".join(lines)


def _search_section(search: Mapping[str, Any] | None, *, healed: bool = False) -> str:
    if not search:
        return (
            "## Metrics\n\nWritten by `prunesearch prune` from a plan: no search priced or scored it. Evaluate it "
            "with `prunesearch evaluate --model .`.\n"
        )
    metrics = search.get("metrics") or {}
    rows = [(label, _fmt(metrics[key])) for key, label in _METRICS if metrics.get(key) is not None]
    workload = search.get("workload") or {}
    priced = [
        f"- study `{search.get('study')}`, trial {search.get('trial')}"
        + (f" (baseline `{search['baseline']}`)" if search.get("baseline") else ""),
        f"- hardware: `{search.get('hardware')}` (latency model: {search.get('latency_model', 'unknown')})",
        f"- latency objective: {search.get('latency_objective')}",
        "- workload: "
        + ", ".join(f"{k} {v}" for k, v in workload.items())
        + " (batch sequences of prompt_tokens, then generate_tokens new tokens each)",
    ]
    if search.get("dense_latency_ms") is not None:
        priced.append(f"- dense model on the same workload: {_fmt(search['dense_latency_ms'])} ms")
    before = " Quality was measured before healing (see Healing below)." if healed else ""
    return (
        f"## Metrics (from the search)\n\nThe search's proxy scores of the pruned plan.{before}\n\n"
        + _table(("metric", "value"), rows)
        + "\n\n### How latency was priced\n\n"
        + "\n".join(priced)
        + "\n"
    )


def _heal_section(heals: Sequence[Mapping[str, Any]]) -> str:
    if not heals:
        return ""
    lines = ["## Healing", ""]
    for number, heal in enumerate(heals, 1):
        settings = heal.get("settings") or {}
        lines.append(
            f"{number}. distilled from `{heal.get('teacher')}` on `{heal.get('data_file')}`: "
            f"{settings.get('method', '?')}, {heal.get('steps')} steps, {heal.get('tokens')} tokens"
        )
        for name, values in (heal.get("eval") or {}).items():
            lines.append(f"   - `{PurePath(name).name}`: {_perplexities(values.get('before'), values.get('after'))}")
    return "\n".join(lines) + "\n"


def _perplexities(before: Any, after: Any) -> str:
    """'token perplexity A before, B after' (and the other kinds a heal's eval holds, e.g. char_ppl)."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return f"perplexity {_fmt(before)} before, {_fmt(after)} after"
    kinds = [key for key in before if key in after]
    return "; ".join(f"{key.replace('_', ' ')} {_fmt(before[key])} before, {_fmt(after[key])} after" for key in kinds)


def _runtimes_section(runtimes: Mapping[str, Any]) -> str:
    if not runtimes:
        return ""
    engines = runtimes.get("engines") or []
    rows = [
        ("transformers (stock class)", "yes" if runtimes.get("stock_transformers") else "no"),
        ("transformers, trust_remote_code=True", "yes" if runtimes.get("trust_remote_code") else "no"),
        ("serving engines", ", ".join(engines) if engines else "none"),
    ]
    lines = ["## Runtimes", "", f"Config class: `{runtimes.get('architecture')}`.", "", _table(("runtime", ""), rows)]
    reasons = list(runtimes.get("reasons") or [])
    if reasons:
        lines += ["", "Why the stock class cannot load it:", *(f"- {reason}" for reason in reasons)]
    notes = list(runtimes.get("notes") or [])
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _load_section(runtimes: Mapping[str, Any]) -> str:
    stock = bool(runtimes.get("stock_transformers"))
    remote = "" if stock else ", trust_remote_code=True"
    code = [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'path = "path/to/this/folder"',
        f"model = AutoModelForCausalLM.from_pretrained(path{remote})",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "```",
    ]
    lines = ["## How to load it", "", *code]
    if not stock:
        lines += [
            "",
            "Without remote code, through the installed prunesearch (the same modeling):",
            "",
            "```python",
            "from prunesearch.pruning.modeling import load_pruned",
            "",
            'model = load_pruned("path/to/this/folder")',
            "```",
        ]
    engines = runtimes.get("engines") or []
    if "vllm" in engines:
        lines += ["", "With vLLM:", "", "```bash", "vllm serve path/to/this/folder", "```"]
    if "sglang" in engines:
        lines += ["", "With SGLang:", "", "```bash", "python -m sglang.launch_server --model-path path/to/this/folder"]
        lines += ["```"]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "–" if value is None else str(value)
