"""The SSDLite head's arguments (``ssdlite_mobilenet_v2_coco.config``), torch-free: an exported detector's card
carries them and the runtime's post-processing (NMS thresholds, ``mnv2.tasks.infer.detection``) reads them."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

from mnv2.errors import ConfigError
from mnv2.typed import strict_from_dict

SCORE_FNS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class SSDLiteConfig:
    """The detection head's arguments (``ssdlite_mobilenet_v2_coco.config``); saved in a checkpoint as ``head``.

    Attributes:
        num_classes: foreground classes; the model scores ``num_classes + 1`` with background at index 0 (TF
            ``num_classes: 90`` for COCO → 91 scores).
        min_scale, max_scale: anchor scales of the first and last of the six layers (``ssd_anchor_generator``).
        aspect_ratios: per location on layers 1-5, in TF's order (the config writes 1/3 as 0.3333).
        interpolated_scale_aspect_ratio: the extra anchor at scale sqrt(s_i * s_i+1) (0 = none; TF default 1.0).
        reduce_boxes_in_lowest_layer: layer 0 gets only (lowest_scale, 1.0), (s_0, 2.0), (s_0, 0.5) (TF default true).
        lowest_scale: the square anchor of that reduced layer 0 (TF: 0.1, written into its ``create_ssd_anchors``;
            a fit to small objects lowers it with ``min_scale``).
        extra_depths: depths of the four extra layers; scaled by the width multiplier, at least ``min_depth``
            (TF ``get_depth_fn``: ``max(int(d * depth_multiplier), min_depth)``).
        min_depth: see ``extra_depths`` (the config's ``min_depth: 16``).
        box_coder_scales: ``(y, x, height, width)`` scales of ``faster_rcnn_box_coder``.
        matched_threshold: IoU at or above which an anchor matches a box (``argmax_matcher``, 0.5; below it is a
            negative: ``unmatched_threshold`` is also 0.5, so none is ignored).
        score_fn: ``"sigmoid"`` (the TF config: independent per-class sigmoids, background column included) or
            ``"softmax"`` (one distribution over background + classes, as the original SSD).
        score_threshold, iou_threshold, max_detections_per_class, max_detections: ``batch_non_max_suppression``
            (1e-8, 0.6, 100, 100).
        pre_nms_top_k: candidates per class kept before NMS (not in TF, which runs NMS on all: only the best-scored
            boxes can survive to ``max_detections_per_class``, and it bounds the cost with many classes).
        neg_pos_ratio, min_negatives_per_image: ``hard_example_miner`` (3 negatives per positive, at least 3).
        class_bias_init: initial bias of the class predictors (``class_prediction_bias_init``; TF default 0.0).
    """

    num_classes: int = 90
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = True
    lowest_scale: float = 0.1
    extra_depths: tuple[int, ...] = (512, 256, 256, 128)
    min_depth: int = 16
    box_coder_scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    matched_threshold: float = 0.5
    score_fn: str = "sigmoid"
    score_threshold: float = 1e-8
    iou_threshold: float = 0.6
    max_detections_per_class: int = 100
    max_detections: int = 100
    pre_nms_top_k: int = 1000
    neg_pos_ratio: float = 3.0
    min_negatives_per_image: int = 3
    class_bias_init: float = 0.0

    def __post_init__(self) -> None:
        for name in ("aspect_ratios", "extra_depths", "box_coder_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON metadata
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        if not self.lowest_scale > 0 or not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"anchor scales must satisfy 0 < lowest_scale and 0 < min_scale <= max_scale, got "
                              f"{self.lowest_scale}, {self.min_scale}, {self.max_scale}")  # fmt: skip
        if not self.aspect_ratios or any(r <= 0 for r in self.aspect_ratios):
            raise ConfigError(f"aspect_ratios must be positive, got {self.aspect_ratios!r}")
        if len(self.box_coder_scales) != 4 or any(s <= 0 for s in self.box_coder_scales):
            raise ConfigError(f"box_coder_scales must be 4 positive numbers, got {self.box_coder_scales!r}")
        if self.score_fn not in SCORE_FNS:
            raise ConfigError(f"score_fn must be one of {SCORE_FNS}, got {self.score_fn!r}")
        if not 0 <= self.iou_threshold <= 1 or not 0 < self.matched_threshold <= 1:
            raise ConfigError("iou_threshold must be in [0, 1] and matched_threshold in (0, 1]")
        if min(self.max_detections, self.max_detections_per_class, self.pre_nms_top_k) < 1:
            raise ConfigError("max_detections, max_detections_per_class and pre_nms_top_k must be >= 1")

    @classmethod
    def from_dict(cls, values: dict, source: str = "detection head") -> SSDLiteConfig:
        """Build from a dict (a checkpoint's ``head``); unknown keys raise a ConfigError naming them."""
        return strict_from_dict(cls, values, source)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def num_layers(self) -> int:
        return 2 + len(self.extra_depths)

    def scales(self) -> list[float]:
        """Per-layer anchor scales, plus TF's trailing 1.0 used only for the last interpolated scale."""
        n = self.num_layers
        return [self.min_scale + (self.max_scale - self.min_scale) * i / (n - 1) for i in range(n)] + [1.0]

    def box_specs(self) -> list[list[tuple[float, float]]]:
        """``(scale, aspect_ratio)`` of every anchor per location, per layer (``create_ssd_anchors``)."""
        scales = self.scales()
        specs = []
        for layer, (scale, scale_next) in enumerate(itertools.pairwise(scales)):
            if layer == 0 and self.reduce_boxes_in_lowest_layer:
                specs.append([(self.lowest_scale, 1.0), (scale, 2.0), (scale, 0.5)])
                continue
            layer_specs = [(scale, r) for r in self.aspect_ratios]
            if self.interpolated_scale_aspect_ratio > 0:
                layer_specs.append((math.sqrt(scale * scale_next), self.interpolated_scale_aspect_ratio))
            specs.append(layer_specs)
        return specs

    def anchors_per_location(self) -> list[int]:
        return [len(s) for s in self.box_specs()]

    def nms_settings(self) -> dict:
        """The keyword arguments of :func:`mnv2.ops.multiclass_nms` (TF's ``batch_non_max_suppression``)."""
        return {
            "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
            "pre_nms_top_k": self.pre_nms_top_k, "max_per_class": self.max_detections_per_class,
            "max_total": self.max_detections,
        }  # fmt: skip
