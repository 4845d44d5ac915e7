"""``mnv2 summary``: per-layer parameters, multiply-adds and activations of a task's published model."""

from __future__ import annotations

import argparse

from mnv2.cli.common import dumps


def add_parser(sub, verb: str | None) -> None:
    from mnv2.tasks import DEFAULT_TASK, TASK_NAMES

    p = sub.add_parser("summary", help="per-layer params, multiply-adds and activations")
    p.add_argument("--model", default=None, help="registered name (see `mnv2 models`); default mobilenetv2_100")
    p.add_argument("--width", type=float, default=None, help="width multiplier (any value > 0); overrides --model")
    p.add_argument("--resolution", type=int, default=None, help="input size in pixels (>= 32; default: the paper's, "
                   "224 for a classifier)")  # fmt: skip
    p.add_argument(
        "--num-classes", type=int, default=None,
        help="classifier outputs (1001 for TF-slim/Keras); detection: object classes without background (default "
        "90); segmentation: classes (default 21)",
    )  # fmt: skip
    p.add_argument("--task", default=DEFAULT_TASK, help=f"{', '.join(TASK_NAMES)} (the paper's model of that task)")
    p.add_argument("--aspp", default=None, help="segmentation: off, separable or regular (Table 7's 'with ASPP')")
    p.add_argument("--padding", default=None, help="torch (symmetric) or tf (TF SAME)")
    p.add_argument("--output-stride", type=int, default=None, help="32 (default), 16 or 8 (dilated, §6.3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--memory", action="store_true", help="dense vs §5.1 streamed activation memory per block")
    p.add_argument("--splits", default="full", help="§5.1 slices per layer for --memory: an integer or 'full'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnv2.bench.profile import summarize
    from mnv2.engine.config import paper_model
    from mnv2.models.mobilenetv2 import check_resolution

    if args.resolution is not None:
        check_resolution(args.resolution)
    model, resolution = paper_model(
        args.task, args.num_classes, model=args.model, width=args.width, resolution=args.resolution,
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
        print(dumps({"task": args.task, "config": model.config.to_dict(), **head, **summary.to_dict()}))
    else:
        print(summary.format_table())
    return 0
