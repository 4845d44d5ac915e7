"""Parameter, multiply-add and activation counts measured on the real module graph.

A forward pass with hooks on every layer (conv+BN+act unit, linear, pool) records each layer's output shape;
multiply-adds follow from the modules' own weights and those shapes, never from a copy of Table 2. The counting
convention is TF-slim's (the README's "MACs"): a conv costs out_h * out_w * out_c * (in_c / groups) * k_h * k_w,
BatchNorm, activations, pooling and residual adds cost nothing, and the classifier counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mnv2.models.layers import ConvNormAct


@dataclass
class LayerStats:
    module: str
    kind: str
    output_shape: tuple[int, ...]  # per image: (C, H, W) or (F,)
    params: int
    params_no_bn: int
    madds: int
    activations: int  # elements of this layer's output, per image


@dataclass
class ModelSummary:
    input_shape: tuple[int, ...]
    params: int  # every parameter, BN affine included (torchvision's num_params)
    params_no_bn: int  # without BN affine (TF-slim README "Params")
    madds: int
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def max_activations(self) -> int:
        return max(layer.activations for layer in self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["max_activations"] = self.max_activations
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def format_table(self) -> str:
        head = f"{'module':<26} {'output':>16} {'params':>10} {'MAdds':>13} {'activations':>12}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(str(s) for s in r.output_shape)
            lines.append(f"{r.module:<26} {shape:>16} {r.params:>10,} {r.madds:>13,} {r.activations:>12,}")
        lines.append("-" * len(head))
        shape = "x".join(str(s) for s in self.input_shape)
        lines.append(f"input {shape}: params {self.params:,} ({self.params_no_bn:,} without BN), MAdds {self.madds:,}")
        return "\n".join(lines)


def _bn_params(module: nn.Module) -> int:
    return sum(
        p.numel()
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False)
    )


def _madds(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, (ConvNormAct, nn.Conv2d)):
        conv = module.conv if isinstance(module, ConvNormAct) else module
        kh, kw = conv.kernel_size
        return out[0].numel() * (conv.in_channels // conv.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def summarize(model: nn.Module, resolution: int | tuple[int, int], in_chans: int | None = None) -> ModelSummary:
    """Count params, multiply-adds and activations of ``model`` on one ``resolution`` x ``resolution`` image."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    config = getattr(model, "config", None)
    in_chans = in_chans or getattr(config, "in_chans", 3)
    rows: list[LayerStats] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inputs, out: torch.Tensor) -> None:
        params = sum(p.numel() for p in module.parameters())
        rows.append(
            LayerStats(
                module=names[module],
                kind=type(module).__name__,
                output_shape=tuple(out.shape[1:]),
                params=params,
                params_no_bn=params - _bn_params(module),
                madds=_madds(module, out),
                activations=out[0].numel(),
            )
        )

    # A ConvNormAct is counted as one layer; a plain Conv2d outside one (e.g. SSDLite's 1x1 box and class
    # predictors, §6.2) as its own, so every conv of every task model counts once.
    leaves = (ConvNormAct, nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)
    inner = {id(m.conv) for m in model.modules() if isinstance(m, ConvNormAct)}
    hooked = [m for m in model.modules() if isinstance(m, leaves) and id(m) not in inner]
    handles = [m.register_forward_hook(hook) for m in hooked]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, h, w))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for p in model.parameters())
    return ModelSummary(
        input_shape=(in_chans, h, w),
        params=params,
        params_no_bn=params - _bn_params(model),
        madds=sum(r.madds for r in rows),
        layers=rows,
    )
