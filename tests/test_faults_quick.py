"""CI's short form of bench/faults.py: a worker killed with SIGKILL mid-trial on SQLite, and the job still ends
with exactly n_trials counted trials (nothing lost, nothing duplicated)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "faults.py"


def test_a_worker_killed_mid_trial_loses_no_trial(tmp_path):
    out = tmp_path / "faults.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(out.read_text())
    (result,) = summary["worker-kill"]
    assert (result["status"], result["lost"], result["duplicated"]) == ("succeeded", 0, 0)
    assert result["counted"] == result["trials_done"] == result["n_trials"]
    assert (result["left_running"], result["abandoned_not_failed"]) == (0, 0)
    assert result["killed_mid_trial"] == 1 and result["abandoned"] >= 1
