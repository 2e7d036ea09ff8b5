"""Pareto maths on plain arrays (every objective minimised): the non-dominated rows and their hypervolume.

Our own, so the search depends on no private Optuna function; `tests/search/test_pareto.py` checks both against
brute force and against Optuna's results."""

from __future__ import annotations

import numpy as np


def non_dominated(values: np.ndarray) -> np.ndarray:
    """Mask of the rows that no other row dominates (no worse in every column, better in one); equal rows are
    all kept, as Optuna's `best_trials` keeps them."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.zeros(len(values), dtype=bool)
    unique, inverse = np.unique(values, axis=0, return_inverse=True)
    # Rows are unique and lexsorted: only an earlier row can dominate a later one, and an earlier row that is
    # no worse anywhere differs somewhere, so it dominates.
    keep = np.zeros(len(unique), dtype=bool)
    front: list[np.ndarray] = []
    for i, row in enumerate(unique):
        if not front or not (np.asarray(front) <= row).all(axis=1).any():
            keep[i] = True
            front.append(row)
    return keep[inverse.reshape(-1)]


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by `points` and bounded by `reference` (any number of objectives).

    Points not strictly better than the reference in every objective add nothing and are ignored. Two
    objectives: sort and sum rectangles. More: slice along the last objective and sum the slices' volumes
    (exact; fine for the small fronts a search has)."""
    reference = np.asarray(reference, dtype=float).reshape(-1)
    points = np.asarray(points, dtype=float).reshape(-1, len(reference))
    points = points[(points < reference).all(axis=1)]
    if not len(points):
        return 0.0
    return float(_volume(_front(points), reference))


def _front(points: np.ndarray) -> np.ndarray:
    """The unique non-dominated points, sorted by the first objective (np.unique sorts them)."""
    unique = np.unique(points, axis=0)
    return unique[non_dominated(unique)]


def _volume(front: np.ndarray, reference: np.ndarray) -> float:
    if front.shape[1] == 1:
        return float(reference[0] - front[:, 0].min())
    if front.shape[1] == 2:
        return _volume_2d(front, reference)
    return _volume_sliced(front, reference)


def _volume_2d(front: np.ndarray, reference: np.ndarray) -> float:
    """Sorted by x, a front's y falls: each point adds the rectangle from it to the reference's x, between its
    y and the previous point's (the reference's, for the first)."""
    upper_y = np.concatenate([reference[1:], front[:-1, 1]])
    return float((reference[0] - front[:, 0]) @ (upper_y - front[:, 1]))


def _volume_sliced(front: np.ndarray, reference: np.ndarray) -> float:
    """Between consecutive values of the last objective, the dominated region is the (d-1)-volume of the
    points at or below the slice, times the slice's depth."""
    ordered = front[np.argsort(front[:, -1], kind="stable")]
    tops = np.append(ordered[1:, -1], reference[-1])
    total = 0.0
    for i, top in enumerate(tops):
        depth = top - ordered[i, -1]
        if depth > 0:
            total += depth * _volume(_front(ordered[: i + 1, :-1]), reference[:-1])
    return total
