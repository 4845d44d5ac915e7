"""Building blocks shared by the backbone, the heads and the converters.

Every cross-framework convention mnv2 needs (channel rounding, TF "SAME" padding, BatchNorm eps and momentum)
is defined here once, with its source, so that no other module re-types it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnv2.errors import ConfigError

# --- BatchNorm conventions -------------------------------------------------------------------------------------
# PyTorch defaults (torch.nn.BatchNorm2d), used by torchvision and timm weights.
BN_EPS_TORCH = 1e-5
BN_MOMENTUM_TORCH = 0.1
# TF-slim / Keras: BatchNormalization(epsilon=1e-3) (keras/src/applications/mobilenet_v2.py; slim's batch_norm default).
BN_EPS_TF = 1e-3


def tf_decay_to_torch_momentum(decay: float) -> float:
    """Convert a TF/Keras moving-average *decay* into PyTorch's BatchNorm *momentum*.

    TF updates ``running = decay * running + (1 - decay) * batch``; PyTorch updates
    ``running = (1 - momentum) * running + momentum * batch``. So ``momentum = 1 - decay``.
    (Hugging Face's port passes slim's 0.997 straight to PyTorch, the bug this function exists to prevent.)
    """
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"BN decay must be in [0, 1), got {decay!r}")
    return 1.0 - decay


# TF-slim training_scope(bn_decay=0.997) (tensorflow/models research/slim/nets/mobilenet/mobilenet.py).
BN_MOMENTUM_TF_SLIM = tf_decay_to_torch_momentum(0.997)
# Keras BatchNormalization(momentum=0.999) in keras.applications.MobileNetV2 is a decay too.
BN_MOMENTUM_KERAS = tf_decay_to_torch_momentum(0.999)

# --- Padding -----------------------------------------------------------------------------------------------------
# "torch": symmetric (k - 1) // 2 * dilation, as torchvision and timm.
# "tf":    TensorFlow "SAME": total padding split with the smaller half first, so stride-2 convs on even inputs pad
#          0 before and 1 after (TF-slim, Keras, Hugging Face tf_padding=True).
PADDING_MODES = ("torch", "tf")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value`` nor 90% of ``value``.

    The rule of TF-slim's ``_make_divisible`` (research/slim/nets/mobilenet/mobilenet.py), shared verbatim by
    torchvision, Keras and Hugging Face, so that channel counts match every published checkpoint.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down must not lose more than 10%
        rounded += divisor
    return rounded


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one spatial axis of length ``size``."""
    out = -(-size // stride)  # ceil(size / stride): TF SAME output size
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def check_padding_mode(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ConfigError(f"unknown padding mode {padding!r}; expected one of {', '.join(PADDING_MODES)}")
    return padding


class ConvNormAct(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → optional ReLU6: every conv of MobileNetV2.

    ``act=False`` gives the paper's *linear* bottleneck projection (§3.2: ReLU on the narrow tensor loses
    information). With ``padding="tf"`` a size-dependent pad reproduces TF "SAME" exactly; it is static and
    symmetric whenever it can be (stride 1, or kernel 1), so only stride-2 3x3 convs pay for a pad op.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        *,
        act: bool = True,
        padding: str = "torch",
        bn_eps: float = BN_EPS_TORCH,
        bn_momentum: float = BN_MOMENTUM_TORCH,
    ) -> None:
        super().__init__()
        check_padding_mode(padding)
        total = (kernel_size - 1) * dilation
        # TF SAME equals symmetric padding when the stride is 1 and the total pad is even.
        self.tf_same = padding == "tf" and (stride > 1 or total % 2 == 1)
        static = 0 if self.tf_same else (total // 2 if padding == "tf" else (kernel_size - 1) // 2 * dilation)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, static, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the TF "SAME" pad for this conv (identity unless ``padding="tf"`` needs a dynamic pad)."""
        if not self.tf_same:
            return x
        k, s, d = self.conv.kernel_size[0], self.conv.stride[0], self.conv.dilation[0]
        top, bottom = same_padding(x.shape[-2], k, s, d)
        left, right = same_padding(x.shape[-1], k, s, d)
        return F.pad(x, (left, right, top, bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))
