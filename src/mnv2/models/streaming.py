"""Memory-efficient inference (paper §5.1): every inverted residual computed slice by slice of its expansion.

§5.1: a bottleneck block F(x) = [A ∘ N ∘ B] x, with B the 1x1 expansion, N = ReLU6 ∘ depthwise ∘ ReLU6 (per
channel) and A the linear 1x1 projection, splits along the inner (expanded) channels into
F(x) = Σ_i (A_i ∘ N ∘ B_i)(x). Accumulating the sum keeps only one slice of n/t inner channels alive, so a block
needs |input| + |output| + one slice instead of the whole t·k-channel expansion. :func:`streaming` wraps a
:class:`~mnv2.models.MobileNetV2` (or ``features_only`` backbone) so that its forward runs this way.

Beyond the blocks:

* the stem is fused with the first block (Table 2: t = 1, so that block is only depthwise + projection): the stem's
  3x3 conv is per output channel, so it plays the role of B and its 32-channel output — the largest tensor of the
  dense network — is never whole (Table 3 caption: "For the first layer of MobileNetV2 ... we can employ the trick
  described in Section 5");
* the final 1x1 conv (1280 channels) is computed in slices that are average-pooled at once, so the 7x7x1280 map
  is never whole either (Table 3's 1x1 row). ``forward_features`` and a tapped head return the map, so they
  materialise it.

What bounds peak memory in PyTorch, and what this module does about it:

* no autograd: forwards run under :func:`torch.inference_mode`;
* everything runs channels-last (NHWC; the input is converted once unless it already is): a 1x1 conv is then a
  (pixels x channels) matrix product (``torch.mm``) with no copy, and oneDNN's depthwise and stem convolutions
  take and return NHWC without reorder copies — in NCHW, oneDNN copies each depthwise input and output into its
  blocked layout, which measured as 2-3x the slice;
* the projection accumulates in place into one preallocated output (``addmm_``, ``beta=0`` on the first slice):
  no output-sized temporary per slice;
* BatchNorm is folded for inference into per-channel ``scale``/``shift`` *vectors*
  (:func:`mnv2.models.fold.bn_scale_shift`), computed at each forward from the running statistics (never stale);
  no whole weight tensor is ever copied. Per slice, the scale goes into a
  temporary copy of the slice's weights (the shift becomes the bias) wherever that copy is tiny next to the
  slice's activations — the depthwise and the stem (9 or 27 values per channel), and the 1x1 expansions of the
  high-resolution blocks (pixels >= 16 x input channels) — which saves two passes over each slice. Elsewhere it
  is applied in place on the activations: a folded copy of the head's 1280x320 weight alone would be larger
  than most activations streaming saves. ReLU6 is an in-place clamp;
* temporaries are dropped as soon as the next op has consumed them (``del``);
* a one-channel slice (``splits="full"``) runs its depthwise as 9 strided in-place multiply-adds: oneDNN treats a
  1-channel grouped conv as an ordinary conv and allocates a 9x im2col buffer;
* TF "SAME" padding (``padding="tf"``) is applied by the layers' own `ConvNormAct.pad`: once to
  the (3-channel) image for the stem, and to each expansion slice before a stride-2 depthwise (a slice-sized
  copy; padding the narrow block input instead would cost a copy of the whole input, the largest live tensor of
  those blocks, and the border would need re-zeroing after BN+ReLU6 since ReLU6(shift) is not zero).

What remains above the §5.1 bound is the caller's input: an eager call holds its argument until it returns, where
§5.1's graph frees the image after the first op (``MemoryReport.streamed_max_held_input`` accounts for it).

Weights are the wrapped model's own parameters (the wrapper holds the model; nothing is copied). The result
equals the dense eval-mode model up to float summation order (≤ 1e-5 absolute in fp32, ``tests/test_streaming.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from mnv2.errors import ConfigError
from mnv2.models.fold import bn_scale_shift
from mnv2.models.layers import ConvNormAct
from mnv2.models.mobilenetv2 import MobileNetV2, MobileNetV2Features, check_input_size

SPLITS_FULL = "full"  # one inner channel per slice: "Using n = t we end up having to keep only a single channel" (§5.1)
RELU6_MAX = 6.0
# A 1x1 layer's BN is folded into a per-slice weight copy only when its activations per slice are at least this many
# times larger than that copy (pixels >= 16 x input channels); see _Inner.
FOLD_WEIGHTS_RATIO = 16


def check_splits(splits: int | str) -> int | str:
    """Validate a split count: an integer >= 1 (slices per layer) or ``"full"`` (one channel per slice)."""
    if splits == SPLITS_FULL:
        return splits
    if isinstance(splits, str) and splits.isdigit():
        splits = int(splits)
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ConfigError(f"splits must be an integer >= 1 or {SPLITS_FULL!r}, got {splits!r}")
    return splits


def slice_width(channels: int, splits: int | str) -> int:
    """Channels per slice when ``channels`` inner channels are cut into ``splits`` slices (§5.1: n/t, rounded up)."""
    if splits == SPLITS_FULL:
        return 1
    return math.ceil(channels / min(int(splits), channels))


CL = torch.channels_last


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A channels-last NCHW tensor as its (N*H*W, C) matrix of pixels (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_rows(rows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_rows`: an (N*H*W, C) matrix as a channels-last NCHW tensor (a view)."""
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def _depthwise_single(
    y: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    """Depthwise conv of a one-channel slice as k*k strided in-place multiply-adds over views (no temporaries).

    oneDNN runs a 1-channel "depthwise" conv as an ordinary conv through an im2col buffer of k*k times the
    slice, which would defeat ``splits="full"``; every other slice width takes oneDNN's depthwise kernel.
    """
    n, _, h, w = y.shape
    kh, kw = weight.shape[-2:]
    out_hw = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
              zip((h, w), padding, dilation, (kh, kw), stride)]  # fmt: skip
    z = y.new_zeros(n, 1, *out_hw)

    def span(i: int, axis: int) -> tuple[slice, slice] | None:
        # outputs o whose input row o*s + i*d - p lies inside the slice
        size, p, d, s, o_size = (h, w)[axis], padding[axis], dilation[axis], stride[axis], out_hw[axis]
        lo, hi = max(0, -((i * d - p) // s)), min(o_size - 1, (size - 1 + p - i * d) // s)
        if hi < lo:
            return None
        start = lo * s + i * d - p
        return slice(lo, hi + 1), slice(start, start + (hi - lo) * s + 1, s)

    for i in range(kh):
        rows = span(i, 0)
        for j in range(kw):
            cols = span(j, 1)
            if rows is not None and cols is not None:
                z[:, :, rows[0], cols[0]].addcmul_(y[:, :, rows[1], cols[1]], weight[0, 0, i, j])
    return z


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)


class _Inner:
    """The layer that produces a block's inner tensor (B in §5.1), cut into slices of ``width`` output channels.

    Either the block's 1x1 expansion, the stem (fused into the t = 1 first block), or nothing (the inner tensor
    is the block input itself, already in memory: slices are views). Per-slice views of the weights and BN
    vectors are made once per layer (``split``), not per slice: with narrow layers, op dispatch is the cost.
    """

    def __init__(self, layer: ConvNormAct | None, x: torch.Tensor, width: int) -> None:
        self.layer = layer
        self.x = x
        if layer is None:
            self.parts = x.split(width, dim=1)
            return
        conv = layer.conv
        self.pointwise = _is_pointwise(conv)
        scale, shift = bn_scale_shift(layer.bn)
        self.shift = shift.split(width)
        self.act = not isinstance(layer.act, nn.Identity)
        if self.pointwise:
            self.x_rows = _rows(x)
            self.weight_t = conv.weight.view(conv.out_channels, -1).t().split(width, dim=1)  # (k, c) views
            self.scale = scale.split(width)
            # Fold BN into a temporary copy of the slice's weights (k x c) only where that copy is tiny next to the
            # slice's activations (pixels x c): in the early, high-resolution blocks, where the two passes over the
            # activations it saves cost most. Elsewhere (e.g. the head: 320 x c weights for 49 pixels) BN stays on
            # the activations, so no weight copy ever outweighs the memory the slicing saves.
            self.fold = conv.in_channels * FOLD_WEIGHTS_RATIO <= self.x_rows.shape[0]
        else:  # TF SAME: pad the layer's input once (the 3-channel image for the stem), not once per slice
            self.xp = layer.pad(x)
            self.weight = conv.weight.split(width)
            self.scale = scale.view(-1, 1, 1, 1).split(width)

    def __len__(self) -> int:
        return len(self.parts) if self.layer is None else len(self.shift)

    def slice(self, i: int) -> torch.Tensor:
        if self.layer is None:
            return self.parts[i]
        if self.pointwise:  # a 1x1 conv is a matrix product over pixels: (N*H*W, k) @ (k, c)
            if self.fold:
                rows = torch.addmm(self.shift[i], self.x_rows, self.weight_t[i] * self.scale[i])
            else:
                rows = torch.mm(self.x_rows, self.weight_t[i])
                rows.mul_(self.scale[i]).add_(self.shift[i])  # BN on the activations: no copy of a weight slice
            if self.act:
                rows.clamp_(0.0, RELU6_MAX)
            n, _, h, w = self.x.shape
            return _from_rows(rows, n, h, w)
        # the stem: its BN folds into the slice's weights (c x in_chans x 3 x 3, smaller than its output by far);
        # a channels-last input gives a channels-last output, without oneDNN reorder copies
        conv = self.layer.conv
        y = F.conv2d(self.xp, self.weight[i] * self.scale[i], self.shift[i], conv.stride, conv.padding, conv.dilation)
        return y.clamp_(0.0, RELU6_MAX) if self.act else y


def conv_bn_act(layer: ConvNormAct, x: torch.Tensor) -> torch.Tensor:
    """A ConvNormAct evaluated whole, with BN folded and applied in place (for tensors that must exist whole)."""
    return _Inner(layer, x, layer.conv.out_channels).slice(0)


def streamed_block(
    x: torch.Tensor,
    inner_layer: ConvNormAct | None,
    dw: ConvNormAct,
    project: ConvNormAct,
    residual: bool,
    splits: int | str,
    *,
    tap_expansion: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One inverted residual as Σ_i (A_i ∘ N ∘ B_i)(x) (+ x): returns ``(output, expansion or None)``.

    ``x`` is channels-last. ``inner_layer`` is B (the 1x1 expansion, or the stem when fused), ``None`` when the
    block has no expansion. With ``tap_expansion`` the expansion is materialised (a tapped tensor exists whole by
    definition) and the depthwise and projection still run slice by slice over views of it.
    """
    n = dw.conv.in_channels
    width = slice_width(n, splits)
    expansion = None
    if tap_expansion:
        expansion = conv_bn_act(inner_layer, x) if inner_layer is not None else x
        inner = _Inner(None, expansion, width)
    else:
        inner = _Inner(inner_layer, x, width)
    conv = dw.conv
    dw_scale, dw_shift = bn_scale_shift(dw.bn)
    dw_w, dw_scale, dw_shift = conv.weight.split(width), dw_scale.view(-1, 1, 1, 1).split(width), dw_shift.split(width)
    proj_t = project.conv.weight.view(project.conv.out_channels, n).t().split(width)  # (c, k') views
    proj_scale, proj_shift = bn_scale_shift(project.bn)
    out = out_rows = None
    for i in range(len(inner)):
        y = dw.pad(inner.slice(i))  # B_i, then TF SAME padding of this slice only when the layer needs it
        # N: BN folded into the slice's depthwise weights (c x 3 x 3) and bias; a channels-last depthwise runs in
        # oneDNN's native layout (no reorder copies of the slice)
        weight = dw_w[i] * dw_scale[i]
        if y.shape[1] == 1:
            z = _depthwise_single(y, weight, conv.stride, conv.padding, conv.dilation).add_(dw_shift[i])
        else:
            z = F.conv2d(y, weight, dw_shift[i], conv.stride, conv.padding, conv.dilation, y.shape[1])
        del y  # the expansion slice is dead once depthwised
        z_rows = _rows(z).clamp_(0.0, RELU6_MAX)
        if out is None:
            out_rows = z.new_empty(z_rows.shape[0], project.conv.out_channels)
            out = _from_rows(out_rows, z.shape[0], z.shape[2], z.shape[3])
            # A_1: beta = 0 ignores the uninitialised output (torch.addmm docs)
            out_rows.addmm_(z_rows, proj_t[i], beta=0.0)
        else:
            out_rows.addmm_(z_rows, proj_t[i])  # A_i, accumulated in place
        del z, z_rows
    out_rows.mul_(proj_scale).add_(proj_shift)  # linear bottleneck: BN, no activation (§3.2)
    if residual:
        out_rows.add_(_rows(x))
    return out, expansion


def streamed_head_pool(head: ConvNormAct, x: torch.Tensor, splits: int | str) -> torch.Tensor:
    """Final 1x1 conv + ReLU6 + global average pool, one slice of output channels at a time: (N, C) features."""
    n = x.shape[0]
    pooled = x.new_empty(n, head.conv.out_channels)
    width = slice_width(head.conv.out_channels, splits)
    inner = _Inner(head, x, width)
    for i, part in enumerate(pooled.split(width, dim=1)):
        y = inner.slice(i)
        part.copy_(_rows(y).view(n, -1, y.shape[1]).mean(dim=1))
        del y
    return pooled


class StreamingMobileNetV2(nn.Module):
    """Inference wrapper running a MobileNetV2 (classifier or ``features_only``) the §5.1 way.

    Holds the wrapped model as ``self.model`` (shared parameters: ``.to()``, loading weights or fine-tuning the
    model are seen by the wrapper). Always computes the eval-mode function (running BN statistics, no dropout)
    under :func:`torch.inference_mode`.

    Args:
        model: a :class:`~mnv2.models.MobileNetV2` or :class:`~mnv2.models.MobileNetV2Features`.
        splits: slices per layer (§5.1's t: the inner tensor is cut into ``splits`` slices of n/t channels), or
            ``"full"`` for one channel per slice (the paper's n = t limit). 1 = the whole expansion at once, which
            still avoids BN copies and output-sized temporaries.
    """

    def __init__(self, model: MobileNetV2 | MobileNetV2Features, splits: int | str = 4) -> None:
        super().__init__()
        if not isinstance(model, (MobileNetV2, MobileNetV2Features)):
            raise ConfigError(f"streaming() needs an mnv2 MobileNetV2 model, got {type(model).__name__}")
        self.model = model
        self.splits = check_splits(splits)
        self.features_only = isinstance(model, MobileNetV2Features)
        self.config = model.config

    def extra_repr(self) -> str:
        return f"splits={self.splits!r}"

    def _body(self, x: torch.Tensor, wanted: set[str], last_stage: int) -> tuple[torch.Tensor, dict]:
        """Stem and blocks up to ``last_stage``; returns the last bottleneck and the tapped tensors found."""
        check_input_size(x)
        # Channels-last throughout (a copy of the image unless it already is): 1x1 convs become (pixels x channels)
        # matrix products and oneDNN's depthwise and stem convs need no reorder copies.
        x = x.contiguous(memory_format=CL)
        model, splits = self.model, self.splits
        found: dict[str, torch.Tensor] = {}
        first_block = model.blocks[0][0]
        fuse_stem = first_block.expand is None  # Table 2: t = 1, so the stem is the first block's B
        if not fuse_stem:
            with record_function("stem"):
                x = conv_bn_act(model.stem, x)
        for s, stage in enumerate(model.blocks):
            if s > last_stage:
                break
            for i, block in enumerate(stage):
                tap = i == 0 and f"stage{s}.expansion" in wanted
                inner_layer = model.stem if (s == 0 and i == 0 and fuse_stem) else block.expand
                with record_function(f"blocks.{s}.{i}"):
                    x, e = streamed_block(
                        x, inner_layer, block.dw, block.project, block.use_residual, splits, tap_expansion=tap
                    )
                if tap:
                    found[f"stage{s}.expansion"] = e
                del e
            if f"stage{s}" in wanted:  # keep only what is returned: a kept tensor is live memory
                found[f"stage{s}"] = x
        return x, found

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (classifier), or the list of tapped maps (``features_only``), as the wrapped model's forward."""
        if self.features_only:
            return self._forward_taps(x)
        model = self.model
        x, _ = self._body(x, set(), len(model.blocks) - 1)
        with record_function("head"):
            pooled = streamed_head_pool(model.head, x, self.splits)
        del x
        with record_function("classifier"):
            out = model.classifier(pooled)  # dropout is the identity at inference
            return out.softmax(dim=-1) if model.config.returns_probabilities else out

    @torch.inference_mode()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final 1x1 conv's map (returned whole, so materialised), as ``MobileNetV2.forward_features``."""
        if self.features_only:
            raise ConfigError("forward_features is for classifier models; call the features_only wrapper itself")
        x, _ = self._body(x, set(), len(self.model.blocks) - 1)
        return conv_bn_act(self.model.head, x)

    def _forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        taps, indices = model.all_feature_info, model.out_indices
        wanted = {taps[i].name for i in indices}
        x, found = self._body(x, wanted, max(taps[i].stage for i in indices))
        if "head" in wanted:
            found["head"] = conv_bn_act(model.head, x)
        return [found[taps[i].name] for i in indices]


def streaming(model: MobileNetV2 | MobileNetV2Features, splits: int | str = 4) -> StreamingMobileNetV2:
    """Wrap ``model`` for memory-efficient inference (paper §5.1); see :class:`StreamingMobileNetV2`.

    Example:
        >>> import torch, mnv2
        >>> model = mnv2.create_model("mobilenetv2_100").eval()
        >>> lean = mnv2.streaming(model, splits=4)
        >>> x = torch.randn(1, 3, 224, 224)
        >>> torch.allclose(lean(x), model(x), atol=1e-5)
        True
    """
    return StreamingMobileNetV2(model, splits)
