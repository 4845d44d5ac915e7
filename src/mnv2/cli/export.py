"""``mnv2 export``: a checkpoint as ONNX, TFLite or ExecuTorch, checked against torch; the flags are
``ExportOptions``'s fields."""

from __future__ import annotations

import argparse

from mnv2.cli.common import check_out_file, dumps, typed_config
from mnv2.cli.flags import add_flags


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (or tflite/executorch), verified against torch")
    p.add_argument("checkpoint", help="mnv2 checkpoint (.safetensors)")
    p.add_argument("--format", default=None, help="onnx, tflite, executorch (default: from --out's suffix, else onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run)
    config = typed_config(p, verb, "export", "mnv2.deploy.exporters.onnx", "ExportOptions")  # its module imports torch
    if config is not None:
        add_flags(p, config, show_defaults=False)


def run(args: argparse.Namespace) -> int:
    check_out_file(args.out)
    from mnv2.cli.flags import values_from_args
    from mnv2.deploy import ExportOptions, export
    from mnv2.deploy.exporters.formats import format_for

    fmt = args.format or format_for(args.out)
    report = export(
        args.checkpoint, args.out, fmt, ExportOptions.for_format(fmt, **values_from_args(ExportOptions, args))
    )
    if args.json:
        print(dumps(report.to_dict()))
    else:
        shape = "x".join(str(d) for d in report.input_shape)
        print(
            f"wrote {report.path} ({report.format}): {report.input_name} {report.input_dtype}[{shape}] -> "
            f"{report.output_name}; parity vs torch max |diff| {report.parity_max_abs:.2e} at batch "
            f"{', '.join(map(str, report.parity_batches))} ({report.seconds:.1f} s)"
        )
    return 0
