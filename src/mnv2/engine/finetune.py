"""Fine-tuning: start from a checkpoint, replace the head for new classes, freeze at block boundaries, choose how
BatchNorm behaves. Block boundaries are Table 2's stages (``blocks.0`` .. ``blocks.6``), so ``stage:N`` freezes the
stem and the first N bottleneck stages."""

from __future__ import annotations

import dataclasses

from torch import nn

from mnv2.engine.config import parse_freeze
from mnv2.models.mobilenetv2 import MobileNetV2
from mnv2.weights.checkpoint import load_checkpoint


def init_from_checkpoint(path: str, num_classes: int, dropout: float) -> tuple[MobileNetV2, bool]:
    """Load ``path`` and give it a fresh classifier when its class count differs; returns ``(model, replaced)``."""
    src = load_checkpoint(path)
    config = dataclasses.replace(src.config, num_classes=num_classes, dropout=dropout, output="logits")
    model = MobileNetV2(config)
    state = src.state_dict()
    replaced = src.config.num_classes != num_classes
    if replaced:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    model.meta = src.meta
    return model, replaced


def frozen_modules(model: MobileNetV2, spec: str) -> list[nn.Module]:
    """The modules ``--freeze spec`` freezes, in order."""
    kind, n = parse_freeze(spec)
    if kind == "none":
        return []
    if kind == "stem":
        return [model.stem]
    if kind == "stage":
        return [model.stem, *list(model.blocks)[:n]]
    return [model.stem, *model.blocks, model.head]  # backbone: everything before pooling


def apply_freeze(model: MobileNetV2, spec: str, bn: str) -> list[nn.Module]:
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
