"""Fashion-MNIST INT8 check for BENCHMARKS.md (Deployment): train a small MobileNetV2 briefly, then quantize.

    .venv/bin/python scripts/fmnist_int8.py --data /usr/share/datasets/fashion-mnist --out runs/fmnist-int8

Reads the IDX files (Debian package `dataset-fashion-mnist`), trains MobileNetV2 (width 0.5, 1 input channel,
stem stride 1, 28 px padded to 32) for a few epochs, saves an mnv2 checkpoint, then runs `mnv2.export.quantize`
(method auto, 1024 calibration images from the training split) and reports fp32 vs INT8 on the 10k test split.
A stand-in until the training engine (issue 3) produces the Fashion-MNIST checkpoints; the quantization path is
the same one `mnv2 quantize` runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnv2.checkpoint import CheckpointMeta, save_checkpoint
from mnv2.data.preprocessing import Preprocessing
from mnv2.export.quantize import quantize
from mnv2.models import mobilenet_v2

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics on [0, 1]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def prep(x: np.ndarray) -> np.ndarray:
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0  # 28 -> 32 px
    return ((x - MEAN) / STD)[:, None]


def quantize_checkpoint(path: Path, xtr, ytr, xte, yte, out: Path) -> None:
    """Quantize an existing checkpoint, preprocessing the images as its metadata says (PIL resize + crop)."""
    from PIL import Image

    from mnv2.checkpoint import load_checkpoint
    from mnv2.export.data import normalize

    model = load_checkpoint(path)
    pre, chans = model.meta.preprocessing, model.config.in_chans
    resample = {"nearest": 0, "bilinear": 2, "bicubic": 3}[pre.interpolation]

    def load(x: np.ndarray) -> np.ndarray:
        r, c = pre.resize_size, pre.input_size
        imgs = [np.asarray(Image.fromarray(im).resize((r, r), resample)) for im in x]
        o = (r - c) // 2
        return normalize(np.stack(imgs)[:, o : o + c, o : o + c], pre, chans)

    rng = np.random.default_rng(0)
    cal = rng.choice(len(xtr), 1024, replace=False)
    calib = [(load(xtr[cal[i : i + 128]]), ytr[cal[i : i + 128]].astype(np.int64)) for i in range(0, 1024, 128)]
    test = [(load(xte[i : i + 500]), yte[i : i + 500].astype(np.int64)) for i in range(0, len(xte), 500)]
    t0 = time.time()
    report = quantize(model, out / "fmnist-int8.onnx", calib, test)
    print(report.format())
    res = {"checkpoint": str(path), "checkpoint_metrics": model.meta.metrics, "seconds": time.time() - t0}
    (out / "int8_report.json").write_text(json.dumps({**res, **report.to_dict()}, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="runs/fmnist-int8")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--stem-stride", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="quantize this Fashion-MNIST checkpoint instead of training")
    args = ap.parse_args()
    d, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr = read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz")
    if args.checkpoint:
        quantize_checkpoint(Path(args.checkpoint), xtr, ytr, xte, yte, out)
        return
    xtr_f, xte_f = torch.from_numpy(prep(xtr)), prep(xte)
    ytr_t = torch.from_numpy(ytr.astype(np.int64))
    torch.manual_seed(0)
    model = mobilenet_v2(width_mult=args.width, num_classes=10, in_chans=1, stem_stride=args.stem_stride, dropout=0.1)
    bs, steps = 128, args.epochs * (len(xtr) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    t0, step = time.time(), 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr) - bs + 1, bs):
            idx = perm[i : i + bs]
            xb = xtr_f[idx]
            xb = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xb, xb.flip(-1))  # horizontal flip
            loss = F.cross_entropy(model(xb), ytr_t[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(
                    f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True
                )
    model.eval()
    pre = Preprocessing(input_size=32, crop_pct=1.0, mean=(MEAN,), std=(STD,), grayscale=True)
    meta = CheckpointMeta(model_config=model.config, preprocessing=pre, class_names=CLASSES)
    save_checkpoint(out / "fmnist.safetensors", model, meta)
    rng = np.random.default_rng(0)
    cal = rng.choice(len(xtr), 1024, replace=False)
    calib = [(prep(xtr[cal[i : i + 128]]), ytr[cal[i : i + 128]].astype(np.int64)) for i in range(0, 1024, 128)]
    test = [(xte_f[i : i + 500], yte[i : i + 500].astype(np.int64)) for i in range(0, len(xte), 500)]
    report = quantize(model, out / "fmnist-int8.onnx", calib, test, meta=meta)
    print(report.format())
    res = {"train_seconds": time.time() - t0, "epochs": args.epochs, "width": args.width, **report.to_dict()}
    (out / "int8_report.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
