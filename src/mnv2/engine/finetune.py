"""Fine-tuning: freeze at block boundaries and choose how BatchNorm behaves (the task copies ``--init`` weights and
replaces its head). Block boundaries are Table 2's stages (``blocks.0`` .. ``blocks.6``), so ``stage:N`` freezes the
stem and the first N bottleneck stages. A task model with a ``backbone`` attribute is frozen in its backbone."""

from __future__ import annotations

from torch import nn

from mnv2.engine.config import parse_freeze


def frozen_modules(model: nn.Module, spec: str) -> list[nn.Module]:
    """The modules ``--freeze spec`` freezes, in order."""
    kind, n = parse_freeze(spec)
    model = getattr(model, "backbone", model)
    if kind == "none":
        return []
    if kind == "stem":
        return [model.stem]
    if kind == "stage":
        return [model.stem, *list(model.blocks)[:n]]
    return [model.stem, *model.blocks, *([model.head] if hasattr(model, "head") else [])]  # all before pooling


def apply_freeze(model: nn.Module, spec: str, bn: str) -> list[nn.Module]:
    """Set ``requires_grad=False`` on frozen parameters (and on all BN affine parameters with ``bn="frozen"``)."""
    frozen = frozen_modules(model, spec)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, frozen: list[nn.Module], bn: str) -> None:
    """``model.train()``, except BN layers inside frozen modules (and all of them with ``bn="frozen"``) stay in
    eval mode: they normalise with, and keep, their running statistics."""
    model.train()
    holders = [model] if bn == "frozen" else frozen
    for holder in holders:
        for m in holder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
