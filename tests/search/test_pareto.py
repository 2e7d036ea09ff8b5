"""Pareto maths: non-dominated rows and hypervolume, against brute force and against Optuna's own results."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest

from prunesearch.search.pareto import hypervolume, non_dominated


def _grid_volume(points: np.ndarray, reference: np.ndarray) -> int:
    """Count the unit cells (integer grid from 0 to the reference) that some point dominates."""
    cells = itertools.product(*(range(int(r)) for r in reference))
    return sum(any((p <= np.array(c)).all() for p in points) for c in cells)


def _brute_non_dominated(values: np.ndarray) -> list[bool]:
    return [not any((o <= v).all() and (o < v).any() for o in values) for v in values]


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_equals_a_grid_count_on_integer_points(dims):
    rng = np.random.default_rng(dims)
    reference = np.full(dims, 7.0 if dims < 4 else 5.0)
    for _ in range(20):
        points = rng.integers(0, int(reference[0]), size=(int(rng.integers(1, 9)), dims)).astype(float)
        assert hypervolume(points, reference) == _grid_volume(points, reference)


def test_hypervolume_edge_cases():
    reference = np.ones(2)
    assert hypervolume(np.empty((0, 2)), reference) == 0.0
    assert hypervolume([[0.5, 0.5]], reference) == pytest.approx(0.25)
    # a dominated point and a duplicate add nothing
    assert hypervolume([[0.5, 0.5], [0.7, 0.8], [0.5, 0.5]], reference) == pytest.approx(0.25)
    # points outside the reference box, or on its edge, add nothing
    assert hypervolume([[0.5, 0.5], [1.5, 0.1], [0.2, 1.0], [2.0, 2.0]], reference) == pytest.approx(0.25)
    assert hypervolume([[1.5, 0.1]], reference) == 0.0
    # a staircase of two points: the union of their rectangles
    assert hypervolume([[0.2, 0.6], [0.6, 0.2]], reference) == pytest.approx(0.8 * 0.4 + 0.4 * 0.8 - 0.4 * 0.4)
    assert hypervolume([[0.25]], [1.0]) == pytest.approx(0.75)


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_equals_optunas_on_random_fronts(dims):
    from optuna._hypervolume import compute_hypervolume  # private: only as the reference oracle here

    rng = np.random.default_rng(10 + dims)
    for size in (1, 2, 5, 30, 120 if dims == 2 else 25):
        points = rng.random((size, dims))
        mine = hypervolume(points, np.ones(dims))
        theirs = float(compute_hypervolume(points, np.ones(dims)))
        if dims == 2:
            assert mine == theirs  # the same sum in the same order: figures are unchanged to the bit
        else:
            assert mine == pytest.approx(theirs, rel=1e-12)


def test_non_dominated_matches_brute_force_and_keeps_ties():
    rng = np.random.default_rng(0)
    for dims in (2, 3):
        values = rng.integers(0, 5, size=(40, dims)).astype(float)  # many ties and duplicates
        assert non_dominated(values).tolist() == _brute_non_dominated(values)
    assert non_dominated(np.empty((0, 2))).tolist() == []
    assert non_dominated([[1.0, 1.0], [1.0, 1.0], [2.0, 0.5], [2.0, 2.0]]).tolist() == [True, True, True, False]


def test_non_dominated_is_optunas_best_trials():
    rng = np.random.default_rng(1)
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in rng.integers(0, 6, size=(60, 2)).astype(float):
        study.add_trial(optuna.trial.create_trial(values=list(values)))
    values = np.array([t.values for t in study.trials])
    mine = {t.number for t, keep in zip(study.trials, non_dominated(values), strict=True) if keep}
    assert mine == {t.number for t in study.best_trials}


def test_front_records_are_copies_of_the_stored_trials():
    from prunesearch.search.results import front_record, front_trials

    study = optuna.create_study(directions=["minimize", "minimize"])
    attrs = {"plan": {"layers": [{"heads": 2, "ffn": 8}]}, "metrics": {"kl": 0.5}, "feasible": True}
    study.add_trial(optuna.trial.create_trial(values=[0.5, 0.5], user_attrs=attrs))
    record = front_record(front_trials(study)[0])
    record["plan"]["layers"][0]["heads"] = 99
    record["metrics"]["kl"] = 7.0
    stored = front_trials(study)[0].user_attrs
    assert stored["plan"]["layers"][0]["heads"] == 2 and stored["metrics"]["kl"] == 0.5
