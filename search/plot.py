"""A Pareto plot of a study: quality against latency, front highlighted, baselines labelled."""

from __future__ import annotations

from pathlib import Path

import optuna

from .healselect import healed_records
from .results import front_trials, healed_front_of


def _point(trial: optuna.trial.FrozenTrial, quality: str) -> tuple[float, float] | None:
    metrics = trial.user_attrs.get("metrics", {})
    if quality not in metrics or "latency_fraction" not in metrics:
        return None
    return metrics["latency_fraction"], metrics[quality]


def plot_front(study: optuna.Study, path: Path, quality: str | None = None) -> Path:
    """Write a PNG of every scored trial, the feasible front as a step line, and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = quality or study.metric_names[0]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    scored = [(t, p) for t in study.get_trials(deepcopy=False) if (p := _point(t, quality))]
    if scored:
        xs, ys = zip(*(p for _, p in scored), strict=True)
        ax.scatter(xs, ys, s=12, c="#9aa5b1", label="scored trials")
    front = sorted(p for t in front_trials(study) if (p := _point(t, quality)))
    if front:
        ax.step(*zip(*front, strict=True), where="post", c="#d1495b", lw=1.5, label="Pareto front")
        ax.scatter(*zip(*front, strict=True), s=24, c="#d1495b", zorder=3)
    _draw_healed(ax, study, {t.number: p for t, p in scored}, quality)
    for trial, (x, y) in scored:
        if trial.user_attrs.get("baseline"):
            ax.annotate(trial.user_attrs["baseline"], (x, y), fontsize=6, alpha=0.8)
    ax.set_xlabel("latency / dense latency")
    ax.set_ylabel(quality)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(alpha=0.3)
    if scored:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{study.study_name}: {len(front)} plans on the front")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _draw_healed(ax, study: optuna.Study, points: dict[int, tuple[float, float]], quality: str) -> None:
    """Each healed candidate as a diamond joined to its one-shot point, and the healed front as a step line."""
    key = f"healed_{quality}"
    healed = [
        (points[h["trial"]], h[key]) for h in healed_records(study.user_attrs) if key in h and h["trial"] in points
    ]
    for i, ((x, y), y_healed) in enumerate(healed):
        ax.plot([x, x], [y, y_healed], c="#2e8b57", lw=0.8, ls=":", label="heal" if i == 0 else None)
    if healed:
        xs, ys = zip(*((x, y_healed) for (x, _), y_healed in healed), strict=True)
        ax.scatter(xs, ys, s=30, marker="D", c="#2e8b57", zorder=4, label="healed")
    front = sorted((points[r["trial"]][0], r["healed"][key]) for r in healed_front_of(study) if r["trial"] in points)
    if front:
        ax.step(*zip(*front, strict=True), where="post", c="#2e8b57", lw=1.5, label="healed front")
