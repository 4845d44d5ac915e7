"""SSDLite on MobileNetV2 (paper §6.2), as the TF Object Detection API's ``ssdlite_mobilenet_v2_coco.config`` and
``ssd_mobilenet_v2_feature_extractor.py`` define it.

- Feature maps: ``layer_15/expansion_output`` (our ``stage5.expansion`` tap: 576 channels at stride 16 for width
  1.0) and ``layer_19`` (the 1280-channel 1x1 conv, stride 32), then four extra layers of depth 512, 256, 256, 128,
  each 1x1 conv to depth/2 → 3x3 depthwise stride 2 → 1x1 conv to depth, all with BN and ReLU6
  (``feature_map_generators.multi_resolution_feature_maps`` with ``insert_1x1_conv=True, use_depthwise=True``).
- Predictors ("SSDLite", §6.2: every regular conv of the SSD prediction layers replaced by a separable conv): on each
  map, for boxes and for classes separately, a 3x3 depthwise conv + BN + ReLU6 → a 1x1 conv with bias
  (``ConvolutionalBoxPredictor`` with ``use_depthwise: true``).
- Anchors: ``ssd_anchor_generator`` with 6 layers, scales 0.2 … 0.95, aspect ratios 1, 2, 1/2, 3, 1/3 plus the
  interpolated scale sqrt(s_i s_i+1), the lowest layer reduced to (0.1, 1), (0.2, 2), (0.2, 1/2)
  (``multiple_grid_anchor_generator.create_ssd_anchors``).
- Box coding: ``faster_rcnn_box_coder`` with scales (10, 10, 5, 5); codes are ``(ty, tx, th, tw)`` in TF's order.

Conventions: anchors are normalised ``(cy, cx, h, w)`` (TF's box coder works on centres and sizes); every other box
(targets, decoded detections) is normalised corners ``(x1, y1, x2, y2)`` in [0, 1] of the network input, which for
a plain resize are also fractions of the original image.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from mnv2 import ops
from mnv2.errors import ConfigError
from mnv2.models.layers import ConvNormAct
from mnv2.models.mobilenetv2 import MobileNetV2Config, MobileNetV2Features, feature_taps
from mnv2.models.ssdlite_config import SCORE_FNS, SSDLiteConfig  # noqa: F401 (SCORE_FNS: re-exported)

BOX_CODER_EPS = 1e-8  # faster_rcnn_box_coder.py: EPSILON added to every height and width before the log
# Decoded log-sizes are clamped here before exp (log(1000/16), as torchvision's detection box coder): TF does not
# clamp, but a wild prediction early in training must give a huge finite box, never inf.
MAX_LOG_SIZE = math.log(1000.0 / 16)
FEATURE_TAPS = ("stage5.expansion", "head")  # TF: 'layer_15/expansion_output', 'layer_19'


# ----------------------------------------------------------------------------------------------- anchors
def feature_map_sizes(height: int, width: int, num_layers: int = 6) -> list[tuple[int, int]]:
    """Spatial sizes of the six maps for an input of ``height`` x ``width`` (strides 16, 32, 64, ... 512).

    Every stride-2 conv (3x3, pad 1, or TF "SAME") maps n to ceil(n / 2), so the map at stride 2^k is
    ceil(n / 2^k) in both padding modes.
    """
    return [(-(-height // 2**k), -(-width // 2**k)) for k in range(4, 4 + num_layers)]


def generate_anchors(
    sizes: list[tuple[int, int]], head: SSDLiteConfig, image_size: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """Anchors ``[A, 4]`` as normalised ``(cy, cx, h, w)``, in the order of the predictors' outputs.

    TF ``MultipleGridAnchorGenerator._generate``: strides 1/grid, offsets half a stride; on a non-square image the
    base anchor is scaled by min(H, W)/H, min(H, W)/W so that anchors stay square in pixels. Order within a layer:
    row, column, then the layer's box specs (``grid_anchor_generator.tile_anchors``), which is how a conv's
    ``[N, H, W, A*k]`` output flattens.
    """
    specs = head.box_specs()
    if len(sizes) != len(specs):
        raise ConfigError(f"{len(sizes)} feature maps for {len(specs)} anchor layers")
    im_h, im_w = image_size
    base_h, base_w = min(im_h, im_w) / im_h, min(im_h, im_w) / im_w
    out = []
    for (gh, gw), layer in zip(sizes, specs):
        scales = torch.tensor([s for s, _ in layer], dtype=torch.float64)
        ratios = torch.tensor([r for _, r in layer], dtype=torch.float64).sqrt()
        hs, ws = scales / ratios * base_h, scales * ratios * base_w
        cy = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh
        cx = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw
        k = len(layer)
        grid = torch.stack(
            [
                cy.view(gh, 1, 1).expand(gh, gw, k),
                cx.view(1, gw, 1).expand(gh, gw, k),
                hs.view(1, 1, k).expand(gh, gw, k),
                ws.view(1, 1, k).expand(gh, gw, k),
            ],
            dim=-1,
        )
        out.append(grid.reshape(-1, 4))
    return torch.cat(out).float()


def num_anchors(height: int, width: int, head: SSDLiteConfig) -> int:
    """How many anchors (boxes per image) the model predicts at this input size."""
    sizes = feature_map_sizes(height, width, head.num_layers)
    return sum(h * w * k for (h, w), k in zip(sizes, head.anchors_per_location()))


@functools.lru_cache(maxsize=32)
def anchors_for_count(count: int, head: SSDLiteConfig) -> torch.Tensor:
    """The anchors of the square input whose model output has ``count`` anchors.

    The anchor count grows strictly with the input size, so it identifies the (square) size: this is how the loss,
    which sees only the model's outputs, recovers their anchors. Raises a ConfigError when no size fits.
    """
    size = 16  # smallest maps of size 1 at stride 16
    while num_anchors(size, size, head) < count:
        size += 16
    lo = size - 15 if size > 16 else 1
    for s in range(lo, size + 1):
        if num_anchors(s, s, head) == count:
            return generate_anchors(feature_map_sizes(s, s, head.num_layers), head, (s, s))
    raise ConfigError(f"{count} anchors do not match any square input size of this detection head")


def cxcywh_to_xyxy(anchors: torch.Tensor) -> torch.Tensor:
    """Anchors ``(cy, cx, h, w)`` → corners ``(x1, y1, x2, y2)``."""
    cy, cx, h, w = anchors.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# ----------------------------------------------------------------------------------------------- box coding
def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor, scales=(10.0, 10.0, 5.0, 5.0)) -> torch.Tensor:
    """Corners ``(x1, y1, x2, y2)`` → codes ``(ty, tx, th, tw)`` relative to ``anchors`` ``(cy, cx, h, w)``.

    ``faster_rcnn_box_coder.FasterRcnnBoxCoder._encode``: ``ty = (y - ya) / ha * 10``, ``th = log(h / ha) * 5``,
    with 1e-8 added to every height and width so a degenerate box stays finite.
    """
    ya, xa, ha, wa = anchors.unbind(-1)
    ha, wa = ha + BOX_CODER_EPS, wa + BOX_CODER_EPS
    x1, y1, x2, y2 = boxes.unbind(-1)
    h, w = (y2 - y1) + BOX_CODER_EPS, (x2 - x1) + BOX_CODER_EPS
    y, x = (y1 + y2) / 2, (x1 + x2) / 2
    sy, sx, sh, sw = scales
    return torch.stack([(y - ya) / ha * sy, (x - xa) / wa * sx, torch.log(h / ha) * sh, torch.log(w / wa) * sw], -1)


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor, scales=(10.0, 10.0, 5.0, 5.0)) -> torch.Tensor:
    """Codes ``(ty, tx, th, tw)`` → corners ``(x1, y1, x2, y2)``: the inverse of :func:`encode_boxes`."""
    ya, xa, ha, wa = anchors.unbind(-1)
    ha, wa = ha + BOX_CODER_EPS, wa + BOX_CODER_EPS
    ty, tx, th, tw = codes.unbind(-1)
    sy, sx, sh, sw = scales
    y, x = ty / sy * ha + ya, tx / sx * wa + xa
    h = torch.exp((th / sh).clamp(max=MAX_LOG_SIZE)) * ha - BOX_CODER_EPS
    w = torch.exp((tw / sw).clamp(max=MAX_LOG_SIZE)) * wa - BOX_CODER_EPS
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``[M, N]`` of corner boxes (0 where the union is empty, never NaN)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def match_anchors(gt_boxes: torch.Tensor, anchors_xyxy: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Index of the ground-truth box each anchor regresses to, ``-1`` for background: ``[A]`` long.

    ``argmax_matcher`` as the TF config sets it: an anchor matches its highest-IoU box when that IoU >= ``threshold``
    (0.5), else it is a negative; ``force_match_for_each_row``: every box also takes the anchor it overlaps most,
    whatever the IoU, so no object goes untrained (two boxes wanting one anchor: the lower index wins, as TF's
    argmax over the one-hot rows).
    """
    a = anchors_xyxy.shape[0]
    k = gt_boxes.shape[0]
    if k == 0:
        return torch.full((a,), -1, dtype=torch.long, device=anchors_xyxy.device)
    iou = box_iou(gt_boxes, anchors_xyxy)  # [k, A]
    best, best_gt = iou.max(dim=0)
    matches = torch.where(best >= threshold, best_gt, torch.full_like(best_gt, -1))
    forced = torch.full((a,), k, dtype=torch.long, device=matches.device)
    forced.scatter_reduce_(0, iou.argmax(dim=1), torch.arange(k, device=matches.device), reduce="amin")
    return torch.where(forced < k, forced, matches)


