"""Copy a checkpoint for shipping (examples/models): optionally with fp16 conv/linear weights (``--half``), checked
against the original on a random batch; optionally with the class names and colours of a segmentation
``classes.json`` (``--classes``) for a run whose data had none (its classes were numbered).

    .venv/bin/python scripts/pack_model.py RUN/best.safetensors examples/models/NAME.safetensors --half
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from mnv2.weights.checkpoint import load_checkpoint, save_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--half", action="store_true", help="store conv/linear weights as fp16 (loading restores fp32)")
    ap.add_argument("--classes", default=None, help="a segmentation classes.json: its names and colours, in order")
    args = ap.parse_args()
    model = load_checkpoint(args.source)
    meta = model.meta
    if args.classes:
        from mnv2.data.segmentation import read_classes_file

        spec = read_classes_file(args.classes)
        if meta.task != "segmentation" or len(spec.names) != len(meta.class_names or []):
            sys.exit(f"{args.classes}: {len(spec.names)} names for a {meta.task} model of "
                     f"{len(meta.class_names or [])} classes")  # fmt: skip
        head = dict(meta.head or {})
        if spec.colors:
            head["class_colors"] = [list(c) for c in spec.colors]
        meta = dataclasses.replace(meta, class_names=list(spec.names), head=head)
    path = save_checkpoint(args.out, model, meta, half=args.half)
    size = model.meta.preprocessing.input_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a, b = model(x), load_checkpoint(path)(x)
    pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
    diff = max(float((p - q).abs().max()) for p, q in pairs)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB); max |output diff| vs the source {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
