"""``curves.png``: a fine-tune run's training and validation loss and accuracy per epoch, with
the phase boundaries marked, drawn with matplotlib from the Trainer's history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Draw loss and accuracy (train and, when there is one, validation) against the epoch
    (numbered from 1, as on stderr and in ``history.csv``); a dashed line and the phase's name
    where each phase begins. Returns the path, or None when there is no epoch to draw."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), style, markersize=3, label=label)
        previous = None
        for epoch, row in zip(epochs, history, strict=True):
            phase = row.get("phase")
            if phase != previous:
                if previous is not None:
                    ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
                ax.annotate(
                    str(phase), (epoch - 0.45 if previous is not None else epoch, 1.0),
                    xycoords=("data", "axes fraction"),
                    va="top", fontsize=8, color="grey",
                )  # fmt: skip
                previous = phase
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if metric == "accuracy":
            ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
