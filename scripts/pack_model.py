"""Copy a checkpoint for shipping (examples/models): optionally with fp16 conv/linear weights (``--half``), checked
against the original on a random batch.

    .venv/bin/python scripts/pack_model.py RUN/best.safetensors examples/models/NAME.safetensors --half
"""

from __future__ import annotations

import argparse
import sys

import torch

from mnv2.weights.checkpoint import load_checkpoint, save_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--half", action="store_true", help="store conv/linear weights as fp16 (loading restores fp32)")
    args = ap.parse_args()
    model = load_checkpoint(args.source)
    path = save_checkpoint(args.out, model, model.meta, half=args.half)
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
