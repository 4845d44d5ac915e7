"""PNG plots of training curves and confusion matrices (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and top-1 accuracy per epoch (train and val) → ``path``."""
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [h["train_top1"] for h in history], label="train (augmented)")
    b.plot(epochs, [h["val_top1"] for h in history], label="val")
    best = max(history, key=lambda h: h["val_top1"])
    b.annotate(
        f"{best['val_top1']:.2f}%", (best["epoch"], best["val_top1"]), textcoords="offset points", xytext=(-30, -15)
    )
    b.set_xlabel("epoch")
    b.set_ylabel("top-1 accuracy (%)")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_confusion(confusion, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with counts → ``path``."""
    cm = confusion.double()
    norm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
