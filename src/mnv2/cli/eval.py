"""``mnv2 eval``: a checkpoint's metrics on a dataset split, with the task's report picture."""

from __future__ import annotations

import argparse
import sys

from mnv2.cli.common import chosen_tile, dumps, non_negative, positive, set_threads, task_of
from mnv2.errors import ConfigError


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("eval", help="top-1/top-5/per-class accuracy and a confusion-matrix PNG")
    p.add_argument("checkpoint")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (its test split) or an image folder")
    p.add_argument("--split", default=None, help="any split the data defines: fashion-mnist train|test, a folder's "
                   "subfolder, a VOC ImageSets list, a YOLO data.yaml or COCO instances_<split>.json split (default: "
                   "its validation split: val, valid, validation or test)")  # fmt: skip
    p.add_argument("--batch-size", type=positive, default=250)
    p.add_argument("--workers", type=non_negative, default=2)
    p.add_argument("--strict", action="store_true", help="fail on corrupt or non-image files")
    p.add_argument("--drop-invalid", action="store_true", help="detection: drop ground-truth boxes with no area or "
                   "outside their image, and count them (default: such a box is an error naming it)")  # fmt: skip
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PIXELS",
        help="detection/segmentation: evaluate predict's tiled inference (tiles of this side; default: the tile the "
        "model was trained on, if any; 0: whole images)",
    )
    p.add_argument("--overlap", type=float, default=0.2, help="with --tile: the tiles' overlap, a fraction of a tile")
    p.add_argument(
        "--confusion",
        default=None,
        metavar="PNG|DIR",
        help="the report picture (default: the checkpoint's run directory, else the current directory)",
    )
    p.add_argument(
        "--tta", default="none", metavar="none|flip|ms_flip",
        help="test-time augmentation: flip averages each image with its mirror image; ms_flip (segmentation): "
        "scales 0.5-1.75 and flips, the paper's MF setting (default none: single view)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object: top1, top5, n, loss, per_class, ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnv2.engine.evaluate import evaluate_checkpoint

    task, info = task_of(args.checkpoint)
    args.tile = chosen_tile(args.tile, info.get("tile"))
    set_threads()
    if args.tile is not None:  # through the inference half, as `predict --tile` answers
        from mnv2.deploy.runtime.tiled_eval import evaluate_tiled
        from mnv2.engine.evaluate import finish_evaluation

        if args.tta != "none":
            raise ConfigError("--tile and --tta do not combine: tiles are evaluated as predict answers (a model "
                              "trained on tiles takes its tile unless --tile 0)")  # fmt: skip
        metrics, classes, report = evaluate_tiled(
            args.checkpoint, args.data, tile=args.tile, overlap=args.overlap, split=args.split, workers=args.workers,
            strict=args.strict, drop_invalid=args.drop_invalid,
        )  # fmt: skip
        r = finish_evaluation(args.checkpoint, args.data, task, metrics, classes, report,
                              confusion_png=args.confusion, tile=args.tile, overlap=args.overlap)  # fmt: skip
    else:
        r = evaluate_checkpoint(
            args.checkpoint, args.data, split=args.split, batch_size=args.batch_size, workers=args.workers,
            strict=args.strict, confusion_png=args.confusion, tta=args.tta, drop_invalid=args.drop_invalid,
        )  # fmt: skip
    if r.get("confusion_error"):
        print(f"mnv2: warning: {r['confusion_error']}", file=sys.stderr)
    if r.get("diagnosis"):
        print(f"mnv2: warning: {r['diagnosis']}", file=sys.stderr)
    if args.json:
        print(dumps(r))
        return 0
    tta = f"  ({r['tta']} test-time augmentation)" if r["tta"] != "none" else ""
    tta += f"  (tiles of {r['tile']} px, overlap {r['overlap']:g})" if r.get("tile") else ""
    print(f"{r['checkpoint']} on {r['data']}: {task.present.format_metrics(r)}  n={r['n']}{tta}")
    for name, value in r.get("per_class", {}).items():
        print(f"  {name:<20} {'n/a' if value is None else task.present.format_value(value)}")
    if any(r["skipped"].values()):
        print("skipped: " + ", ".join(f"{n} {k.replace('_', '-')}" for k, n in r["skipped"].items() if n))
    picture = task.present.report_file.removesuffix(".png")
    print(f"{picture}: {r['confusion_png'] if r['confusion_png'] is not None else r['confusion_error']}")
    return 0