# ----------------------------------------------------------------------------------------------- model
def _truncated_normal_(weight: torch.Tensor, std: float = 0.03) -> None:
    # TF config initializer: truncated_normal_initializer(stddev=0.03), cut at two standard deviations.
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class SSDLite(nn.Module):
    """SSDLite-MobileNetV2 (§6.2): backbone taps at strides 16 and 32, four extra layers, six SSDLite predictors.

    ``forward(x)`` returns ``(box_regression [N, A, 4], class_logits [N, A, C + 1])``: box codes ``(ty, tx, th, tw)``
    relative to :meth:`anchors` and raw class scores with background at index 0. ``config`` is the backbone's
    :class:`MobileNetV2Config` (a checkpoint's ``model_config``), ``head_config`` the :class:`SSDLiteConfig` as a
    plain dict (a checkpoint's ``head``), ``ssd_config`` the same, typed. ``backbone`` has MobileNetV2's ``stem``,
    ``blocks`` and ``head`` (so ``--freeze`` and classification weights apply to it); ``extras``, ``box_heads`` and
    ``cls_heads`` are the detection layers.

    Example:
        >>> model = SSDLite(MobileNetV2Config(width_mult=0.35), SSDLiteConfig(num_classes=1)).eval()
        >>> [t.shape for t in model(torch.randn(1, 3, 300, 300))]
        [torch.Size([1, 1917, 4]), torch.Size([1, 1917, 2])]
    """

    def __init__(self, config: MobileNetV2Config, head: SSDLiteConfig | None = None) -> None:
        super().__init__()
        head = head or SSDLiteConfig()
        if config.output_stride != 32 or config.stem_stride != 2:
            raise ConfigError(
                "SSDLite needs the published strides (output_stride 32, stem_stride 2): its maps sit at strides "
                f"16 and 32; got output_stride {config.output_stride}, stem_stride {config.stem_stride}"
            )
        self.config = config = dataclasses.replace(config, num_classes=0)
        self.ssd_config = head  # typed; ``head`` would shadow MobileNetV2's head conv in code that walks modules
        self.head_config = head.to_dict()
        taps = [t.name for t in feature_taps(config)]
        self.backbone = MobileNetV2Features(config, out_indices=tuple(taps.index(name) for name in FEATURE_TAPS))
        bn = {"padding": config.padding, "bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}

        def depth(d: float) -> int:  # TF get_depth_fn
            return max(int(d * config.width_mult), head.min_depth)

        channels = [info.num_chs for info in self.backbone.feature_info]
        self.extras = nn.ModuleList()
        for d in head.extra_depths:
            mid = depth(d / 2)
            self.extras.append(
                nn.Sequential(
                    ConvNormAct(channels[-1], mid, 1, **bn),
                    ConvNormAct(mid, mid, 3, 2, groups=mid, **bn),
                    ConvNormAct(mid, depth(d), 1, **bn),
                )
            )
            channels.append(depth(d))
        k = head.anchors_per_location()
        n_scores = head.num_classes + 1

        def predictor(c: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(ConvNormAct(c, c, 3, groups=c, **bn), nn.Conv2d(c, outputs, 1))

        self.box_heads = nn.ModuleList(predictor(c, a * 4) for c, a in zip(channels, k))
        self.cls_heads = nn.ModuleList(predictor(c, a * n_scores) for c, a in zip(channels, k))
        self.feature_channels = channels
        self._anchor_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.reset_head_parameters()

    def reset_head_parameters(self) -> None:
        """TF config initialisation of everything outside the backbone: truncated normal (std 0.03) kernels, zero
        biases, class biases ``class_bias_init``; BN scale 1, offset 0."""
        for module in (self.extras, self.box_heads, self.cls_heads):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    _truncated_normal_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        for m in self.cls_heads:
            nn.init.constant_(m[-1].bias, self.ssd_config.class_bias_init)

    @property
    def num_classes(self) -> int:
        return self.ssd_config.num_classes

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the predictors read (strides 16, 32, 64, 128, 256, 512)."""
        maps = list(self.backbone(x))
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_scores = self.ssd_config.num_classes + 1
        boxes, scores = [], []
        for f, box_head, cls_head in zip(self.feature_maps(x), self.box_heads, self.cls_heads):
            n = f.shape[0]
            # [N, A*k, H, W] → [N, H, W, A*k] → [N, H*W*A, k]: the anchors' (row, column, spec) order
            boxes.append(box_head(f).permute(0, 2, 3, 1).reshape(n, -1, 4))
            scores.append(cls_head(f).permute(0, 2, 3, 1).reshape(n, -1, n_scores))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def anchors(self, image_size: int | tuple[int, int]) -> torch.Tensor:
        """Anchors ``[A, 4]`` (normalised ``(cy, cx, h, w)``) for an input of ``image_size`` (an int or (H, W))."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if (h, w) not in self._anchor_cache:
            sizes = feature_map_sizes(h, w, self.ssd_config.num_layers)
            self._anchor_cache[(h, w)] = generate_anchors(sizes, self.ssd_config, (h, w))
        return self._anchor_cache[(h, w)]


# ----------------------------------------------------------------------------------------------- loss
def detection_loss(
    box_regression: torch.Tensor, class_logits: torch.Tensor, targets: list[dict], anchors: torch.Tensor,
    head: SSDLiteConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The TF config's SSD loss: ``(loss, {"loc": ..., "cls": ...})``.

    Smooth L1 (Huber, delta 1: ``weighted_smooth_l1``) on the matched anchors' codes, plus the classification loss
    (``weighted_sigmoid`` summed over the C + 1 columns, background included, or softmax cross-entropy) on the
    matched anchors and the hardest negatives: per image at most ``neg_pos_ratio`` (3) per positive and at least
    ``min_negatives_per_image`` (3), ranked by classification loss (``hard_example_miner`` with
    ``loss_type: CLASSIFICATION``; its NMS at IoU 0.99 among mined boxes is left out). Both parts are divided by
    the batch's number of matches, at least 1 (``normalize_loss_by_num_matches``), so an image without objects
    gives a finite loss (its 3 hardest negatives). Boxes of non-positive area in ``targets`` are ignored.
    """
    box_regression, class_logits = box_regression.float(), class_logits.float()
    n, a, k = class_logits.shape
    anchors = anchors.to(class_logits.device)
    anchors_xyxy = cxcywh_to_xyxy(anchors)
    cls_target = torch.zeros(n, a, dtype=torch.long, device=class_logits.device)
    loc_target = torch.zeros(n, a, 4, device=class_logits.device)
    for i, t in enumerate(targets):
        boxes = t["boxes"].to(class_logits.device, torch.float32).reshape(-1, 4)
        labels = t["labels"].to(class_logits.device).reshape(-1)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(1)
        boxes, labels = boxes[valid], labels[valid]
        matches = match_anchors(boxes, anchors_xyxy, head.matched_threshold)
        pos = matches >= 0
        if pos.any():
            cls_target[i, pos] = labels[matches[pos]]
            loc_target[i, pos] = encode_boxes(boxes[matches[pos]], anchors[pos], head.box_coder_scales)
    positive = cls_target > 0
    num_pos = positive.sum(dim=1)
    loc = F.smooth_l1_loss(box_regression[positive], loc_target[positive], beta=1.0, reduction="sum")
    if head.score_fn == "sigmoid":
        onehot = F.one_hot(cls_target, k).float()
        per_anchor = F.binary_cross_entropy_with_logits(class_logits, onehot, reduction="none").sum(-1)
    else:
        per_anchor = F.cross_entropy(class_logits.reshape(-1, k), cls_target.reshape(-1), reduction="none").view(n, a)
    # hard negative mining: rank the negatives of each image by their classification loss
    ranking = per_anchor.detach().masked_fill(positive, -math.inf)
    rank = ranking.argsort(dim=1, descending=True).argsort(dim=1)
    num_neg = torch.maximum(
        (head.neg_pos_ratio * num_pos).long(), torch.full_like(num_pos, head.min_negatives_per_image)
    )
    num_neg = torch.minimum(num_neg, a - num_pos)
    negative = ~positive & (rank < num_neg[:, None])
    cls = (per_anchor * (positive | negative)).sum()
    normalizer = num_pos.sum().clamp(min=1).float()
    loc, cls = loc / normalizer, cls / normalizer
    return loc + cls, {"loc": loc.detach(), "cls": cls.detach()}


# ----------------------------------------------------------------------------------------------- post-processing
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_output: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression on tensors: indices of the kept boxes, best score first (:func:`mnv2.ops.nms`,
    the one implementation the runtime uses too)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = ops.nms(boxes.float().cpu().numpy(), scores.float().cpu().numpy(), iou_threshold, max_output)
    return torch.from_numpy(keep).to(boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float):
    """:func:`nms` within each class (boxes of different classes never suppress each other); indices by score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = []
    for c in classes.unique():
        idx = torch.nonzero(classes == c).flatten()
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    order = torch.cat(kept)
    return order[scores[order].argsort(descending=True, stable=True)]


def class_scores(class_logits: torch.Tensor, score_fn: str) -> torch.Tensor:
    """Per-class probabilities ``[..., C]`` without the background column (TF slices it off after the converter)."""
    probs = class_logits.float().sigmoid() if score_fn == "sigmoid" else class_logits.float().softmax(-1)
    return probs[..., 1:]


def decode_outputs(
    box_regression: torch.Tensor, class_logits: torch.Tensor, anchors: torch.Tensor, head: SSDLiteConfig
) -> torch.Tensor:
    """The model's raw outputs as ``[N, A, 4 + C]``: each anchor's decoded box (normalised ``x1, y1, x2, y2``,
    clipped to the image) then its per-class probabilities (no background). Everything before NMS, and what an
    exported detector computes in its graph (NMS runs on the host: :func:`nms_decoded`)."""
    boxes = decode_boxes(box_regression.float(), anchors.to(box_regression.device), head.box_coder_scales)
    return torch.cat([boxes.clamp(0, 1), class_scores(class_logits, head.score_fn)], dim=-1)


@torch.no_grad()
def postprocess(
    box_regression: torch.Tensor, class_logits: torch.Tensor, anchors: torch.Tensor, head: SSDLiteConfig
) -> list[dict[str, torch.Tensor]]:
    """Decoded detections per image: ``{"boxes": [k, 4] normalised xyxy clipped to [0, 1], "scores": [k],
    "labels": [k] in 1..C}``, best first (:func:`decode_outputs`, then :func:`nms_decoded`)."""
    return nms_decoded(decode_outputs(box_regression, class_logits, anchors, head), head)


@torch.no_grad()
def nms_decoded(decoded: torch.Tensor, head: SSDLiteConfig) -> list[dict[str, torch.Tensor]]:
    """Per-image detections from :func:`decode_outputs`' ``[N, A, 4 + C]``: ``batch_multiclass_non_max_suppression``
    as the TF config sets it (:func:`mnv2.ops.multiclass_nms`, the runtime's own; boxes are already clipped to the
    image window, as TF's postprocess)."""
    results = []
    for d in decoded.float().cpu().numpy():
        b, s, labels = ops.multiclass_nms(d[:, :4], d[:, 4:], **head.nms_settings())
        results.append(
            {"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(labels)}
        )
    return results


# SSD trains only on matched anchors, so a box with none at IoU >= matched_threshold is never learnt. YOLOv5's
# autoanchor refits below 98 % of the labels matchable ("best possible recall"); here a fit is made only below 90 %
# (the data report's threshold): BCCD at 91.7 % fitted to 95.7 % lost 2.4 points of mAP@0.5 (0.866 -> 0.842,
# BENCHMARKS.md "New data"), so a set that TF's anchors mostly cover keeps them, and the fit is for sets they miss.
ANCHOR_FIT_BELOW = 0.9
# The scales an anchor fit tries: the smallest layer's scale (TF: 0.2 of the input) and the largest's (0.95).
FIT_MIN_SCALES = tuple(round(0.04 + 0.02 * i, 2) for i in range(9))  # 0.04 ... 0.20
FIT_MAX_SCALES = (0.55, 0.65, 0.75, 0.85, 0.95)


def anchor_coverage(boxes: torch.Tensor, size: int | tuple[int, int], head: SSDLiteConfig) -> float:
    """The fraction of ``boxes`` (``[N, 4]`` normalised corners) with an anchor of ``head`` at an input of ``size``
    at IoU >= its ``matched_threshold``: the boxes training can learn."""
    if len(boxes) == 0:
        return 1.0
    h, w = (size, size) if isinstance(size, int) else size
    anchors = cxcywh_to_xyxy(generate_anchors(feature_map_sizes(h, w, head.num_layers), head, (h, w)))
    best = box_iou(boxes.float(), anchors).max(dim=1).values
    return float((best >= head.matched_threshold).float().mean())


def fit_anchor_scales(
    boxes: torch.Tensor, size: int | tuple[int, int], head: SSDLiteConfig
) -> tuple[SSDLiteConfig, float, float]:
    """Anchor scales fitted to ``boxes`` (normalised corners) on SSDLite's layout, as YOLO's autoanchor fits its
    anchors: ``(head, coverage before, coverage after)``. ``head`` is returned unchanged when its coverage is at
    least :data:`ANCHOR_FIT_BELOW`, or when no candidate covers more; otherwise the ``min_scale``/``max_scale`` pair
    (with the reduced lowest layer's square anchor at half ``min_scale``, TF's 0.1 for 0.2) that covers the most
    boxes, the nearest to the head's own on a tie."""
    before = anchor_coverage(boxes, size, head)
    if before >= ANCHOR_FIT_BELOW:
        return head, before, before
    best, best_key = head, (before, 0.0)
    for lo in FIT_MIN_SCALES:
        for hi in FIT_MAX_SCALES:
            cand = dataclasses.replace(head, min_scale=lo, max_scale=hi, lowest_scale=lo / 2)
            key = (anchor_coverage(boxes, size, cand), -abs(lo - head.min_scale) - abs(hi - head.max_scale))
            if key > best_key:
                best, best_key = cand, key
    return best, before, best_key[0]
