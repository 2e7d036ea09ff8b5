"""`prunesearch heal` on the bundled tiny Llama: healed checkpoints keep shapes and load as before, LoRA merges
exactly, a killed heal resumes at its saved step, and bad input gets a one-line error."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from prunesearch.choices import HealMethod
from prunesearch.cli import main
from prunesearch.pruning import healstate
from prunesearch.pruning.heal import HealSettings, heal, loss_curve
from prunesearch.pruning.healdata import HealDataError
from prunesearch.pruning.healloop import with_lora
from prunesearch.pruning.healstate import HealStateError, work_dir
from prunesearch.pruning.modeling import load_pruned
from prunesearch.pruning.modules import decoder, unwrap_peft
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import PrunePlan

from .factories import LLAMA_DOCS, save_tiny_checkpoint

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CALIB = TINY / "calib.txt"
PLANS = {
    "uniform": {"layers": [{"heads": 2, "ffn": 128}] * 4, "vocab": None},
    "mixed": {
        "layers": [{"heads": 4, "ffn": 256}, {"heads": 2, "ffn": 128}, {"heads": 0, "ffn": 64}, {"heads": 2, "ffn": 0}],
        "vocab": 700,
    },
}
FAST = HealSettings(steps=6, lr=3e-4, seq_len=64, batch=4, eval_chars=8_000)


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama pruned by a uniform plan (stock class) and a mixed one (remote code, trimmed vocabulary)."""
    root = tmp_path_factory.mktemp("students")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNESEARCH_HOME", str(root / "home"))
        for name, plan in PLANS.items():
            prune_checkpoint(
                TINY,
                PrunePlan.from_dict({"version": 1, **plan}),
                root / name,
                calibration=ImportanceCalibration(path=CALIB, seq_len=64, max_tokens=4096),
            )
    return {name: root / name for name in PLANS}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))


def _run_cli(capsys, *argv: str) -> tuple[int, dict | str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_heal_keeps_shapes_and_loads_like_the_unhealed_checkpoint(name, students, tmp_path, capsys, prunesearch_home):
    student, out = students[name], tmp_path / "healed"
    argv = ["heal", "--model", str(student), "--teacher", str(TINY), "--data", str(CALIB), "--out", str(out)]
    argv += ["--steps", "8", "--lr", "3e-4", "--seq-len", "64", "--batch", "4", "--eval", str(CALIB)]
    code, summary = _run_cli(capsys, *argv, "--eval-chars", "8000")
    assert code == 0, summary
    assert (summary["steps"], summary["tokens"], summary["resumed_from"]) == (8, 8 * 64 * 4, 0)
    assert summary["wall_seconds"] >= summary["seconds"] > 0 and summary["tokens_per_second"] > 0
    metrics = summary["eval"][str(CALIB)]
    assert metrics["after"]["token_ppl"] < metrics["before"]["token_ppl"]  # the training text itself
    assert metrics["after"]["char_ppl"] < metrics["before"]["char_ppl"]

    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in student.iterdir())
    for same in ("prune_plan.json", "tokenizer.json", "config.json", "generation_config.json"):
        assert (out / same).read_text() == (student / same).read_text()
    before, after = load_file(student / "model.safetensors"), load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not work_dir(out).exists()

    healed = load_pruned(out)
    remote = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = _ids(healed.config.vocab_size)
    torch.testing.assert_close(_logits(remote, ids), _logits(healed, ids))
    if name == "uniform":
        stock = transformers.AutoModelForCausalLM.from_pretrained(out)
        assert type(stock) is transformers.LlamaForCausalLM
        torch.testing.assert_close(_logits(stock, ids), _logits(healed, ids))
    else:
        assert (out / "token_map.json").read_text() == (student / "token_map.json").read_text()

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["criterion"] == json.loads((student / "provenance.json").read_text())["criterion"]
    (record,) = provenance["heals"]
    assert record["steps"] == 8 and record["settings"]["method"] == "full"
    assert len(record["loss_curve"]) == 8 and record["eval"] == summary["eval"]


