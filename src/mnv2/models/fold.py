"""BatchNorm folding: inference-time ``conv → BN`` becomes one conv with a bias.

At inference BN is an affine map per channel, so ``bn(conv(x)) = conv'(x)`` with ``W' = W·γ/σ`` and
``b' = β − μ·γ/σ`` (σ = sqrt(var + eps)). Unfused BN and ReLU6 take about a quarter of torch eager's time on CPU
(../shared/reference/peers-cpu.md); folding also gives the quantizer one weight tensor per conv, the form INT8
kernels run (per-channel scales then absorb γ/σ, which differs wildly between depthwise channels).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mnv2.models.layers import ConvNormAct


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as ``y * scale + shift``: ``scale = γ/sqrt(var + eps)``, ``shift = β − μ·scale``.

    The one place mnv2 writes this formula: :func:`fold_conv_bn` (export, engines), the streaming forward
    (``mnv2.models.streaming``) and QAT's folded conv (``mnv2.engine.qat``) all use it. Plain tensor
    arithmetic on the module's own parameters and running statistics, so gradients flow to γ and β (QAT trains
    them with frozen statistics) and the result is never stale. A BN without affine parameters has γ = 1, β = 0.

    Returns:
        ``(scale, shift)``, two vectors of ``bn.num_features`` values.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) has no inference form")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """A copy of ``conv`` with ``bn`` (running statistics) folded in: ``W' = W·scale``, ``b' = b·scale + shift``.

    The result is detached (new leaf parameters, in ``conv``'s dtypes); ``conv`` and ``bn`` are left untouched.
    As with ``torch.nn.utils.fusion.fuse_conv_bn_eval``, which this replaces, the new bias requires grad only
    if ``conv`` had a bias that did.
    """
    with torch.no_grad():
        scale, shift = bn_scale_shift(bn)
        weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))  # per output channel
        bias = shift if conv.bias is None else shift + conv.bias * scale
    fused = copy.deepcopy(conv)
    bias_dtype = conv.weight.dtype if conv.bias is None else conv.bias.dtype
    bias_grad = conv.bias is not None and conv.bias.requires_grad
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    fused.bias = nn.Parameter(bias.to(bias_dtype), requires_grad=bias_grad)
    return fused


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` in eval mode with every ``ConvNormAct``'s BatchNorm folded into its conv.

    The BN module is replaced by ``nn.Identity`` so module names (``blocks.2.0.dw.conv``...) stay stable. Outputs
    match the unfolded model in eval mode to float rounding (~1e-6 relative).
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for m in model.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fold_conv_bn(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model`` (0 after :func:`fold_batchnorm`)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
