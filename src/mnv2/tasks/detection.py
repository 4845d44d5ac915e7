"""Detection (§6.2): SSDLite-MobileNetV2, the TF config's SSD loss, COCO metrics with pycocotools.

The model (``mnv2.models.ssdlite.SSDLite``) returns raw box codes and class logits; ``infer`` adds the anchors and the
decoded, NMS-filtered detections; the :class:`Evaluator` computes the val loss and COCO's AP (fractions in [0, 1]).
``best`` is ``mAP50`` (AP at IoU 0.5, the VOC-style figure the raccoon benchmark asks for); ``mAP`` is COCO's
AP@[.5:.95].
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.errors import ConfigError
from mnv2.models.mobilenetv2 import MIN_INPUT_SIZE, MobileNetV2, MobileNetV2Config, check_resolution
from mnv2.models.registry import model_info
from mnv2.models.ssdlite import (
    ANCHOR_FIT_BELOW,
    SSDLite,
    SSDLiteConfig,
    anchors_for_count,
    decode_outputs,
    detection_loss,
    fit_anchor_scales,
    nms_decoded,
    postprocess,
)
from mnv2.models.ssdlite_config import SCORE_FNS
from mnv2.models.utils import unwrap
from mnv2.tasks.base import Int8Spec, PaperModel, Presentation, Task, task_options, with_bn_momentum
from mnv2.tasks.infer.detection import DECODED_OUTPUT, INFERENCE, NAME
from mnv2.typed import option

TTA_MODES = ("none",)
DEFAULT_INPUT_SIZE = 320  # the paper's SSDLite input (§6.2, Table 6); the TF config uses 300
EVAL_BATCH_MAX = 64  # detection activations at 320 px: the classification default of 500 images would not fit
COCO_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10", "AR100")


# ----------------------------------------------------------------------------------------------- data
def default_preprocessing(config) -> Preprocessing:
    """A plain resize to ``config.resolution`` (the detection recipe's 320; no crop: ``crop_pct`` 1.0) and [-1, 1]
    inputs, as TF's ``SSDMobileNetV2FeatureExtractor.preprocess`` (``2 / 255 * x - 1``). Fine-tuning replaces
    mean/std with the ``--init`` checkpoint's (the engine does)."""
    check_resolution(config.resolution)
    return Preprocessing(input_size=config.resolution, crop_pct=1.0, interpolation="bilinear", mean=TF_MEAN, std=TF_STD)


ANCHOR_FIT = ("auto", "none")


@dataclass(frozen=True)
class DetectionOptions:
    """What only a detection run sets (``TrainConfig.options``; each a ``mnv2 train`` flag but ``anchor_scales``)."""

    score_fn: str = option("sigmoid", "detection class scores: sigmoid (the TF SSDLite config) or softmax",
                           choices=SCORE_FNS)  # fmt: skip
    anchor_fit: str = option(
        "auto", "detection: auto (when under 90 %% of the train boxes have an anchor at IoU >= 0.5, the anchor scales "
        "are fitted to the boxes, as YOLO's autoanchor, and written into config.yaml) or none", choices=ANCHOR_FIT,
    )  # fmt: skip
    anchor_scales: list[float] | None = None  # [lowest, min, max] anchor scales: the fit's, or a recipe's
    tile: int | None = option(None, "detection: train on a random tile of this many pixels of each full-size image and "
                              "validate on the val images' tiles (small objects in large images; the checkpoint "
                              "records it, and mnv2 eval and predict then cut tiles of that size)")  # fmt: skip

    # a config written before the options were the task's (its keys at the top level) ran without the anchor fit
    BEFORE: ClassVar[dict] = {"anchor_fit": "none"}

    def __post_init__(self) -> None:
        checks = [
            (self.score_fn in SCORE_FNS, f"score_fn must be one of {SCORE_FNS}"),
            (self.anchor_fit in ANCHOR_FIT, f"anchor_fit must be one of {ANCHOR_FIT}"),
            (self.tile is None or (isinstance(self.tile, int) and self.tile >= MIN_INPUT_SIZE),
             f"tile must be a whole number of pixels >= {MIN_INPUT_SIZE}"),
            (self.anchor_scales is None or (len(self.anchor_scales) == 3 and min(self.anchor_scales) > 0),
             "anchor_scales must be three positive numbers [lowest, min, max]"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{msg}; got {getattr(self, msg.split()[0])!r}")


def options(config) -> DetectionOptions:
    return task_options(DetectionOptions, config)


def build_data(config, preprocessing, *, rank: int = 0, world: int = 1, pin: bool = False):
    """A VOC folder or COCO JSON (``mnv2.data.detection``): SSD-augmented train batches, plain-resized val batches."""
    from mnv2.data.detection import DetectionAugment, build_detection_data

    return build_detection_data(
        config.data, preprocessing, config.batch_size // world, min(config.eval_batch_size, EVAL_BATCH_MAX),
        val_split=config.val_split, strict=config.strict, workers=config.workers, seed=config.seed, rank=rank,
        world=world, pin=pin, train_limit=config.train_limit, val_limit=config.val_limit,
        aug=DetectionAugment(hflip=config.augment.hflip), tile=options(config).tile,
    )  # fmt: skip


def load_eval_data(data: str, preprocessing, batch_size: int, **kwargs):
    """``(batches, class_names, report)`` of a detection dataset's ``split`` (default: its val split or all)."""
    from mnv2.data.detection import build_detection_eval_data

    return build_detection_eval_data(data, preprocessing, min(batch_size, EVAL_BATCH_MAX), **kwargs)


# ----------------------------------------------------------------------------------------------- model
def head_config(config, num_classes: int) -> SSDLiteConfig:
    """The head a run trains: the TF config's, for ``num_classes`` classes, with ``config.score_fn`` when the
    TrainConfig has one. The loss rebuilds it the same way, so model and loss always agree."""
    opts = options(config)
    score_fn, scales = opts.score_fn, opts.anchor_scales
    fitted = dict(zip(("lowest_scale", "min_scale", "max_scale"), scales)) if scales else {}
    return SSDLiteConfig(num_classes=num_classes, score_fn=score_fn, **fitted)


def train_boxes(records, tile: int | None = None) -> torch.Tensor:
    """Every box of ``records`` as normalised corners ``[N, 4]`` of the input the model sees (what the anchors are
    matched against): of the whole image, or of a ``tile``-px tile of it (``--tile``). A train tile is drawn anywhere
    in the image, so a box is placed as in the tile of the grid from the origin that holds its centre, and cut by
    that tile's border as a drawn tile cuts it (a box far from the origin is not off the frame)."""
    import numpy as np

    out = []
    for r in records:
        if not r.boxes:
            continue
        b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        w, h = (min(r.width, tile), min(r.height, tile)) if tile else (r.width, r.height)
        if tile:
            shift = np.stack([np.floor((b[:, 0] + b[:, 2]) / 2 / w) * w, np.floor((b[:, 1] + b[:, 3]) / 2 / h) * h], 1)
            b = np.clip(b - np.tile(shift, 2), 0, [w, h, w, h])
        out.append(b / [w, h, w, h])
    return torch.as_tensor(np.concatenate(out) if out else np.zeros((0, 4)), dtype=torch.float32)


def adapt(config, data) -> tuple[Any, list[str]]:
    """The defaults chosen from the data (issue 24, 2), written into the run's config.yaml: anchor scales fitted to
    the train boxes when too few of them have an anchor to be matched to (``--anchor-fit none`` turns it off; a
    recipe's ``anchor_scales`` are kept)."""
    opts = options(config)
    notes = [f"training on tiles of {opts.tile} px: mnv2 eval and predict cut tiles of that size by default (--tile 0: "
             "whole images)"] if opts.tile else []  # fmt: skip
    if opts.anchor_fit != "auto" or opts.anchor_scales is not None:
        return config, notes
    head = head_config(config, len(data.class_names))
    boxes = train_boxes(data.train.dataset.records, opts.tile)
    fitted, before, after = fit_anchor_scales(boxes, config.resolution, head)
    if fitted == head:
        if before < ANCHOR_FIT_BELOW:  # tried and failed: say so, or a run on unmatched boxes looks like a fitted one
            notes.append(f"anchor fit: no anchor scales on SSDLite's layout match more than TF's {100 * before:.1f} "
                         "% of the train boxes (too small for its stride-16 grid at this input): train at a larger "
                         "--resolution or on tiles (--tile), as the data report advises")  # fmt: skip
        return config, notes
    scales = [fitted.lowest_scale, fitted.min_scale, fitted.max_scale]
    return dataclasses.replace(config, options={**config.options, "anchor_scales": scales}), [
        *notes,
        f"anchor scales fitted to the boxes: lowest {scales[0]:g}, min {scales[1]:g}, max {scales[2]:g} (TF's 0.1, "
        f"0.2, 0.95): {100 * before:.1f} -> {100 * after:.1f} % of the train boxes have an anchor at IoU >= "
        f"{head.matched_threshold} (--anchor-fit none turns this off)",
    ]


def backbone_config(config: MobileNetV2Config) -> MobileNetV2Config:
    """The backbone SSDLite runs: the published strides (stem 2, output 32: its maps sit at strides 16 and 32),
    no classifier; width, padding and BN settings as given."""
    return dataclasses.replace(config, num_classes=0, output="logits", stem_stride=2, output_stride=32)


def build_model(config, class_names: list[str], backbone: MobileNetV2Config | None = None) -> SSDLite:
    """A fresh SSDLite for ``class_names`` from the config's width (or ``--model``) and padding, or on ``backbone``
    (an ``--init`` checkpoint's architecture). The stem stride is always 2 (the classification default recipe's 1
    is for 32-px images)."""
    if backbone is None:
        width = model_info(config.model).width_mult if config.model else config.width
        backbone = MobileNetV2Config(width_mult=width, num_classes=0, padding=config.padding)
    return SSDLite(backbone_config(with_bn_momentum(backbone, config)), head_config(config, len(class_names)))


def from_meta(meta) -> SSDLite:
    """The architecture a detection checkpoint describes: ``model_config`` (backbone) + ``head``."""
    if not meta.head:
        raise ConfigError("a detection checkpoint needs its head arguments (metadata 'head')")
    return SSDLite(meta.model_config, SSDLiteConfig.from_dict(meta.head, "checkpoint head"))


def init_from(model: SSDLite, source: nn.Module) -> list[str]:
    """Copy ``--init`` weights: a classifier's ``stem.*``, ``blocks.*``, ``head.*`` into the backbone (its classifier
    is dropped), or a detector's every tensor whose shape fits (class predictors too when the classes agree).
    Returns the state keys left freshly initialised."""
    src = unwrap(source)
    state = src.state_dict()
    own = model.state_dict()
    if isinstance(src, MobileNetV2):
        load = {f"backbone.{k}": v for k, v in state.items() if k.split(".")[0] in ("stem", "blocks", "head")}
    elif isinstance(src, SSDLite):
        load = {k: v for k, v in state.items() if not (k in own and own[k].shape != v.shape and "cls_heads" in k)}
    else:
        raise ConfigError(f"--init must be a MobileNetV2 classifier or an SSDLite detector, got {type(src).__name__}")
    unexpected = sorted(k for k in load if k not in own)
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in load.items() if k in own and
              own[k].shape != v.shape]  # fmt: skip
    if unexpected or shapes:
        raise ConfigError(f"--init weights do not fit the detector: unexpected {unexpected[:3]}, shapes {shapes[:3]}")
    missing, _ = model.load_state_dict(load, strict=False)
    return list(missing)


# ----------------------------------------------------------------------------------------------- training
def loss(outputs, targets: list[dict], config) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`mnv2.models.ssdlite.detection_loss` of ``(box_regression, class_logits)``; parts ``loc`` and ``cls``.

    The anchors follow from the number of predictions (it identifies the square input size) and the head from
    :func:`head_config`, exactly as :func:`build_model` made it.
    """
    box_regression, class_logits = outputs
    head = head_config(config, class_logits.shape[-1] - 1)
    anchors = anchors_for_count(class_logits.shape[1], head)
    return detection_loss(box_regression, class_logits, targets, anchors, head)


def infer(model: nn.Module, x: torch.Tensor, tta: str = "none") -> dict[str, Any]:
    """Raw outputs (for the val loss), anchors, head and the decoded detections of a preprocessed batch."""
    m = unwrap(model)
    box_regression, class_logits = model(x)
    box_regression, class_logits = box_regression.float().cpu(), class_logits.float().cpu()
    anchors = m.anchors(tuple(x.shape[-2:]))
    detections = postprocess(box_regression, class_logits, anchors, m.ssd_config)
    return {"box_regression": box_regression, "class_logits": class_logits, "anchors": anchors, "head": m.ssd_config,
            "detections": detections}  # fmt: skip


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Evaluator:
    """COCO box metrics (pycocotools) and the mean val loss over a pass; DDP-safe through ``all_reduce_sum`` only.

    ``update`` takes ``infer``'s outputs (or just ``{"detections": [...]}``) and the eval targets: normalised
    ``boxes``, ``labels``, the original ``size`` ``[H, W]`` (AP is computed in original pixels, so COCO's small /
    medium / large areas mean what they say) and optional ``iscrowd``. Metrics are fractions in [0, 1]; an area
    range without ground truth gives ``None``.
    """

    columns = ("loss", "mAP", "mAP50", "mAP75")
    best = "mAP50"

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.sizes: list[torch.Tensor] = []  # [2] (h, w) per image
        self.dets: list[torch.Tensor] = []  # [k, 6] x1, y1, x2, y2 (pixels), score, label
        self.gts: list[torch.Tensor] = []  # [k, 6] x1, y1, x2, y2 (pixels), label, crowd
        self.loss_sums = torch.zeros(2, dtype=torch.float64)  # loss * images, images
        self.table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def update(self, outputs: dict, targets: list[dict]) -> None:
        detections = outputs["detections"]
        if len(detections) != len(targets):
            raise ConfigError(f"{len(detections)} detection results for {len(targets)} images")
        if "class_logits" in outputs:
            k = outputs["class_logits"].shape[-1] - 1
            if k != len(self.class_names):
                raise ConfigError(f"the model detects {k} classes but the data has {len(self.class_names)}")
            plain = [{"boxes": t["boxes"][~_crowd(t)], "labels": t["labels"][~_crowd(t)]} for t in targets]
            value, _ = detection_loss(outputs["box_regression"], outputs["class_logits"], plain, outputs["anchors"],
                                      outputs["head"])  # fmt: skip
            self.loss_sums += torch.tensor([value.item() * len(targets), len(targets)], dtype=torch.float64)
        for det, t in zip(detections, targets):
            if "size" not in t:
                raise ConfigError("detection eval targets need the original image 'size' (mnv2.data.detection)")
            h, w = (int(v) for v in t["size"])
            scale = torch.tensor([w, h, w, h], dtype=torch.float64)
            self.sizes.append(torch.tensor([h, w], dtype=torch.float64))
            self.dets.append(torch.cat([det["boxes"].double().cpu() * scale, det["scores"].double().cpu()[:, None],
                                        det["labels"].double().cpu()[:, None]], 1))  # fmt: skip
            self.gts.append(torch.cat([t["boxes"].double().reshape(-1, 4) * scale, t["labels"].double()[:, None],
                                       _crowd(t).double()[:, None]], 1))  # fmt: skip

    def _local(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's images ``[n, 2]``, detections ``[d, 7]`` and boxes ``[g, 7]`` (column 0: image index)."""
        sizes = torch.stack(self.sizes) if self.sizes else torch.zeros(0, 2, dtype=torch.float64)

        def rows(parts: list[torch.Tensor]) -> torch.Tensor:
            if not parts:
                return torch.zeros(0, 7, dtype=torch.float64)
            idx = [torch.full((len(p), 1), float(i), dtype=torch.float64) for i, p in enumerate(parts)]
            return torch.cat([torch.cat(idx), torch.cat(parts)], 1)

        return sizes, rows(self.dets), rows(self.gts)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Gather every rank's images, detections and boxes with sums alone: each rank writes its rows into its own
        slice of zero tables sized from the summed counts, and the tables are summed."""
        rank, world = _rank_world()
        sizes, dets, gts = self._local()
        counts = torch.zeros(world, 3, dtype=torch.float64)
        counts[rank] = torch.tensor([len(sizes), len(dets), len(gts)], dtype=torch.float64)
        all_reduce_sum(counts)
        counts = counts.long()
        before = counts[:rank].sum(0)
        total = counts.sum(0)
        sizes_all = torch.zeros(int(total[0]), 2, dtype=torch.float64)
        dets_all = torch.zeros(int(total[1]), 7, dtype=torch.float64)
        gts_all = torch.zeros(int(total[2]), 7, dtype=torch.float64)
        sizes_all[before[0] : before[0] + len(sizes)] = sizes
        dets[:, 0] += before[0]
        gts[:, 0] += before[0]
        dets_all[before[1] : before[1] + len(dets)] = dets
        gts_all[before[2] : before[2] + len(gts)] = gts
        for t in (sizes_all, dets_all, gts_all, self.loss_sums):
            all_reduce_sum(t)
        self.table = (sizes_all, dets_all, gts_all)

    def compute(self) -> dict[str, Any]:
        sizes, dets, gts = self.table if self.table is not None else self._local()
        result = coco_metrics(sizes, dets, gts, self.class_names)
        n = self.loss_sums[1].item()
        result["loss"] = self.loss_sums[0].item() / n if n else None
        result["n"] = len(sizes)
        return result


def _crowd(t: dict) -> torch.Tensor:
    crowd = t.get("iscrowd")
    return crowd.bool() if crowd is not None else torch.zeros(len(t["labels"]), dtype=torch.bool)


def data_report(data, model, config) -> str:
    """Images and boxes per split and class, box sizes at the input size, and what the model can see of them: the
    fraction of train boxes with an anchor at IoU >= the matching threshold (SSD trains only on matched anchors,
    so a box without one is never learnt; issue 24, 1), with what to do when that fraction is low."""
    import numpy as np

    from mnv2.models.ssdlite import box_iou, cxcywh_to_xyxy

    model = unwrap(model)
    size, head = config.resolution, model.ssd_config
    names = data.class_names
    tile = options(config).tile
    lines = [f"data report ({config.data}, input {size} px{f', tiles of {tile} px' if tile else ''}):"]
    sides = []
    for split, batches in (("train", data.train), (data.val_name, data.val)):
        records = batches.dataset.records
        counts = np.bincount([lab for r in records for lab in r.labels], minlength=len(names) + 1)[1:]
        per_class = ", ".join(f"{n} {c}" for n, c in zip(names, counts))
        lines.append(f"  {split}: {len(records)} images, {int(counts.sum())} boxes ({per_class})")
        if split == "train":  # box sizes in the input the model sees: the whole image, or a tile of it
            norm = train_boxes(records, tile).numpy().astype(np.float64)
            sides = np.sqrt(np.clip(norm[:, 2] - norm[:, 0], 0, None) * np.clip(norm[:, 3] - norm[:, 1], 0, None))
    if len(sides) == 0:
        return "\n".join(lines)
    px = sides * size
    anchors = cxcywh_to_xyxy(model.anchors(size))
    best = box_iou(torch.as_tensor(norm, dtype=torch.float32), anchors).max(dim=1).values.numpy()
    covered = float((best >= head.matched_threshold).mean())
    smallest = min(s for layer in head.box_specs() for s, _ in layer) * size
    where = f"{size} px" + (" a tile" if tile else "")
    lines.append(f"  train box size at {where} (sqrt of the area): median {np.median(px):.0f} px, 10th percentile "
                 f"{np.percentile(px, 10):.0f} px; smallest anchor {smallest:.0f} px")  # fmt: skip
    lines.append(f"  {100 * covered:.1f} % of the train boxes have an anchor at IoU >= {head.matched_threshold} "
                 "(the others are never matched, so never learnt)")  # fmt: skip
    if covered < 0.9:
        want = int(min(2 * size, 32 * round(size * smallest / max(np.percentile(px, 10), 1) / 32)))
        smaller = f"tiles smaller than {tile} px" if tile else "tiles of the images (--tile)"
        lines.append(f"  advice: objects are small for SSDLite's anchors at {size} px: train at a larger --resolution "
                     f"(e.g. {max(want, size + 32)}) or on {smaller}")  # fmt: skip
    return "\n".join(lines)


NOTHING_FOUND_MAP50 = 0.01  # mAP@0.5 below this: the detector finds (almost) nothing


def diagnose(metrics: dict) -> str | None:
    """A degenerate detector: mAP@0.5 near 0 on a split that has boxes."""
    value = metrics.get("mAP50")
    if value is None or value >= NOTHING_FOUND_MAP50:
        return None
    return (f"mAP@0.5 is {value:.3f}: the evaluated detector finds (almost) none of the boxes; likely causes: objects "
            "smaller than the smallest anchors (a larger --resolution), too few optimizer steps (more --epochs), or "
            "BatchNorm statistics that lag (--precise-bn)")  # fmt: skip


def evaluator(class_names: list[str], *_: Any) -> Evaluator:
    return Evaluator(class_names)


def coco_metrics(sizes: torch.Tensor, dets: torch.Tensor, gts: torch.Tensor, class_names: list[str]) -> dict:
    """COCO box AP/AR (pycocotools ``COCOeval``) of detections ``[d, 7]`` against boxes ``[g, 7]`` (image index,
    pixel corners, score or label, label or crowd) on images of ``sizes`` ``[n, 2]``.

    Returns ``mAP`` (AP@[.5:.95]), ``mAP50``, ``mAP75``, ``mAP_small/medium/large``, ``AR1/AR10/AR100`` (fractions;
    ``None`` without ground truth in that range: undefined, ``null`` in JSON and "n/a" in text), ``per_class``
    AP@[.5:.95] by name, and ``pr``: precision at COCO's 101 recall points at IoU 0.5 and 0.75, averaged over
    classes, and per class at 0.5 (for the report plot).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ConfigError("detection metrics need pycocotools: pip install pycocotools") from e
    import numpy as np

    images = [{"id": i, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(sizes.tolist())]
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]

    def xywh(r) -> list[float]:
        return [r[1], r[2], r[3] - r[1], r[4] - r[2]]

    def ann(j: int, r: list[float], category: float, extra: dict) -> dict:
        return {"id": j + 1, "image_id": int(r[0]), "category_id": int(category), "bbox": xywh(r),
                "area": (r[3] - r[1]) * (r[4] - r[2]), **extra}  # fmt: skip

    gt_anns = [ann(j, r, r[5], {"iscrowd": int(r[6])}) for j, r in enumerate(gts.tolist())]
    dt_anns = [ann(j, r, r[6], {"score": r[5], "iscrowd": 0}) for j, r in enumerate(dets.tolist())]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [im["id"] for im in images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) if s >= 0 else None for s in ev.stats]
    result: dict[str, Any] = dict(zip(COCO_KEYS, stats))  # ev.stats: AP, AP50, AP75, APs/m/l, AR1/10/100, ...
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    per_class = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
    result["per_class"] = per_class

    def mean_curve(t: int) -> list[float]:
        p = precision[t, :, :, 0, -1]  # [R, K]
        valid = (p > -1).all(0)
        return [float(v) for v in p[:, valid].mean(1)] if valid.any() else []

    result["pr"] = {
        "recall": [float(r) for r in ev.params.recThrs],
        "precision50": mean_curve(0),
        "precision75": mean_curve(int(np.argmin(np.abs(ev.params.iouThrs - 0.75)))),
        "per_class50": {
            name: [float(v) for v in precision[0, :, k, 0, -1]]
            for k, name in enumerate(class_names)
            if (precision[0, :, k, 0, -1] > -1).all()
        },
    }
    result["detections"] = len(dt_anns)
    return result


def format_metrics(m: dict) -> str:
    """``loss 2.1234 (loc 0.81 cls 1.31) mAP 0.4567 mAP50 0.8012`` from whichever of these ``m`` holds."""
    parts = []
    if m.get("loss") is not None:
        parts.append(f"loss {m['loss']:.4f}")
        if "loc" in m and "cls" in m:
            parts[-1] += f" (loc {m['loc']:.3f} cls {m['cls']:.3f})"
    parts += [f"{k} {'n/a' if m[k] is None else f'{m[k]:.4f}'}" for k in ("mAP", "mAP50", "mAP75") if k in m]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- prediction
class DecodedOutputs(nn.Module):
    """The detector as exported (``mnv2 export``): its raw outputs decoded in the graph with the anchors of one input
    size (a constant), ``[N, A, 4 + C]`` (:func:`mnv2.models.ssdlite.decode_outputs`). NMS is left to the host
    (``results``): data-dependent output sizes that ONNX and TFLite runtimes run slowly or not at all."""

    def __init__(self, model: SSDLite, size: int) -> None:
        super().__init__()
        self.model, self.head = model, model.ssd_config
        self.register_buffer("anchors", model.anchors(size).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decode_outputs(*self.model(x), self.anchors, self.head)


def export_module(model: nn.Module, size: tuple[int, int]) -> tuple[nn.Module, str]:
    """The detector with its outputs decoded for a square ``(size, size)`` input (anchors laid out for one side)."""
    return DecodedOutputs(unwrap(model), size[0]).eval(), DECODED_OUTPUT


def plot_report(result: dict, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Precision–recall curves (COCO's 101 recall points): all classes at IoU 0.5 and 0.75, and per class at 0.5
    when there are at most 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr = result.get("pr") or {}
    recall = pr.get("recall", [])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if recall and pr.get("precision50"):
        ax.plot(recall, pr["precision50"], label=f"IoU 0.5 (AP {_pct(result.get('mAP50'))})", linewidth=2)
        ax.plot(recall, pr["precision75"], label=f"IoU 0.75 (AP {_pct(result.get('mAP75'))})", linewidth=2)
        per_class = pr.get("per_class50", {})
        if 1 < len(per_class) <= 10:
            for name, p in per_class.items():
                ap = (result.get("per_class") or {}).get(name)
                ax.plot(recall, p, linestyle="--", linewidth=1, label=f"{name} @0.5 (AP@[.5:.95] {_pct(ap)})")
        ax.legend(fontsize=8, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or f"mAP@[.5:.95] {_pct(result.get('mAP'))}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def update_with_result(evaluator: Evaluator, result: dict, target: dict) -> None:
    """One image's COCO-style detections (the inference half's, e.g. tiled) into the evaluator, as ``infer``'s
    outputs: corner boxes normalised by the image's size."""
    w, h = result["width"], result["height"]
    dets = result["detections"]
    boxes = torch.tensor([[x / w, y / h, (x + bw) / w, (y + bh) / h] for x, y, bw, bh in (d["bbox"] for d in dets)],
                         dtype=torch.float64).reshape(-1, 4)  # fmt: skip
    scores = torch.tensor([d["score"] for d in dets], dtype=torch.float64)
    labels = torch.tensor([d["category_id"] for d in dets], dtype=torch.long)
    evaluator.update({"detections": [{"boxes": boxes, "scores": scores, "labels": labels}]}, [target])


# ----------------------------------------------------------------------------------------------- INT8
def int8_update(evaluator: Evaluator, outputs, targets, meta) -> None:
    """One batch of an exported detector's decoded outputs ``[N, A, 4 + C]`` into the evaluator, with NMS on the host
    as ``mnv2 predict`` runs the file."""
    head = SSDLiteConfig.from_dict(meta.head, "checkpoint head")
    evaluator.update({"detections": nms_decoded(torch.as_tensor(outputs), head)}, list(targets))


INT8 = Int8Spec(
    update=int8_update,
    metrics=("mAP", "mAP50", "mAP75"),
    points=100.0,  # AP is a fraction
    calibration_images=64,
    batch=16,
    # What the measurement needed (BENCHMARKS.md): the stem conv, which reads the image, held most of the INT8 loss
    # (block 0 too measured COCO mAP 0.35 points down but mAP@0.5 1.37). ONNX only: the TFLite INT8 path (PT2E,
    # litert-torch) has no way to keep the stem and the box decoding fp32.
    float_stem_convs=1,
    resizable=True,
)


TASK = Task(
    name=NAME,
    int8=INT8,
    build_data=build_data,
    default_preprocessing=default_preprocessing,
    build_model=build_model,
    from_meta=from_meta,
    init_from=init_from,
    loss=loss,
    train_parts=("loc", "cls"),
    evaluator=evaluator,
    infer=infer,
    tta_modes=TTA_MODES,
    load_eval_data=load_eval_data,
    inference=INFERENCE,
    diagnose=diagnose,
    min_batch=2,
    data_report=data_report,
    export_module=export_module,
    update_with_result=update_with_result,
    adapt=adapt,
    options=DetectionOptions,
    result_options={"min_score": 0.0},  # every detection NMS keeps, as evaluation's infer gives them
    paper=PaperModel(90, ((320, 320),), recipe="detection"),
    present=Presentation(plot_report, "pr.png", format_metrics, _pct),
)
