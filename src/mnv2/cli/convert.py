"""``mnv2 convert``: Keras, torchvision, timm or Hugging Face weights as an mnv2 checkpoint."""

from __future__ import annotations

import argparse

from mnv2.cli.common import check_out_file, dumps


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("convert", help="import Keras / torchvision / timm / Hugging Face weights as an mnv2 checkpoint")
    p.add_argument("source", help="a .h5/.keras file, a .pth/.safetensors state dict, or a Hugging Face directory")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--format", default=None, help="keras, torchvision, timm or huggingface (default: detected)")
    p.add_argument("--output", default=None, choices=("logits", "softmax"), help="default: what the source outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_file(args.out)
    from mnv2.weights.checkpoint import save_checkpoint
    from mnv2.weights.convert import convert_source

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
        print(dumps(summary))
    else:
        p = meta.preprocessing
        print(
            f"{summary['framework']} -> {path}: width {c.width_mult}, {c.num_classes} classes, padding {c.padding}, "
            f"BN eps {c.bn_eps:g}, output {c.output}; input {p.input_size}px, mean {p.mean}, std {p.std}"
        )
    return 0
