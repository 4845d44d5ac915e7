"""``mnv2 summary``: per-layer parameters, multiply-adds and activations of a task's published model."""

from __future__ import annotations

import argparse

from mnv2.cli.common import dumps, typed_config
from mnv2.cli.flags import add_fields
from mnv2.tasks import DEFAULT_TASK

# The training config's fields and task options that describe an architecture: `mnv2 summary`'s flags.
ARCHITECTURE = ("task", "model", "width", "resolution", "padding", "output_stride", "aspp")


def add_parser(sub, verb: str | None) -> None:
    about = (
        "A task's published model (Task.paper): every architecture flag is the training config's, and defaults "
        "to the paper's model (the classifier: mobilenetv2_100 at 224)."
    )
    p = sub.add_parser("summary", help="per-layer params, multiply-adds and activations", description=about)
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (1001 for TF-slim/Keras); detection: object classes without background "
                   "(default 90); segmentation: classes (default 21)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--memory", action="store_true", help="dense vs §5.1 streamed activation memory per block")
    p.add_argument("--splits", default="full", help="§5.1 slices per layer for --memory: an integer or 'full'")
    p.set_defaults(func=run)
    fields = typed_config(p, verb, "summary", "mnv2.engine.config", "flag_fields")  # its module imports torch
    if fields is not None:  # the architecture's flags of mnv2 train (segmentation's output stride and ASPP too)
        add_fields(p, [f for f in fields() if f.name in ARCHITECTURE], show_defaults=False)


def run(args: argparse.Namespace) -> int:
    from mnv2.bench.profile import summarize
    from mnv2.engine.config import paper_model
    from mnv2.models.mobilenetv2 import check_resolution

    if args.resolution is not None:
        check_resolution(args.resolution)
    model, resolution = paper_model(
        args.task or DEFAULT_TASK, args.num_classes, model=args.model, width=args.width, resolution=args.resolution,
        padding=args.padding, output_stride=args.output_stride, aspp=args.aspp,
    )  # fmt: skip
    if args.memory:
        from mnv2.bench.memory import memory_report

        report = memory_report(model, resolution, args.splits)
        print(dumps({"config": model.config.to_dict(), **report.to_dict()}) if args.json else report.format_table())
        return 0
    summary = summarize(model, resolution)
    if args.json:
        head = {"head": model.head_config} if hasattr(model, "head_config") else {}
        print(dumps({"task": args.task or DEFAULT_TASK, "config": model.config.to_dict(), **head, **summary.to_dict()}))
    else:
        print(summary.format_table())
    return 0