def test_lora_merge_does_not_change_the_function(students):
    student = load_pruned(students["mixed"])
    wrapped = with_lora(student, rank=4)
    adapters = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert adapters and all(p.requires_grad for p in adapters)
    # the accessors read the wrapped model, whose projections now carry the adapters
    assert unwrap_peft(wrapped) is student and unwrap_peft(student) is student
    assert any("lora_B" in name for name, _ in decoder(unwrap_peft(wrapped)).named_parameters())
    with torch.no_grad():  # B starts at zero; make the adapters do something
        for p in adapters:
            p.normal_(0, 0.05)
    ids = _ids(student.config.vocab_size)
    unmerged = _logits(wrapped, ids)
    assert not torch.allclose(unmerged, _logits(load_pruned(students["mixed"]), ids), atol=1e-3)
    merged = wrapped.merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), unmerged, rtol=1e-5, atol=1e-5)


def test_lora_heal_trains_only_the_projections(students, tmp_path, prunesearch_home):
    settings = replace(FAST, method=HealMethod.LORA, gradient_checkpointing=True, lr=1e-2)
    result = heal(students["mixed"], TINY, CALIB, tmp_path / "out", settings)
    assert result.steps == 6 and result.method == "lora"
    before = load_file(students["mixed"] / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("_proj.weight") for k in changed)
    assert "model.layers.1.self_attn.q_proj.weight" in changed


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_heal_other_architectures(arch, tmp_path, prunesearch_home):
    """Qwen2 (q/k/v biases, tied embeddings) and Qwen3 (q/k norms), pruned by a mixed plan with a trimmed
    vocabulary, heal with either method and load as before."""
    teacher = tmp_path / "teacher"
    config = save_tiny_checkpoint(arch, teacher)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    plan = {"layers": [{"heads": heads, "ffn": 48}, {"heads": heads // kv, "ffn": 0}, {"heads": 0, "ffn": 24}]}
    plan["layers"] += [{"heads": 0, "ffn": 0}]
    prune_checkpoint(teacher, PrunePlan.from_dict({"version": 1, **plan, "vocab": 700}), tmp_path / "pruned")
    for method in HealMethod:
        out = tmp_path / str(method)
        heal(tmp_path / "pruned", teacher, CALIB, out, replace(FAST, method=method, steps=2, lr=1e-2))
        healed, unhealed = load_file(out / "model.safetensors"), load_file(tmp_path / "pruned" / "model.safetensors")
        assert {k: v.shape for k, v in healed.items()} == {k: v.shape for k, v in unhealed.items()}
        assert any(not torch.equal(healed[k], unhealed[k]) for k in healed)
        model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        assert torch.isfinite(_logits(model, _ids(700))).all()


class _Killed(Exception):
    pass


def _kill_at(step: int):
    def progress(report):
        if report.step == step:
            raise _Killed

    return progress


@pytest.mark.parametrize("method", [HealMethod.FULL, HealMethod.LORA])
def test_killed_heal_resumes_at_its_saved_step(method, students, tmp_path, prunesearch_home):
    settings = replace(FAST, method=method, checkpoint_every=2, lr=1e-2 if method == HealMethod.LORA else FAST.lr)
    out = tmp_path / "resumed"
    with pytest.raises(_Killed):
        heal(students["mixed"], TINY, CALIB, out, settings, progress=_kill_at(5))
    assert not out.exists() and (work_dir(out) / "state.pt").is_file()

    with pytest.raises(HealStateError, match="other models, data or settings"):
        heal(students["mixed"], TINY, CALIB, out, replace(settings, lr=1e-3))
    # the saved state holds the perplexities before the heal: other evaluation files cannot resume it
    with pytest.raises(HealStateError, match="other models, data or settings"):
        heal(students["mixed"], TINY, CALIB, out, settings, eval_files=[CALIB])
    with pytest.raises(HealStateError, match="other models, data or settings"):
        heal(students["mixed"], TINY, CALIB, out, replace(settings, eval_chars=4_000))

    steps_seen = []
    resumed = heal(students["mixed"], TINY, CALIB, out, settings, progress=lambda r: steps_seen.append(r.step))
    assert resumed.resumed_from == 4 and steps_seen == [5, 6] and resumed.steps == 6
    assert not work_dir(out).exists()

    straight = heal(students["mixed"], TINY, CALIB, tmp_path / "straight", replace(settings, checkpoint_every=0))
    assert straight.resumed_from == 0
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    unhealed = load_file(students["mixed"] / "model.safetensors")
    assert sum(float((a[k] - unhealed[k]).abs().max()) > 1e-4 for k in a) >= 4  # the heal moved weights
    for key in a:  # the resumed run read the same batches with the same optimizer state
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    curves = [
        json.loads((d / "provenance.json").read_text())["heals"][0]["loss_curve"] for d in (out, tmp_path / "straight")
    ]
    assert [s for s, _ in curves[0]] == list(range(1, 7))
    assert [loss for _, loss in curves[0]] == pytest.approx([loss for _, loss in curves[1]], rel=1e-4)


def test_self_data_is_generated_cached_and_mixed_in(students, tmp_path, prunesearch_home):
    result = heal(students["uniform"], TINY, CALIB, tmp_path / "out", replace(FAST, steps=2, self_data_tokens=300))
    cached = list((prunesearch_home / "cache" / "selfdata").glob("*.jsonl"))
    assert result.steps == 2 and len(cached) == 1
    texts = [json.loads(line)["text"] for line in cached[0].read_text().splitlines()]
    assert len(texts) >= 2 and all(texts)
    stamp = cached[0].stat().st_mtime_ns
    heal(students["uniform"], TINY, CALIB, tmp_path / "again", replace(FAST, steps=2, self_data_tokens=300))
    assert cached[0].stat().st_mtime_ns == stamp  # read from the cache, not generated again


def test_self_data_from_chat_answers_the_user_turns(tmp_path, prunesearch_home):
    from prunesearch.pruning.calibration import load_calibration
    from prunesearch.pruning.selfdata import SelfDataSettings, self_data_docs

    chat = tmp_path / "chat.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"Question {i}: what does os.path.join do?"}]} for i in range(3)]
    chat.write_text("".join(json.dumps(x) + "\n" for x in lines))
    model = transformers.AutoModelForCausalLM.from_pretrained(TINY)
    tokenizer = transformers.AutoTokenizer.from_pretrained(TINY)
    docs = load_calibration(chat, tokenizer)
    generated, cached = self_data_docs(
        model, tokenizer, chat, docs, SelfDataSettings(tokens=64, max_new_tokens=16), teacher_fingerprint="t"
    )
    assert not cached and generated
    for doc in generated:
        assert doc.text.startswith("user: Question") and "\nassistant:" in doc.text
        assert len(doc.text.split("\nassistant:", 1)[1]) > 0


def test_greedy_self_data_is_the_teachers_greedy_continuation_of_distinct_prompts(tmp_path, prunesearch_home):
    """Temperature 0: each text is the teacher's own greedy continuation (what a greedy draft will face), no
    prompt repeats before every prompt was used, and the cache keys the two temperatures apart."""
    from prunesearch.pruning.calibration import load_calibration
    from prunesearch.pruning.selfdata import SelfDataSettings, _prompts, cache_path, self_data_docs

    model = transformers.AutoModelForCausalLM.from_pretrained(TINY)
    tokenizer = transformers.AutoTokenizer.from_pretrained(TINY)
    docs = load_calibration(CALIB, tokenizer)
    greedy = SelfDataSettings(tokens=96, prompt_tokens=8, max_new_tokens=12, batch=4, temperature=0.0)
    generated, _ = self_data_docs(model, tokenizer, CALIB, docs, greedy, teacher_fingerprint="t")
    prompts = _prompts(tokenizer, docs, greedy)
    used = []
    for doc in generated:  # the prompt a text grew from: one whose decoded text starts it
        starts = [
            i for i, p in enumerate(prompts) if doc.text.startswith(tokenizer.decode(p, skip_special_tokens=True))
        ]
        continuations = {
            i: tokenizer.decode(
                model.generate(torch.tensor([prompts[i]]), do_sample=False, max_new_tokens=12)[0],
                skip_special_tokens=True,
            )
            for i in starts
        }
        matching = [i for i, text in continuations.items() if text == doc.text]
        assert matching, doc.text
        used.append(matching[0])
    assert len(generated) >= 8 and len(set(used)) == len(used) < len(prompts)  # no prompt drawn twice
    sampled = SelfDataSettings(tokens=96, prompt_tokens=8, max_new_tokens=12, batch=4)
    assert cache_path("t", docs, greedy) != cache_path("t", docs, sampled)
    with pytest.raises(HealDataError, match="temperature must be >= 0"):
        self_data_docs(
            model, tokenizer, CALIB, docs, SelfDataSettings(tokens=8, temperature=-1.0), teacher_fingerprint="t"
        )


def test_loss_curve_keeps_at_most_the_asked_points():
    assert loss_curve([1.0, 3.0, 5.0, 7.0, 9.0], points=2) == [[3, 3.0], [5, 8.0]]
    assert loss_curve([]) == []


def _heal_error(capsys, *argv: str) -> str:
    code, err = _run_cli(capsys, "heal", *argv)
    assert code == 2
    # stderr may also hold transformers' loading bars; the error itself is one line and no traceback
    last = err.strip().splitlines()[-1]
    assert last.startswith("prunesearch heal: error:") and "Traceback" not in err
    return last


def test_bad_input_gets_a_one_line_error(students, tmp_path, capsys, prunesearch_home):
    common = ["--data", str(CALIB), "--out", str(tmp_path / "out"), "--steps", "1", "--seq-len", "64"]
    err = _heal_error(capsys, "--model", str(TINY), "--teacher", str(TINY), *common)
    assert "not a prunesearch export" in err
    err = _heal_error(capsys, "--model", str(students["mixed"]), "--teacher", str(LLAMA_DOCS), *common)
    assert "tokenizer does not match" in err
    small = tmp_path / "small.txt"
    small.write_text("def f(x):\n    return x\n" * 20)
    argv = ["--model", str(students["uniform"]), "--teacher", str(TINY), "--data", str(small)]
    err = _heal_error(capsys, *argv, "--out", str(tmp_path / "out"), "--seq-len", "64", "--batch", "8")
    assert "fewer than one batch of 8" in err
    err = _heal_error(capsys, "--model", str(students["uniform"]), "--teacher", str(TINY), *common, "--ce-weight", "2")
    assert "ce_weight" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["heal", "--model", str(students["uniform"]), "--teacher", str(TINY), *common, "--tokens", "1000"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("method", [HealMethod.FULL, HealMethod.LORA])
def test_heal_on_cuda_under_bf16_autocast(method, students, tmp_path, prunesearch_home):
    settings = replace(FAST, method=method, device="cuda", steps=4, checkpoint_every=2, self_data_tokens=128)
    result = heal(students["mixed"], TINY, CALIB, tmp_path / "out", settings, eval_files=[CALIB])
    assert result.steps == 4 and math.isfinite(result.final_loss)
    assert (tmp_path / "out" / "model.safetensors").is_file() and result.eval[str(CALIB)]["after"]["token_ppl"] > 1


def test_heal_refuses_to_replace_a_folder_that_is_not_a_checkpoint(students, tmp_path, capsys, prunesearch_home):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    common = ["--data", str(CALIB), "--steps", "1", "--seq-len", "64"]
    err = _heal_error(capsys, "--model", str(students["uniform"]), "--teacher", str(TINY), *common, "--out", str(out))
    assert "not a prunesearch checkpoint" in err
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_device_this_machine_lacks_exits_2(students, tmp_path, capsys, prunesearch_home):
    device, message = ("npu", "unknown device") if torch.cuda.is_available() else ("cuda", "no CUDA GPU is available")
    argv = ["--model", str(students["uniform"]), "--teacher", str(TINY), "--data", str(CALIB), "--steps", "1"]
    err = _heal_error(capsys, *argv, "--out", str(tmp_path / "out"), "--device", device)
    assert message in err and not (tmp_path / "out").exists()


def test_evaluation_file_that_is_not_utf8_exits_2(students, tmp_path, capsys, prunesearch_home):
    latin1 = tmp_path / "eval.txt"
    latin1.write_bytes("caf\u00e9\n".encode("latin-1") * 50)
    argv = ["--model", str(students["uniform"]), "--teacher", str(TINY), "--data", str(CALIB), "--steps", "1"]
    err = _heal_error(capsys, *argv, "--seq-len", "64", "--out", str(tmp_path / "out"), "--eval", str(latin1))
    assert "not UTF-8 text" in err and str(latin1) in err


def test_self_data_without_a_usable_prompt_exits_2(students, tmp_path, capsys, prunesearch_home):
    tokenizer = transformers.AutoTokenizer.from_pretrained(TINY)
    one_token_docs = tmp_path / "tiny.txt"
    one_token_docs.write_text("\n\n".join(["a"] * 40))
    assert len(tokenizer.encode("a", add_special_tokens=False)) == 1  # so no document gives a prompt
    argv = ["--model", str(students["uniform"]), "--teacher", str(TINY), "--data", str(one_token_docs)]
    err = _heal_error(capsys, *argv, "--steps", "1", "--self-data", "64", "--out", str(tmp_path / "out"))
    assert "no document gives a self-data prompt" in err


class _FailingSave:
    """A model whose save fails half-way (a full disk), after writing one file."""

    def to(self, dtype):
        return self

    def save_pretrained(self, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")


def test_a_failed_save_leaves_no_debris_beside_out(students, tmp_path):
    from prunesearch.pruning import healio

    out = tmp_path / "healed"
    with pytest.raises(OSError, match="No space left"):
        healio.write_healed(_FailingSave(), students["uniform"], out, torch.float32, {})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_self_data_write_leaves_no_partial_cache_file(tmp_path, monkeypatch):
    from prunesearch.pruning import selfdata

    def fail(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(selfdata.os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        selfdata._write(tmp_path / "cache" / "x.jsonl", ["some text"])
    assert list((tmp_path / "cache").iterdir()) == []


def test_settings_name_the_healed_dtype_by_the_shared_enum():
    from prunesearch.choices import DType
    from prunesearch.pruning.healsettings import HealError

    HealSettings(dtype=DType.BF16).validate()
    with pytest.raises(HealError, match="dtype must be one of fp32, bf16, fp16"):
        HealSettings(dtype="fp8").validate()


def test_the_cli_loads_the_training_stack_only_to_heal():
    import subprocess
    import sys

    code = "import sys, prunesearch.cli; print(sorted({'peft', 'prunesearch.pruning.heal'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_saved_state_goes_through_a_temporary_of_this_process_and_round_trips(tmp_path, monkeypatch):
    """Two live attempts at one export (one taken for dead) share the work folder, never a temporary file."""
    written: list[str] = []
    save = torch.save
    monkeypatch.setattr(healstate.torch, "save", lambda obj, path: (written.append(Path(path).name), save(obj, path)))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    healstate.save_state(tmp_path, healstate.HealState("print", step=3), model, optimizer, scheduler)
    assert written == [f"state.pt.{os.getpid()}.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert healstate.load_state(tmp_path, "print", model, optimizer, scheduler).step == 3
