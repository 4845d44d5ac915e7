"""``mnv2 eval`` and ``mnv2 predict``: run a checkpoint on a dataset or on image files."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from mnv2.data.folder import ScanReport
from mnv2.data.loaders import build_eval_data
from mnv2.data.preprocessing import Preprocessing
from mnv2.data.transforms import IMAGE_EXTENSIONS, ImageError, eval_image, load_image
from mnv2.engine.loop import evaluate
from mnv2.engine.plots import plot_confusion
from mnv2.errors import ConfigError
from mnv2.weights.checkpoint import load_checkpoint


def evaluate_checkpoint(
    checkpoint: str | Path, data: str, *, split: str | None = None, batch_size: int = 250, workers: int = 2,
    strict: bool = False, confusion_png: str | Path | None = None, tta: str = "none",
) -> dict:  # fmt: skip
    """Evaluate ``checkpoint`` on ``data`` (``fashion-mnist``: its test split; or an image folder).

    ``tta="flip"`` averages each image's class probabilities with its mirror image's; a checkpoint trained without
    horizontal flips gets a warning, since mirrored inputs were never in its training data.

    Returns ``top1``, ``top5`` (percent), ``n``, ``loss``, ``per_class`` (percent by class name), ``skipped``
    (corrupt/non-image files) and ``confusion_png`` (the path written).
    """
    model = load_checkpoint(checkpoint)
    meta = model.meta
    batches, classes, report = build_eval_data(
        data, meta.preprocessing, batch_size, split=split, workers=workers, strict=strict,
        in_chans=model.config.in_chans,
    )  # fmt: skip
    if classes is None:  # arrays (.npz) carry labels only
        classes = list(meta.class_names or [str(i) for i in range(model.config.num_classes)])
    if meta.class_names is not None and list(meta.class_names) != list(classes):
        raise ConfigError(
            f"the checkpoint's classes {list(meta.class_names)[:5]}... differ from the data's {classes[:5]}... "
            f"({len(meta.class_names)} vs {len(classes)} classes)"
        )
    if tta == "flip" and not _trained_with_flips(meta):
        warnings.warn(
            f"{str(checkpoint)!r} was not trained with horizontal flips (its config has augment.hflip 0 or none): "
            "flip test-time augmentation shows it images unlike its training data",
            stacklevel=2,
        )
    result = evaluate(model, batches, classes, tta=tta)
    png = Path(confusion_png) if confusion_png else Path(checkpoint).with_suffix(".confusion.png")
    plot_confusion(
        result.pop("confusion"), classes, png, f"{Path(checkpoint).name} on {data}: top-1 {result['top1']:.2f}%"
    )
    result.update(tta=tta, confusion_png=str(png), skipped=_skipped(report), checkpoint=str(checkpoint), data=data)
    return result


def _trained_with_flips(meta) -> bool:
    """Whether the checkpoint's training config flipped images (imported weights: ImageNet training did)."""
    if meta.config is None:
        return True
    return float((meta.config.get("augment") or {}).get("hflip", 0) or 0) > 0


def _skipped(report: ScanReport) -> dict:
    return {"corrupt": len(report.corrupt), "non_image": len(report.non_image)}


def image_paths(inputs: list[str]) -> list[Path]:
    """Files given directly, plus the image files found (recursively) in given directories."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            raise ConfigError(f"{item!r} is neither an image file nor a directory")
    if not paths:
        raise ConfigError(f"no image files found in {', '.join(inputs)}")
    return paths


@torch.no_grad()
def predict(
    checkpoint: str | Path, inputs: list[str], topk: int = 5, batch_size: int = 64, strict: bool = False
) -> list[dict]:
    """Top-``topk`` classes and probabilities for every image, with the PyTorch model of ``checkpoint``;
    undecodable files get an ``error`` entry (or raise with ``strict``). Other engines: ``mnv2.deploy.engines``."""
    model = load_checkpoint(checkpoint)
    return predict_images(
        model, inputs, model.meta.preprocessing, model.meta.class_names or model.config.num_classes,
        probabilities=model.config.output == "softmax", topk=topk, batch_size=batch_size, strict=strict,
    )  # fmt: skip


@torch.no_grad()
def predict_images(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: list[str],
    preprocessing: Preprocessing,
    class_names: list[str] | int,
    *,
    probabilities: bool = False,
    topk: int = 5,
    batch_size: int = 64,
    strict: bool = False,
) -> list[dict]:
    """Run ``forward`` (preprocessed float NCHW batch → logits, or probabilities when ``probabilities``) over the
    images in ``inputs`` (files and directories) and return each one's top-``topk`` classes in input order."""
    names = [str(i) for i in range(class_names)] if isinstance(class_names, int) else list(class_names)
    k = min(topk, len(names))
    if k < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    results: list[dict] = []
    paths = image_paths(inputs)
    for i in range(0, len(paths), batch_size):
        chunk, tensors, ok = paths[i : i + batch_size], [], []
        for p in chunk:
            try:
                tensors.append(eval_image(load_image(p), preprocessing))
                ok.append(p)
            except ImageError as e:
                if strict:
                    raise
                results.append({"path": str(p), "error": str(e)})
        if not tensors:
            continue
        out = forward(torch.stack(tensors)).float()
        probs = out if probabilities else out.softmax(dim=1)
        top = probs.topk(k, dim=1)
        for p, vals, idxs in zip(ok, top.values, top.indices):
            results.append(
                {
                    "path": str(p),
                    "top": [{"class": names[j], "index": int(j), "prob": float(v)} for v, j in zip(vals, idxs)],
                }
            )
    order = {str(p): n for n, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])


def format_predictions(results: list[dict], as_json: bool) -> str:
    if as_json:
        return json.dumps(results)
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']}: skipped ({r['error']})")
        else:
            lines.append(f"{r['path']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"]))
    return "\n".join(lines)
