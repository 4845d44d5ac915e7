"""Classification metrics from a confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the top-k predictions, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == target[:, None]
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def summarize(confusion: torch.Tensor, top5_correct: int, loss_sum: float, class_names: list[str]) -> dict:
    """top1/top5 in percent, n, mean loss and per-class accuracy (percent; ``None`` for absent classes)."""
    n = int(confusion.sum())
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = 100.0 * int(confusion[i, i]) / total if total else None
    return {
        "top1": 100.0 * int(confusion.diag().sum()) / max(n, 1),
        "top5": 100.0 * top5_correct / max(n, 1),
        "n": n,
        "loss": loss_sum / max(n, 1),
        "per_class": per_class,
    }
