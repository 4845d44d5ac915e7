"""MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler et al., CVPR 2018, arXiv:1801.04381).

The paper's Table 2 appears once, as data (``TABLE2``). Everything else — the block list, stage boundaries, the
feature taps, output-stride dilation and the converters' key maps — is derived from it by :func:`block_plan`.

Module names are semantic and stable: ``stem``, ``blocks.{stage}.{index}.{expand,dw,project}``, ``head``,
``pool``, ``dropout``, ``classifier``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from mnv2.data.preprocessing import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from mnv2.errors import ConfigError
from mnv2.models.layers import BN_EPS_TORCH, BN_MOMENTUM_TORCH, ConvNormAct, check_padding_mode, make_divisible
from mnv2.typed import strict_from_dict

# Table 2 of the paper, bottleneck rows: expansion t, output channels c, repeats n, stride s of the first repeat.
# fmt: off
TABLE2: tuple[tuple[int, int, int, int], ...] = (
    # t,   c,  n, s
    (1,   16, 1, 1),
    (6,   24, 2, 2),
    (6,   32, 3, 2),
    (6,   64, 4, 2),
    (6,   96, 3, 1),
    (6,  160, 3, 2),
    (6,  320, 1, 1),
)
# fmt: on
STEM_CHANNELS = 32  # Table 2, first row: conv2d 3x3, 32 filters, stride 2
HEAD_CHANNELS = 1280  # Table 2: conv2d 1x1 to 1280 before the pool
OUTPUT_STRIDES = (8, 16, 32)
OUTPUTS = ("logits", "softmax")
# The one vocabulary for what a model returns, used by exported files' metadata, engines and predict.
OUTPUT_KINDS = {"logits": "logits", "softmax": "probabilities"}


@dataclass(frozen=True)
class MobileNetV2Config:
    """Architecture arguments of a MobileNetV2. Saved with every checkpoint; enough to rebuild the model.

    Attributes:
        width_mult: width multiplier α (§4); channels round to multiples of ``round_nearest``.
        num_classes: classifier outputs; 1001 for TF-slim/Keras checkpoints (index 0 = background); 0 for none.
        in_chans: input channels.
        dropout: dropout before the classifier (the paper gives no rate; 0.2 as torchvision and TF-slim).
        padding: ``"torch"`` (symmetric) or ``"tf"`` (TF "SAME", needed for exact parity with TF/Keras weights).
        bn_eps: BatchNorm epsilon (1e-5 PyTorch, 1e-3 TF; see ``mnv2.models.layers``).
        bn_momentum: BatchNorm momentum in PyTorch semantics (use ``tf_decay_to_torch_momentum`` for TF decays).
        output_stride: 32 as published; 16 or 8 trade the last strides for dilation (§6.3, DeepLabv3).
        round_nearest: channel divisor.
        stem_stride: 2 as published; 1 keeps more resolution for small inputs (e.g. 28-32 px images).
        output: ``"logits"`` (default) or ``"softmax"`` (probabilities; e.g. an imported Keras head that ends in
            softmax, so the model reproduces its source's outputs).
    """

    width_mult: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    dropout: float = 0.2
    padding: str = "torch"
    bn_eps: float = BN_EPS_TORCH
    bn_momentum: float = BN_MOMENTUM_TORCH
    output_stride: int = 32
    round_nearest: int = 8
    stem_stride: int = 2
    output: str = "logits"

    def __post_init__(self) -> None:
        if not (isinstance(self.width_mult, (int, float)) and math.isfinite(self.width_mult) and self.width_mult > 0):
            raise ConfigError(f"width multiplier must be a positive number, got {self.width_mult!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        if not isinstance(self.in_chans, int) or self.in_chans < 1:
            raise ConfigError(f"in_chans must be an integer >= 1, got {self.in_chans!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        check_padding_mode(self.padding)
        if not self.bn_eps > 0:
            raise ConfigError(f"bn_eps must be > 0, got {self.bn_eps!r}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ConfigError(f"bn_momentum (PyTorch semantics) must be in [0, 1], got {self.bn_momentum!r}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride!r}")
        if not isinstance(self.round_nearest, int) or self.round_nearest < 1:
            raise ConfigError(f"round_nearest must be an integer >= 1, got {self.round_nearest!r}")
        if self.stem_stride not in (1, 2):
            raise ConfigError(f"stem_stride must be 1 or 2, got {self.stem_stride!r}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"output must be one of {OUTPUTS}, got {self.output!r}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "model config") -> MobileNetV2Config:
        """Build from a dict (e.g. checkpoint metadata); unknown keys raise a ConfigError naming them and ``source``."""
        return strict_from_dict(cls, values, source)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def output_kind(self) -> str:
        """``"logits"`` or ``"probabilities"``: what the model returns, as exported files and engines name it."""
        return OUTPUT_KINDS[self.output]

    @property
    def returns_probabilities(self) -> bool:
        return self.output_kind == "probabilities"

    def channels(self, c: int) -> int:
        return make_divisible(c * self.width_mult, self.round_nearest)

    @property
    def stem_channels(self) -> int:
        return self.channels(STEM_CHANNELS)

    @property
    def head_channels(self) -> int:
        # §4: "for multipliers less than one, we apply width multiplier to all layers except the very last
        # convolutional layer"; above one it grows (TF-slim, torchvision, Keras all agree).
        return make_divisible(HEAD_CHANNELS * max(1.0, self.width_mult), self.round_nearest)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted residual block, derived from a Table 2 row."""

    stage: int
    index: int  # position within the stage
    in_channels: int
    hidden_channels: int
    out_channels: int
    expand_ratio: int
    stride: int
    dilation: int
    in_reduction: int  # input stride w.r.t. the image
    out_reduction: int
    nominal_out_reduction: int  # out_reduction at output_stride 32; stable names for taps

    @property
    def name(self) -> str:
        return f"blocks.{self.stage}.{self.index}"

    @property
    def use_residual(self) -> bool:
        # §3.3 / Fig. 3: shortcuts join the bottlenecks, only where shapes agree.
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def has_expand(self) -> bool:
        return self.expand_ratio != 1  # Table 2 row t=1: no 1x1 expansion at all


def block_plan(config: MobileNetV2Config) -> list[BlockSpec]:
    """Expand Table 2 into the list of blocks for ``config`` (width, output stride, stem stride)."""
    plan = []
    in_ch = config.stem_channels
    reduction = nominal = config.stem_stride
    dilation = 1
    for stage, (t, c, n, s) in enumerate(TABLE2):
        out_ch = config.channels(c)
        for index in range(n):
            stride = s if index == 0 else 1  # Table 2 caption: the first layer of each sequence has stride s
            layer_dilation = dilation
            if stride > 1 and reduction * stride > config.output_stride:
                # §6.3: past the output stride, trade stride for atrous rate. As TF-slim's mobilenet.py, the block
                # that would have strided keeps the previous rate; the blocks after it use the new one.
                dilation *= stride
                stride = 1
            in_red = reduction
            reduction *= stride
            nominal *= s if index == 0 else 1
            hidden = round(in_ch * t)  # torchvision: int(round(inp * t))
            plan.append(
                BlockSpec(stage, index, in_ch, hidden, out_ch, t, stride, layer_dilation, in_red, reduction, nominal)
            )
            in_ch = out_ch
    return plan


@dataclass(frozen=True)
class FeatureInfo:
    """A feature map the backbone can return (timm-style ``feature_info``).

    ``kind`` is ``"stage"`` (a stage's output bottleneck), ``"expansion"`` (the expanded, activated tensor inside a
    stage's first block: SSDLite §6.2 attaches to layer 15's expansion) or ``"head"`` (the final 1x1 conv).
    """

    name: str
    module: str
    num_chs: int
    reduction: int
    kind: str
    stage: int


EXPANSION_TAP_MIN_REDUCTION = 16  # taps inside the first block of each stage that ends at stride 16 or 32


def feature_taps(config: MobileNetV2Config) -> list[FeatureInfo]:
    """All feature taps, in execution order, derived from the block plan."""
    plan = block_plan(config)
    taps = []
    for stage in range(len(TABLE2)):
        blocks = [b for b in plan if b.stage == stage]
        first, last = blocks[0], blocks[-1]
        if first.has_expand and last.nominal_out_reduction >= EXPANSION_TAP_MIN_REDUCTION:
            taps.append(
                FeatureInfo(
                    f"stage{stage}.expansion",
                    f"{first.name}.expand",
                    first.hidden_channels,
                    first.in_reduction,
                    "expansion",
                    stage,
                )
            )
        taps.append(
            FeatureInfo(f"stage{stage}", f"blocks.{stage}", last.out_channels, last.out_reduction, "stage", stage)
        )
    taps.append(FeatureInfo("head", "head", config.head_channels, plan[-1].out_reduction, "head", len(TABLE2)))
    return taps


def default_out_indices(taps: list[FeatureInfo]) -> tuple[int, ...]:
    """The last stage output at each nominal stride (2, 4, 8, 16, 32): stages 0, 1, 2, 4, 6."""
    stage_taps = [i for i, t in enumerate(taps) if t.kind == "stage"]
    last_stage = len(TABLE2) - 1
    keep = []
    for i in stage_taps:
        stage = taps[i].stage
        nxt = TABLE2[stage + 1][3] if stage < last_stage else 2
        if nxt > 1:  # the next stage downsamples (or this is the last): this is the last map at its stride
            keep.append(i)
    return tuple(keep)


class InvertedResidual(nn.Module):
    """Bottleneck residual block (Table 1): 1x1 expand + ReLU6 → 3x3 depthwise + ReLU6 → linear 1x1 project."""

    def __init__(self, spec: BlockSpec, config: MobileNetV2Config) -> None:
        super().__init__()
        bn = {"padding": config.padding, "bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}
        self.use_residual = spec.use_residual
        hidden = spec.hidden_channels
        self.expand = ConvNormAct(spec.in_channels, hidden, 1, **bn) if spec.has_expand else None
        self.dw = ConvNormAct(hidden, hidden, 3, spec.stride, spec.dilation, groups=hidden, **bn)
        self.project = ConvNormAct(hidden, spec.out_channels, 1, act=False, **bn)  # linear bottleneck (§3.2)

    def forward_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, expansion)`` where expansion is the expanded, ReLU6-activated tensor."""
        e = self.expand(x) if self.expand is not None else x
        out = self.project(self.dw(e))
        return (x + out if self.use_residual else out), e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.dw(out))
        return x + out if self.use_residual else out


def check_input_size(x: torch.Tensor) -> None:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if x.dim() != 4:
        raise ConfigError(f"expected an NCHW batch, got a tensor of shape {tuple(x.shape)}")
    check_resolution(tuple(x.shape[-2:]))


def check_resolution(resolution: int | tuple[int, int]) -> tuple[int, int]:
    """Validate an input resolution (an int or (H, W)); return it as (H, W)."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    if not all(isinstance(v, int) for v in (h, w)) or h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise ConfigError(
            f"resolution {h}x{w} is too small: MobileNetV2 needs at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels"
        )
    if h > MAX_INPUT_SIZE or w > MAX_INPUT_SIZE:
        raise ConfigError(f"resolution {h}x{w} is too large: at most {MAX_INPUT_SIZE}x{MAX_INPUT_SIZE} pixels")
    return h, w


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier/backbone built from :class:`MobileNetV2Config` (returns logits).

    Example:
        >>> model = MobileNetV2(MobileNetV2Config(width_mult=0.5, num_classes=10))
        >>> model(torch.randn(2, 3, 96, 96)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: MobileNetV2Config | None = None) -> None:
        super().__init__()
        self.config = config = config or MobileNetV2Config()
        bn = {"padding": config.padding, "bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}
        self.plan = block_plan(config)
        self.feature_info = feature_taps(config)
        self.stem = ConvNormAct(config.in_chans, config.stem_channels, 3, config.stem_stride, **bn)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[InvertedResidual(b, config) for b in self.plan if b.stage == stage])
            for stage in range(len(TABLE2))
        )
        self.head = ConvNormAct(self.plan[-1].out_channels, config.head_channels, 1, **bn)
        self.num_features = config.head_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation: conv kaiming-normal (fan_out), BN 1/0, linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch → the final 1x1 conv's feature map (``num_features`` channels)."""
        check_input_size(x)
        x = self.stem(x)
        for stage in self.blocks:
            x = stage(x)
        return self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map → logits (or the pooled features with ``pre_logits=True``)."""
        x = torch.flatten(self.pool(x), 1)
        if pre_logits:
            return x
        x = self.classifier(self.dropout(x))
        return x.softmax(dim=-1) if self.config.returns_probabilities else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: tuple[int, ...]) -> list[torch.Tensor]:
        """Return the feature maps ``feature_info[i]`` for ``i`` in ``indices``, computing no more than needed."""
        return run_taps(self.stem, self.blocks, self.head, self.feature_info, x, indices)


def run_taps(
    stem: nn.Module,
    blocks: nn.ModuleList,
    head: nn.Module | None,
    taps: list[FeatureInfo],
    x: torch.Tensor,
    indices: tuple[int, ...],
) -> list[torch.Tensor]:
    check_input_size(x)
    wanted = {taps[i].name for i in indices}
    found: dict[str, torch.Tensor] = {}
    last_stage = max(taps[i].stage for i in indices)
    x = stem(x)
    for s, stage in enumerate(blocks):
        if s > last_stage:
            break
        for i, block in enumerate(stage):
            if i == 0 and f"stage{s}.expansion" in wanted:
                x, found[f"stage{s}.expansion"] = block.forward_expansion(x)
            else:
                x = block(x)
        found[f"stage{s}"] = x
    if "head" in wanted:
        found["head"] = head(x)
    return [found[taps[i].name] for i in indices]


class MobileNetV2Features(nn.Module):
    """Backbone returning a list of feature maps (``features_only``), sharing module names with the classifier.

    ``feature_info`` lists the returned maps only; the state dict is the classifier's minus ``classifier`` (and
    ``head`` when the head is not tapped), so classifier checkpoints load with ``strict=False``.
    """

    def __init__(self, config: MobileNetV2Config, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        full = MobileNetV2(dataclasses.replace(config, num_classes=0))
        taps = full.feature_info
        out_indices = default_out_indices(taps) if out_indices is None else tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not -len(taps) <= i < len(taps) for i in out_indices):
            names = ", ".join(f"{i}={t.name}" for i, t in enumerate(taps))
            raise ConfigError(f"out_indices {out_indices!r} must be non-empty indices into the feature taps: {names}")
        self.config = config
        self.out_indices = tuple(i % len(taps) for i in out_indices)
        self.all_feature_info = taps
        self.feature_info = [taps[i] for i in self.out_indices]
        self.stem, self.blocks = full.stem, full.blocks
        if any(taps[i].kind == "head" for i in self.out_indices):
            self.head = full.head

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_taps(self.stem, self.blocks, getattr(self, "head", None), self.all_feature_info, x, self.out_indices)
