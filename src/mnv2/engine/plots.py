"""PNG plot of a run's training curves (matplotlib, headless); the tasks draw their own evaluation pictures."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(history: list[dict], path: str | Path, metric: str, title: str = "") -> Path:
    """Loss and the selecting ``metric`` per epoch (train where the task logs it, and val) → ``path``."""
    history = [{k: (math.nan if v is None else v) for k, v in h.items()} for h in history]  # undefined: a gap
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    if f"train_{metric}" in history[0]:
        b.plot(epochs, [h[f"train_{metric}"] for h in history], label="train (augmented)")
    b.plot(epochs, [h[f"val_{metric}"] for h in history], label="val")
    best = max(history, key=lambda h: -math.inf if math.isnan(h[f"val_{metric}"]) else h[f"val_{metric}"])
    b.annotate(
        f"{best[f'val_{metric}']:.4g}", (best["epoch"], best[f"val_{metric}"]), textcoords="offset points",
        xytext=(-30, -15),
    )  # fmt: skip
    b.set_xlabel("epoch")
    b.set_ylabel(f"val {metric}")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
