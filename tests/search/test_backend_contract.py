"""One contract for every `SearchBackend`: the reads and the delete the service relies on, run against the
Optuna backend (on SQLite, with trials written through Optuna's public API) and against the tests' fake."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from prunesearch.search.backend import OptunaBackend, SearchBackend
from prunesearch.search.healselect import CANDIDATES_ATTR as heal_candidates_attr
from prunesearch.search.healselect import result_key
from prunesearch.search.storage import forget_storages

from ..fake_backend import FakeBackend


@dataclass(frozen=True)
class Trial:
    state: str = "complete"
    kl: float = 0.0
    latency_ms: float = 1.0
    feasible: bool = True
    baseline: str | None = None


# A front (0, 1, 4, 6 and 8, a tie of 4), dominated, infeasible, failed, running and waiting trials.
TRIALS = [
    Trial(kl=0.10, latency_ms=5.0, baseline="dense"),  # 0: front (slowest)
    Trial(kl=0.30, latency_ms=3.0),  # 1: front
    Trial(kl=0.40, latency_ms=4.0),  # 2: dominated by 1
    Trial(kl=0.01, latency_ms=0.5, feasible=False),  # 3: would dominate all, but infeasible
    Trial(kl=0.50, latency_ms=2.0),  # 4: front (fastest)
    Trial(state="fail"),  # 5
    Trial(kl=0.20, latency_ms=4.0, baseline="uniform"),  # 6: front
    Trial(kl=0.90, latency_ms=9.0),  # 7: dominated
    Trial(kl=0.50, latency_ms=2.0),  # 8: ties with 4, kept
    Trial(state="running"),  # 9
    Trial(state="waiting"),  # 10: enqueued, not started
]
FRONT_ORDER = [4, 8, 1, 6, 0]  # fastest first; ties in trial order


def _seed_optuna(backend: OptunaBackend, study_name: str, trials: list[Trial]) -> None:
    study = optuna.create_study(storage=backend.storage, study_name=study_name, directions=["minimize"] * 2)
    for number, t in enumerate(trials):
        attrs = {"feasible": t.feasible} | ({"baseline": t.baseline} if t.baseline else {})
        if t.state == "complete":
            metrics = {"kl": t.kl, "latency_ms": t.latency_ms}
            attrs |= {"plan": {"trial": number}, "metrics": metrics}
            constraints = {"latency": -1.0 if t.feasible else 1.0}
            study.add_trial(create_trial(values=[t.kl, t.latency_ms], user_attrs=attrs, constraints=constraints))
        elif t.state == "fail":
            study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=attrs | {"feasible": False}))
        elif t.state == "running":
            study.ask()
        else:
            study.enqueue_trial({})


# Healed scores of three front members: 1 heals past 6 (dominating it), 4 stays the fastest.
HEALED = {4: 0.2, 1: 0.05, 6: 0.1}
HEALED_FRONT_ORDER = [4, 1]


def _seed_heals(backend: SearchBackend, study_name: str) -> None:
    if isinstance(backend, FakeBackend):
        for trial, kl in HEALED.items():
            backend.add_heal(study_name, trial, healed_kl=kl)
        return
    study = optuna.load_study(study_name=study_name, storage=backend.storage)
    study.set_user_attr(heal_candidates_attr, list(HEALED))
    for trial, kl in HEALED.items():
        study.set_user_attr(result_key(trial), {"trial": trial, "healed_kl": kl})


def _seed_fake(backend: FakeBackend, study_name: str, trials: list[Trial]) -> None:
    for t in trials:
        backend.add_trial(
            study_name, kl=t.kl, latency_ms=t.latency_ms, feasible=t.feasible, baseline=t.baseline, state=t.state
        )


@pytest.fixture(params=["optuna", "fake"])
def seeded(request, tmp_path):
    """(backend, seed): a backend of each kind, and how to give one of its studies the trials above."""
    if request.param == "optuna":
        return OptunaBackend(f"sqlite:///{tmp_path / 'studies.db'}"), _seed_optuna
    return FakeBackend(), _seed_fake


@pytest.fixture
def backend(seeded) -> SearchBackend:
    backend, seed = seeded
    seed(backend, "s", TRIALS)
    seed(backend, "other", TRIALS[:2])
    return backend


def test_implements_the_protocol(backend):
    assert isinstance(backend, SearchBackend)


def test_front_is_the_feasible_non_dominated_trials_fastest_first(backend):
    front = backend.front("s")
    assert [x["trial"] for x in front] == FRONT_ORDER
    assert front[-1]["baseline"] == "dense" and front[0]["baseline"] is None
    assert front[0]["plan"] == {"trial": 4} and front[0]["metrics"] == {"kl": 0.5, "latency_ms": 2.0}
    assert [x["trial"] for x in backend.front("other")] == [1, 0]


def test_healed_front_is_the_non_dominated_healed_trials_and_status_counts_them(backend):
    assert backend.healed_front("s") == [] and backend.heal_status("s") is None
    _seed_heals(backend, "s")
    healed = backend.healed_front("s")
    assert [x["trial"] for x in healed] == HEALED_FRONT_ORDER
    assert healed[1]["healed"]["healed_kl"] == 0.05 and healed[1]["metrics"] == {"kl": 0.3, "latency_ms": 3.0}
    assert healed[0]["plan"] == {"trial": 4} and healed[0]["baseline"] is None
    assert backend.heal_status("s") == {"candidates": [4, 1, 6], "healed": [4, 1, 6], "current": None, "errors": {}}
    items, _ = backend.trial_page("s", offset=0, limit=50)
    healed = {t["trial"]: t["healed"] for t in items}
    assert healed[1]["healed_kl"] == 0.05 and {n for n, h in healed.items() if h is not None} == {4, 1, 6}
    assert backend.healed_front("other") == []
    for read in (backend.healed_front, backend.heal_status):
        with pytest.raises(LookupError, match="nope"):
            read("nope")


def test_trial_page_lists_started_trials_in_pages(backend):
    items, total = backend.trial_page("s", offset=0, limit=4)
    assert total == 10  # the waiting trial has not started
    assert [t["trial"] for t in items] == [0, 1, 2, 3]
    assert set(items[0]) == {"trial", "state", "baseline", "feasible", "plan", "metrics", "error", "healed"}
    assert (items[0]["state"], items[0]["baseline"], items[0]["feasible"]) == ("complete", "dense", True)
    assert items[3]["feasible"] is False
    rest, total = backend.trial_page("s", offset=4, limit=50)
    assert [t["trial"] for t in rest] == [4, 5, 6, 7, 8, 9] and total == 10
    assert [t["state"] for t in rest if t["trial"] in (5, 9)] == ["fail", "running"]
    assert rest[-1]["plan"] is None and rest[-1]["metrics"] == {} and rest[-1]["feasible"] is False
    assert backend.trial_page("s", offset=20) == ([], 10)


def test_trial_reads_one_started_trial_as_the_page_lists_it(backend):
    items, _ = backend.trial_page("s", limit=50)
    assert [backend.trial("s", t["trial"]) for t in items] == items
    assert backend.trial("s", 10) is None  # waiting: not started
    assert backend.trial("s", 99) is None
    with pytest.raises(LookupError, match="nope"):
        backend.trial("nope", 0)


def test_unknown_studies_raise_lookup_error(backend, tmp_path):
    for read in (backend.front, backend.trial_page):
        with pytest.raises(LookupError, match="nope"):
            read("nope")
    with pytest.raises(LookupError, match="nope"):
        backend.export_trial("nope", 0, tmp_path / "out")


def test_delete_removes_only_that_study_and_tolerates_unknown_ones(backend):
    backend.delete_study("s")
    with pytest.raises(LookupError):
        backend.trial_page("s")
    backend.delete_study("s")
    backend.delete_study("never-created")
    assert backend.trial_page("other")[1] == 2


def test_concurrent_reads_agree(backend):
    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(lambda _: backend.trial_page("s", limit=100), range(16)))
    assert all(page == pages[0] for page in pages)


def test_one_storage_per_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert OptunaBackend(url).storage is OptunaBackend(url).storage
    assert OptunaBackend(url).storage is not OptunaBackend(f"sqlite:///{tmp_path / 'other.db'}").storage


def test_serving_reads_loads_no_torch(tmp_path):
    """The API process imports the app and the Optuna backend, and serves reads and deletes, without torch."""
    code = f"""
import sys
import optuna
from prunesearch.service.api.main import create_app
from prunesearch.search.backend import OptunaBackend
create_app()
backend = OptunaBackend("sqlite:///{tmp_path / "s.db"}")
optuna.create_study(storage=backend.storage, study_name="s", directions=["minimize"] * 2)
assert backend.front("s") == [] and backend.trial_page("s") == ([], 0)
backend.delete_study("s")
assert "torch" not in sys.modules and "transformers" not in sys.modules, "torch was imported"
"""
    env = {**os.environ, "PRUNESEARCH_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_forgotten_storages_are_built_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    first = OptunaBackend(url).storage
    forget_storages()
    assert OptunaBackend(url).storage is not first
