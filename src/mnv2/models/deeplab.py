"""Mobile DeepLabv3 on MobileNetV2 (paper §6.3), as TF DeepLab defines it for ``mobilenet_v2`` (``research/deeplab``:
``core/feature_extractor.py``, ``model.py``, ``common.py``).

- Backbone: MobileNetV2 up to ``layer_18`` (TF-slim's name for the last, 320-channel bottleneck; our ``stage6`` tap),
  without the 1280-channel 1x1 conv (``final_endpoint='layer_18'``). Output stride 16 (or 8) by dilation: the
  backbone's ``output_stride`` replaces the last strides by atrous rates (§6.3).
- Head (``model.extract_features`` with ``aspp_with_batch_norm=True``): an image-pooling branch (global average →
  1x1 conv 256 → BN → ReLU → upsample), a 1x1 conv 256 branch and, with ASPP, three 3x3 atrous branches at rates 6,
  12, 18 at output stride 16 (doubled at 8); concatenated, projected by a 1x1 conv 256 + BN + ReLU, dropout 0.1
  (TF: ``keep_prob=0.9``), then 1x1 logits with bias (``_get_branch_logits``) and bilinear upsampling to the input
  size. The head's activation is ReLU (TF's arg scope: ``activation_fn=tf.nn.relu``), not the backbone's ReLU6.
- The paper's on-device model is the head **without** ASPP (Table 7 "w/o ASPP": 2.11M parameters, 2.75B MAdds at
  512x512 for PASCAL VOC's 21 classes). TF's ``common.py`` sets ``atrous_rates = None`` for ``mobilenet_v2``.
- ASPP convs: TF's default ``aspp_with_separable_conv=True`` splits each 3x3 into depthwise + BN + ReLU and
  pointwise + BN + ReLU (``_split_separable_conv2d``). Table 7's "with ASPP" parameters (4.52M) are those of
  *regular* 3x3 atrous convs (``separable=False``); the separable form has 2.57M.

Table 7 at 21 classes, counted by ``mnv2.bench.profile.summarize`` (convs and logits; BN in the parameters):

=================  ==========  =============================  ==============
head               parameters  multiply-adds 512 / 513 px     paper
=================  ==========  =============================  ==============
w/o ASPP           2,113,557   2.60B / 2.74B                  2.11M / 2.75B
ASPP, regular      4,523,541   5.07B / 5.36B                  4.52M / 5.8B
ASPP, separable    2,568,021   3.07B / 3.23B                  --
=================  ==========  =============================  ==============

The multiply-adds of the on-device head match at TF DeepLab's 513x513 crop (a 33x33 map at output stride 16);
with ASPP 0.44B (8 %) stay unaccounted for: the paper gives no breakdown.

Upsampling uses ``align_corners=False`` (half-pixel centres, as PyTorch, ONNX and TFLite resize by default; TF
DeepLab's ``resize_bilinear(align_corners=True)`` is why its crop sizes are 16k + 1, e.g. 513). Everything else
follows TF.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnv2.errors import ConfigError
from mnv2.models.layers import ConvNormAct
from mnv2.models.mobilenetv2 import MobileNetV2Config, MobileNetV2Features, feature_taps
from mnv2.typed import strict_from_dict

FEATURE_TAP = "stage6"  # TF-slim 'layer_18': the last bottleneck (320 channels at width 1.0)
OUTPUT_STRIDES = (8, 16)
ATROUS_RATES_OS16 = (6, 12, 18)  # DeepLabv3 §3.3 / TF README: rates (6, 12, 18) at output stride 16, doubled at 8
HEAD_DEPTH = 256  # model.py: depth = 256 (every head conv, independent of the width multiplier)
HEAD_DROPOUT = 0.1  # model.py: slim.dropout(keep_prob=0.9); Hugging Face's config stores the keep probability 0.8
# TF initialisers of the head (model.py): slim.conv2d's default Xavier for the plain convs, truncated normals of
# these standard deviations for the split separable convs and the logits.
DEPTHWISE_INIT_STD, POINTWISE_INIT_STD, LOGITS_INIT_STD = 0.33, 0.06, 0.01


@dataclass(frozen=True)
class DeepLabConfig:
    """The segmentation head's arguments; saved in a checkpoint as ``head`` (a plain dict).

    Attributes:
        num_classes: logits per pixel (21 for PASCAL VOC, 11 for CamVid); no background is added.
        output_stride: 16 (the paper's, Table 7) or 8 (finer, ~4x the backbone's late-stage cost); the backbone
            dilates to it.
        aspp: add the three 3x3 atrous branches (Table 7 "with ASPP"); ``False`` is the paper's on-device head.
        separable: ASPP branches as depthwise + pointwise convs (TF's ``aspp_with_separable_conv`` default) or as
            regular 3x3 atrous convs (what Table 7's "with ASPP" counts are).
        atrous_rates: the ASPP rates at this output stride; ``None`` = (6, 12, 18) x 16 / ``output_stride``.
        depth: channels of every head conv (TF 256).
        dropout: drop probability after the projection (TF ``keep_prob=0.9`` → 0.1).
        image_pooling: the image-level branch (TF ``add_image_level_feature``, default true).
        class_colors: optional RGB colour per class for predicted masks (from the data's class file); not
            architecture, carried with the head so ``predict`` can draw what the data's own colour maps showed.
    """

    num_classes: int = 21
    output_stride: int = 16
    aspp: bool = False
    separable: bool = True
    atrous_rates: tuple[int, ...] | None = None
    depth: int = HEAD_DEPTH
    dropout: float = HEAD_DROPOUT
    image_pooling: bool = True
    class_colors: tuple[tuple[int, int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.atrous_rates is not None:  # lists from JSON metadata
            object.__setattr__(self, "atrous_rates", tuple(int(r) for r in self.atrous_rates))
        if self.class_colors is not None:
            object.__setattr__(self, "class_colors", tuple(tuple(int(v) for v in c) for c in self.class_colors))
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"DeepLab output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride!r}")
        if self.atrous_rates is not None and (not self.atrous_rates or min(self.atrous_rates) < 1):
            raise ConfigError(f"atrous_rates must be positive integers, got {self.atrous_rates!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ConfigError(f"depth must be an integer >= 1, got {self.depth!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout is a drop probability in [0, 1), got {self.dropout!r} (TF's keep_prob 0.9 is "
                              "a dropout of 0.1)")  # fmt: skip
        if self.class_colors is not None and (
            len(self.class_colors) != self.num_classes
            or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.class_colors)
        ):
            raise ConfigError(f"class_colors must be {self.num_classes} RGB triples in 0..255")

    @property
    def rates(self) -> tuple[int, ...]:
        """The ASPP rates in use: the given ones, or (6, 12, 18) scaled to the output stride ((12, 24, 36) at 8)."""
        if self.atrous_rates is not None:
            return self.atrous_rates
        return tuple(r * 16 // self.output_stride for r in ATROUS_RATES_OS16)

    @classmethod
    def from_dict(cls, values: dict, source: str = "segmentation head") -> DeepLabConfig:
        """Build from a dict (a checkpoint's ``head``); unknown keys raise a ConfigError naming them."""
        return strict_from_dict(cls, values, source)

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples as lists), as a checkpoint stores it."""
        d = dataclasses.asdict(self)
        if self.atrous_rates is not None:
            d["atrous_rates"] = list(self.atrous_rates)
        if self.class_colors is not None:
            d["class_colors"] = [list(c) for c in self.class_colors]
        return d


class ConvBNReLU(ConvNormAct):
    """TF DeepLab's head conv: ``slim.conv2d`` + batch norm + ReLU (its arg scope's ``tf.nn.relu``, not ReLU6).

    A :class:`ConvNormAct` with another activation, so BN folding, QAT and the profiler treat it like every conv.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, act=True, **kwargs)
        self.act = nn.ReLU(inplace=True)


class ImagePooling(nn.Module):
    """Image-level features (DeepLabv3 §3.3): global average → 1x1 conv + BN + ReLU → broadcast to the map size.

    Upsampled bilinearly as TF DeepLab does (``resize_bilinear``; of a 1x1 map, a copy). Not ``expand`` or
    ``repeat``: litert-torch's NCHW→NHWC rewrite turns those into shapes LiteRT rejects.
    """

    def __init__(self, in_channels: int, depth: int, **bn) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, depth, 1, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabHead(nn.Module):
    """The DeepLabv3 head of ``model.extract_features`` + ``_get_branch_logits`` (module names follow TF's scopes:
    ``image_pooling``, ``aspp0`` … ``aspp3``, ``concat_projection``, ``logits``)."""

    def __init__(self, in_channels: int, head: DeepLabConfig, **bn) -> None:
        super().__init__()
        d = head.depth
        self.image_pooling = ImagePooling(in_channels, d, **bn) if head.image_pooling else None
        self.aspp0 = ConvBNReLU(in_channels, d, 1, **bn)
        self.aspp = nn.ModuleList()
        if head.aspp:
            for rate in head.rates:
                if head.separable:  # _split_separable_conv2d: depthwise (BN, ReLU) then pointwise (BN, ReLU)
                    branch = nn.Sequential(
                        ConvBNReLU(in_channels, in_channels, 3, 1, rate, groups=in_channels, **bn),
                        ConvBNReLU(in_channels, d, 1, **bn),
                    )
                else:
                    branch = ConvBNReLU(in_channels, d, 3, 1, rate, **bn)
                self.aspp.append(branch)
        branches = 1 + len(self.aspp) + (self.image_pooling is not None)
        self.concat_projection = ConvBNReLU(branches * d, d, 1, **bn)
        self.dropout = nn.Dropout(head.dropout)
        self.logits = nn.Conv2d(d, head.num_classes, 1)  # activation_fn=None, normalizer_fn=None: with bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.image_pooling(x)] if self.image_pooling is not None else []
        branches.append(self.aspp0(x))
        branches += [branch(x) for branch in self.aspp]
        return self.logits(self.dropout(self.concat_projection(torch.cat(branches, 1))))


class DeepLabV3(nn.Module):
    """Mobile DeepLabv3 (§6.3): MobileNetV2 to ``layer_18`` at output stride 16 or 8, the DeepLabv3 head, logits
    upsampled to the input size.

    ``forward(x)`` returns logits ``[N, num_classes, H, W]`` for an ``[N, 3, H, W]`` batch (any H, W >= 32).
    ``config`` is the backbone's :class:`MobileNetV2Config` (a checkpoint's ``model_config``: no classifier, the
    head's output stride), ``head_config`` the :class:`DeepLabConfig` as a plain dict (a checkpoint's ``head``),
    ``deeplab_config`` the same, typed. ``backbone`` has MobileNetV2's ``stem`` and ``blocks`` (so ``--freeze`` and
    classification weights apply to it) and ``feature_info`` (one map: 320 channels at the output stride); ``head``
    is the :class:`DeepLabHead`.

    Example:
        >>> model = DeepLabV3(MobileNetV2Config(width_mult=0.35), DeepLabConfig(num_classes=11)).eval()
        >>> model(torch.randn(1, 3, 96, 128)).shape
        torch.Size([1, 11, 96, 128])
    """

    def __init__(self, config: MobileNetV2Config | None = None, head: DeepLabConfig | None = None) -> None:
        super().__init__()
        head = head or DeepLabConfig()
        config = config or MobileNetV2Config()
        if config.stem_stride != 2:
            raise ConfigError(f"DeepLab needs the published stem stride 2 (its atrous rates assume it); got "
                              f"stem_stride {config.stem_stride}")  # fmt: skip
        # the backbone runs at the head's output stride, without classifier (a checkpoint stores exactly this)
        self.config = config = dataclasses.replace(config, num_classes=0, output_stride=head.output_stride)
        self.deeplab_config = head
        self.head_config = head.to_dict()
        taps = [t.name for t in feature_taps(config)]
        self.backbone = MobileNetV2Features(config, out_indices=(taps.index(FEATURE_TAP),))
        self.feature_info = self.backbone.feature_info
        bn = {"padding": config.padding, "bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}
        self.head = DeepLabHead(self.feature_info[0].num_chs, head, **bn)
        self.reset_head_parameters()

    def reset_head_parameters(self) -> None:
        """TF DeepLab's initialisation of the head: Xavier-uniform plain convs (slim's default), truncated normals
        for the separable ASPP convs (std 0.33 depthwise, 0.06 pointwise) and the logits (0.01, zero bias); BN 1/0."""
        for m in self.head.modules():
            if isinstance(m, ConvNormAct):
                nn.init.xavier_uniform_(m.conv.weight)
                nn.init.ones_(m.bn.weight)
                nn.init.zeros_(m.bn.bias)
        for branch in self.head.aspp:
            if isinstance(branch, nn.Sequential):
                _trunc_normal(branch[0].conv.weight, DEPTHWISE_INIT_STD)
                _trunc_normal(branch[1].conv.weight, POINTWISE_INIT_STD)
        _trunc_normal(self.head.logits.weight, LOGITS_INIT_STD)
        nn.init.zeros_(self.head.logits.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch → the ``layer_18`` map at the output stride."""
        return self.backbone(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _trunc_normal(t: torch.Tensor, std: float) -> None:
    # tf.truncated_normal_initializer: redraws beyond two standard deviations
    nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)


def feature_size(size: int, output_stride: int) -> int:
    """Side of the ``layer_18`` map for an input side ``size``: every stride-2 conv maps n to ceil(n / 2)."""
    return math.ceil(size / output_stride)
