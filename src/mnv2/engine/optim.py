"""Optimizer, parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from mnv2.engine.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only: not on BN, biases or depthwise kernels (TF-slim's
    ``training_scope`` sets ``regularize_depthwise=False``; decaying BN/bias is the usual "no_decay" exception)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decay if is_weight and not depthwise else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
    lr = config.scaled_lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
        )
    if config.optimizer == "rmsprop":
        # Paper: RMSProp, decay 0.9 (torch's alpha), momentum 0.9.
        return torch.optim.RMSprop(
            groups, lr=lr, alpha=config.rmsprop_decay, eps=config.rmsprop_eps, momentum=config.momentum
        )
    # AdamW's decoupled decay is scaled by lr, so a weight decay of the SGD size (~5e-5) would vanish: use as given.
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate at optimisation ``step``.

    1. linear warmup over ``warmup_epochs``;
    2. then ``exp``: ×decay_rate every decay_epochs (paper: ×0.98 per epoch), ``cosine``: half cosine to
       ``min_lr_ratio``, ``onecycle``: warmup (30% of the run unless given) then linear decay to ``min_lr_ratio``,
       ``poly``: ``(1 - progress) ** poly_power`` to 0 (TF DeepLab).
    """
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "onecycle" and warmup == 0:
        warmup = 0.3 * total  # Smith & Topin: about a third of the run increasing
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1.0, total - warmup)
    floor = config.min_lr_ratio
    if config.schedule == "exp":
        return config.decay_rate ** math.floor((step / steps_per_epoch) / config.decay_epochs)
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "poly":  # TF DeepLab's polynomial_decay to 0 (§6.3 trains with it)
        return (1 - progress) ** config.poly_power
    return floor + (1 - floor) * (1 - progress)


class ModelEma:
    """Exponential moving average of weights (and a copy of the BN statistics).

    The decay follows TF's ``ExponentialMovingAverage(decay, num_updates)``: ``min(decay, (1+n)/(10+n))``, so short
    runs are not dominated by the random initialisation (TF-slim --moving_average_decay=0.9999).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.updates = 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
