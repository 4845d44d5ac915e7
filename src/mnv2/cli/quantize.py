"""``mnv2 quantize``: INT8 with calibrated ranges and an fp32-vs-INT8 report."""

from __future__ import annotations

import argparse
import sys

from mnv2.cli.common import check_out_file, dumps, typed_config
from mnv2.cli.flags import add_flags, values_from_args


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("quantize", help="INT8 (QDQ ONNX or TFLite) with calibrated ranges and an fp32-vs-INT8 report")
    p.add_argument("checkpoint", help="mnv2 checkpoint (.safetensors)")
    p.add_argument(
        "--calibration", required=True,
        help="fashion-mnist (its train split), an image folder (its train/ part if any) or an .npz of x, y",
    )  # fmt: skip
    p.add_argument("--eval", default=None, help="held-out data for the report: fashion-mnist (test), folder, .npz")
    p.add_argument("--out", required=True, help="INT8 file: .onnx (ONNX Runtime, OpenVINO) or .tflite (LiteRT)")
    config = typed_config(p, verb, "quantize", "mnv2.deploy.quantize", "QuantizeOptions")  # its module imports torch
    if config is not None:
        add_flags(p, config)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_file(args.out)
    from dataclasses import asdict

    from mnv2.deploy.quantize import QuantizeOptions, quantize
    from mnv2.weights.checkpoint import load_checkpoint

    options = QuantizeOptions(**values_from_args(QuantizeOptions, args))
    report = quantize(load_checkpoint(args.checkpoint), args.out, args.calibration, args.eval, **asdict(options))
    for note in report.notes:  # what the data readers reported (skipped files ...)
        print(note, file=sys.stderr)
    print(dumps(report.to_dict()) if args.json else report.format())
    return 0
