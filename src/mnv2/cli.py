"""The ``mnv2`` command line: ``mnv2 <verb>``. Each verb parses its arguments and calls the library.

User errors (bad arguments, files, data) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from mnv2.errors import Mnv2Error


def _add_arch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered name (see `mnv2 models`); default mobilenetv2_100")
    p.add_argument("--width", type=float, default=None, help="width multiplier (any value > 0); overrides --model")
    p.add_argument("--resolution", type=int, default=None, help="input size in pixels (>= 32; default 224)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (1001 for TF-slim/Keras)")
    p.add_argument("--padding", default=None, help="torch (symmetric) or tf (TF SAME)")
    p.add_argument("--output-stride", type=int, default=None, help="32 (default), 16 or 8 (dilated, §6.3)")


def _build_from_args(args: argparse.Namespace):
    from mnv2.models import create_model, mobilenet_v2, model_info

    overrides = {"num_classes": args.num_classes, "padding": args.padding, "output_stride": args.output_stride}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.width is not None:
        return mobilenet_v2(width_mult=args.width, **overrides), args.resolution or 224
    name = args.model or "mobilenetv2_100"
    return create_model(name, **overrides), args.resolution or model_info(name).default_resolution


def cmd_models(args: argparse.Namespace) -> int:
    import dataclasses

    from mnv2.models import list_models, model_info

    if args.pretrained:
        return _print_pretrained(args.json)
    infos = [model_info(n) for n in list_models()]
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos]))
        return 0
    print(f"{'name':<18} {'width':>6}  resolutions with published checkpoints")
    for i in infos:
        print(f"{i.name:<18} {i.width_mult:>6}  {', '.join(map(str, i.resolutions))}")
    return 0


def _print_pretrained(as_json: bool) -> int:
    from mnv2.hub import describe, get_pretrained, list_pretrained

    entries = [describe(get_pretrained(n)) for n in list_pretrained()]
    if as_json:
        print(json.dumps(entries))
        return 0
    # "top1" is the publisher's own figure; "slim" the TF-slim checkpoint of the same width/resolution (Keras).
    print(f"{'name':<40} {'framework':<12} {'res':>4} {'classes':>7} {'top1':>7} {'slim':>5}  sha256")
    for e in entries:
        m = e["metrics"]
        top1, slim = m.get("top1", "-"), m.get("tf_slim_top1", "-")
        print(
            f"{e['name']:<40} {e['framework']:<12} {e['resolution']:>4} {e['num_classes']:>7} {top1:>7} {slim:>5}  "
            f"{e['sha256'][-1]}"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from mnv2.checkpoint import save_checkpoint
    from mnv2.convert import convert_source

    converted = convert_source(args.source, format=args.format, output=args.output)
    path = save_checkpoint(args.out, converted.model, converted.meta)
    meta, c = converted.meta, converted.model.config
    summary = {
        "checkpoint": str(path),
        "framework": meta.source.get("framework"),
        "width_mult": c.width_mult,
        "num_classes": c.num_classes,
        "padding": c.padding,
        "bn_eps": c.bn_eps,
        "output": c.output,
        "preprocessing": meta.preprocessing.to_dict(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        p = meta.preprocessing
        print(
            f"{summary['framework']} -> {path}: width {c.width_mult}, {c.num_classes} classes, padding {c.padding}, "
            f"BN eps {c.bn_eps:g}, output {c.output}; input {p.input_size}px, mean {p.mean}, std {p.std}"
        )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from mnv2.models.mobilenetv2 import check_resolution
    from mnv2.profile import summarize

    if args.resolution is not None:
        check_resolution(args.resolution)
    model, resolution = _build_from_args(args)
    if args.memory:
        from mnv2.memory import memory_report

        report = memory_report(model, resolution, args.splits)
        print(
            json.dumps({"config": model.config.to_dict(), **report.to_dict()}) if args.json else report.format_table()
        )
        return 0
    summary = summarize(model, resolution)
    if args.json:
        print(json.dumps({"config": model.config.to_dict(), **summary.to_dict()}))
    else:
        print(summary.format_table())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mnv2.errors import ConfigError

    if not args.memory:
        raise ConfigError("choose what to benchmark: --memory (activation memory and latency of §5.1 streaming)")
    from mnv2 import memory_bench

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    widths = (args.width,) if args.width is not None else memory_bench.DEFAULT_WIDTHS
    splits = tuple(args.splits) if args.splits else memory_bench.DEFAULT_SPLITS
    rows = []
    for width in widths:
        rows += memory_bench.run_width(
            width, args.resolution or 224, splits, args.batch, args.repeats, args.device, progress=not args.json
        )
    if args.json:
        best = memory_bench.best_split(rows)
        out = {**best.to_dict(), "candidates": [r.to_dict() for r in rows], **memory_bench.environment()}
        print(json.dumps({"device": args.device, **out}))
        return 0
    print(memory_bench.format_rows(rows))
    env = memory_bench.environment()
    print(
        f"device {args.device}, torch {env['torch']}, {env['threads']} threads; bytes = allocator peak above the start"
    )
    if args.plot:
        memory_bench.plot_memory_per_layer(widths[-1], args.resolution or 224, args.plot)
        print(f"wrote {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mnv2 import __version__

    parser = argparse.ArgumentParser(prog="mnv2", description="MobileNetV2 (arXiv:1801.04381) as practical software.")
    parser.add_argument("--version", action="version", version=f"mnv2 {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")

    p = sub.add_parser("models", help="list registered models")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pretrained", action="store_true", help="list the published weights (mnv2.create_model weights=)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="per-layer params, multiply-adds and activations")
    _add_arch_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--memory", action="store_true", help="dense vs §5.1 streamed activation memory per block")
    p.add_argument("--splits", default="full", help="§5.1 slices per layer for --memory: an integer or 'full'")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("convert", help="import Keras / torchvision / timm / Hugging Face weights as an mnv2 checkpoint")
    p.add_argument("source", help="a .h5/.keras file, a .pth/.safetensors state dict, or a Hugging Face directory")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--format", default=None, help="keras, torchvision, timm or huggingface (default: detected)")
    p.add_argument("--output", default=None, choices=("logits", "softmax"), help="default: what the source outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="benchmarks: --memory (§5.1 streaming: measured peak memory and latency)")
    p.add_argument("--memory", action="store_true", help="measured peak activation memory, §5.1 bound, latency")
    p.add_argument("--width", type=float, default=None, help="one width (default: 0.35 and 1.0)")
    p.add_argument("--resolution", type=int, default=None, help="input size (default 224)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--splits", nargs="+", default=None, help="split counts (default: 1 2 4 6 full)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved latency repeats (medians)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (peak from torch.cuda.max_memory_allocated)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="one JSON object for the best split count")
    p.add_argument("--plot", default=None, help="also write the per-layer memory plot (PNG) for the last width")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Mnv2Error as e:
        print(f"mnv2: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `mnv2 summary | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("mnv2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
