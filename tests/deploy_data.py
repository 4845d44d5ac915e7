"""A small learnable task for the deployment tests: accuracy there means something, unlike on random weights.

Images are 32x32 RGB noise with one coloured 10x10 square; the class is (quadrant of the square) x (red or
green): 8 classes. A MobileNetV2 0.35 learns it in 600 steps on CPU (100% held-out top-1 on 2026-11-29's machine;
300 steps gave 68% there, on 217d691's code too, which left the INT8 tests' fp32 bound of 70% unmet).
"""

from __future__ import annotations

import numpy as np
import torch

from mnv2.data.preprocessing import Preprocessing
from mnv2.models import mobilenet_v2
from mnv2.weights.checkpoint import CheckpointMeta, save_checkpoint

SIZE = 32
NUM_CLASSES = 8
CLASS_NAMES = [f"{c}-{q}" for c in ("red", "green") for q in ("tl", "tr", "bl", "br")]
PRE = Preprocessing(input_size=SIZE, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int64 labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    x = rng.integers(0, 140, (n, SIZE, SIZE, 3)).astype(np.uint8)
    for i, label in enumerate(y):
        colour, quadrant = divmod(int(label), 4)
        r0 = (quadrant // 2) * 16 + rng.integers(0, 7)
        c0 = (quadrant % 2) * 16 + rng.integers(0, 7)
        x[i, r0 : r0 + 10, c0 : c0 + 10, colour] = rng.integers(150, 256)
    return x, y


def preprocess(x: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> normalised float NCHW, as PRE says."""
    mean = np.array(PRE.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(PRE.std, np.float32).reshape(1, 3, 1, 1)
    return ((x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - mean) / std


def batches(n: int, seed: int, batch: int = 64):
    """An iterable of (preprocessed float NCHW batch, labels), the form quantize() and engines take."""
    x, y = make_images(n, seed)
    xf = preprocess(x)
    return [(xf[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def train_tiny(path, steps: int = 600, padding: str = "torch") -> None:
    """Train MobileNetV2 0.35 on the task and save an mnv2 checkpoint at ``path``."""
    torch.manual_seed(0)
    model = mobilenet_v2(width_mult=0.35, num_classes=NUM_CLASSES, padding=padding, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    x, y = make_images(steps * 32, seed=1)
    xf, yt = torch.from_numpy(preprocess(x)), torch.from_numpy(y)
    model.train()
    for s in range(steps):
        xb, yb = xf[s * 32 : (s + 1) * 32], yt[s * 32 : (s + 1) * 32]
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    meta = CheckpointMeta(model_config=model.config, preprocessing=PRE, class_names=CLASS_NAMES)
    save_checkpoint(path, model, meta)


def accuracy(model: torch.nn.Module, data) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for xb, yb in data:
            correct += int((model(torch.from_numpy(xb)).argmax(1).numpy() == yb).sum())
            total += len(yb)
    return 100.0 * correct / total
