"""Healing a draft records its teacher-forced acceptance before and after, in the result, the provenance and
speculative.json (whose predicted speedup is recomputed to match)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunesearch.cli import main
from prunesearch.pruning.heal import HealSettings
from prunesearch.pruning.healdraft import draft_acceptance, heal_draft, updated_speculative
from prunesearch.pruning.pipeline import ImportanceCalibration, prune_checkpoint
from prunesearch.pruning.plan import PrunePlan
from prunesearch.pruning.speculative import speedup

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CALIB = TINY / "calib.txt"
PLAN = {"layers": [{"heads": 4, "ffn": 256}, {"heads": 0, "ffn": 0}, {"heads": 0, "ffn": 0}, {"heads": 2, "ffn": 128}]}
FAST = HealSettings(steps=3, lr=1e-3, seq_len=64, batch=4, eval_chars=4_000)
SPEC = {"target": {"fingerprint": "x"}, "acceptance": 0.5, "lookahead": 3, "temperature": 1.0, "draft_ms": 1.0,
        "target_ms": 4.0, "predicted_speedup": 1.2}  # fmt: skip


@pytest.fixture
def draft(tmp_path, prunesearch_home) -> Path:
    out = tmp_path / "draft"
    prune_checkpoint(
        TINY,
        PrunePlan.from_dict({"version": 1, "vocab": 600, **PLAN}),
        out,
        calibration=ImportanceCalibration(path=CALIB, seq_len=64, max_tokens=4096),
    )
    (out / "speculative.json").write_text(json.dumps(SPEC))
    return out


def test_heal_draft_records_acceptance_before_and_after(draft, tmp_path):
    out = tmp_path / "healed"
    result, record = heal_draft(draft, TINY, CALIB, out, FAST, acceptance_eval=CALIB, max_tokens=1024)
    assert result.steps == 3
    assert set(record["before"]) == set(record["after"]) == {"0.0", "1.0"}
    assert record["before"] == draft_acceptance(draft, TINY, CALIB, (0.0, 1.0), 1024)
    assert record["after"] == draft_acceptance(out, TINY, CALIB, (0.0, 1.0), 1024)
    assert record["after"] != record["before"]  # the heal moved the draft
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["heals"][-1]["acceptance"] == record
    spec = json.loads((out / "speculative.json").read_text())
    assert spec["acceptance"] == record["after"]["1.0"] and spec["acceptance_before_heal"] == record["before"]["1.0"]
    assert spec["predicted_speedup"] == pytest.approx(speedup(spec["acceptance"], 3, 0.25))
    assert json.loads((draft / "speculative.json").read_text()) == SPEC  # the input export is untouched


def test_speculative_without_latencies_drops_the_stale_speedup():
    spec = {k: v for k, v in SPEC.items() if k != "draft_ms"}
    updated = updated_speculative(spec, {"1.0": 0.4}, {"1.0": 0.6})
    assert updated["acceptance"] == 0.6 and "predicted_speedup" not in updated
    with_verify = updated_speculative(SPEC | {"verify_ms": 6.0}, {"1.0": 0.4}, {"1.0": 0.6})
    assert with_verify["predicted_speedup"] == pytest.approx(speedup(0.6, 3, 0.25, 1.5))


def test_heal_cli_measures_a_draft_by_default(draft, tmp_path, capsys):
    out = tmp_path / "healed"
    argv = ["heal", "--model", str(draft), "--teacher", str(TINY), "--data", str(CALIB), "--out", str(out)]
    fast = ["--steps", "2", "--seq-len", "64", "--batch", "4", "--eval-chars", "4000"]
    assert main([*argv, *fast]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["acceptance"]["file"] == str(CALIB.resolve())
    assert set(summary["acceptance"]["after"]) == {"0.0", "1.0"}
    assert main([*argv, *fast, "--acceptance-eval", str(tmp_path / "nope.txt")]) == 2
    assert "--acceptance-eval" in capsys.readouterr().err


def test_plain_heal_has_no_acceptance(tmp_path, prunesearch_home, capsys):
    student = tmp_path / "student"
    prune_checkpoint(TINY, PrunePlan.from_dict({"version": 1, "vocab": None, **PLAN}), student)
    argv = ["heal", "--model", str(student), "--teacher", str(TINY), "--data", str(CALIB), "--out", str(tmp_path / "o")]
    assert main([*argv, "--steps", "1", "--seq-len", "64", "--batch", "4"]) == 0
    assert "acceptance" not in json.loads(capsys.readouterr().out)
