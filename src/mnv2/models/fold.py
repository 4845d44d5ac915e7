"""BatchNorm folding: inference-time ``conv → BN`` becomes one conv with a bias.

At inference BN is an affine map per channel, so ``bn(conv(x)) = conv'(x)`` with ``W' = W·γ/σ`` and
``b' = β − μ·γ/σ`` (σ = sqrt(var + eps)). Unfused BN and ReLU6 take about a quarter of torch eager's time on CPU
(../shared/reference/peers-cpu.md); folding also gives the quantizer one weight tensor per conv, the form INT8
kernels run (per-channel scales then absorb γ/σ, which differs wildly between depthwise channels).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mnv2.models.layers import ConvNormAct


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` in eval mode with every ``ConvNormAct``'s BatchNorm folded into its conv.

    The BN module is replaced by ``nn.Identity`` so module names (``blocks.2.0.dw.conv``...) stay stable. Outputs
    match the unfolded model in eval mode to float rounding (~1e-6 relative).
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for m in model.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model`` (0 after :func:`fold_batchnorm`)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
