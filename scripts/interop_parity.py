"""Measure weights-interop parity: max |mnv2 - peer| over the outputs, per source, width and input size.

    KERAS_BACKEND=torch .venv/bin/python scripts/interop_parity.py > parity.md

Peers: Keras 3 (torch backend, built here), the committed Keras 2 file, Hugging Face transformers (built here),
and the committed torchvision / timm references (tests/fixtures/, made by scripts/make_interop_fixtures.py).
Random weights with measured-then-perturbed BN statistics (see tests/test_convert_*.py). Prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import keras
import numpy as np
import torch
from keras.src.legacy.saving import legacy_h5_format
from safetensors.torch import load_file
from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

from mnv2.weights.convert import convert

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
rows: list[tuple[str, str, str, str, float]] = []


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def keras_calibrate(model, base, shape, rng) -> None:
    bns = [la for la in base.layers if isinstance(la, keras.layers.BatchNormalization)]
    for la in bns:
        la.momentum = 0.0
    model(rng.uniform(-1, 1, (8, *shape, 3)).astype("float32"), training=True)
    for la in bns:
        la.momentum = 0.999
        g, _, m, v = la.get_weights()
        n = g.shape[0]
        la.set_weights(
            [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), m + rng.normal(0, 0.1, n) * np.sqrt(v), v + 0.05]
        )


def torch_calibrate(model, res, g) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
        model.train()
        model(torch.randn(8, 3, res, res, generator=g))
        for m in bns:
            m.running_var.add_(0.05)
    model.eval()


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    # Keras 3 application weight files (keras-applications layout), fixed input shapes, softmax head.
    for alpha, shape in ((0.35, (96, 96)), (0.5, (75, 83)), (1.0, (128, 128)), (1.4, (97, 97))):
        model = keras.applications.MobileNetV2(input_shape=(*shape, 3), alpha=alpha, weights=None, classes=10)
        keras_calibrate(model, model, shape, rng)
        path = tmp / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{shape[0]}.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        x = rng.uniform(-1, 1, (4, *shape, 3)).astype("float32")
        with torch.no_grad():
            probs = convert(path)(nchw(x)).numpy()
            logits = convert(path, output="logits")(nchw(x))
        y = keras.ops.convert_to_numpy(model(x))
        rows.append(
            ("Keras 3 weights .h5", str(alpha), f"{shape[0]}x{shape[1]}", "probabilities", np.abs(probs - y).max())
        )
        # Logits: Keras' Dense before its softmax, computed by a Keras model sharing the layers.
        pre = keras.Model(model.input, model.get_layer("predictions").output)
        pre.get_layer("predictions").activation = keras.activations.linear
        y_logits = keras.ops.convert_to_numpy(pre(x))
        rows.append(
            (
                "Keras 3 weights .h5",
                str(alpha),
                f"{shape[0]}x{shape[1]}",
                "logits",
                (logits.numpy() - y_logits).__abs__().max(),
            )
        )
    # Keras 3 whole models: nested transfer shape trained a few steps, .h5 and .keras.
    shape = (97, 97)
    base = keras.applications.MobileNetV2(input_shape=(*shape, 3), alpha=0.5, include_top=False, weights=None)
    inp = keras.Input((*shape, 3))
    out = keras.layers.Dense(4, activation="softmax")(
        keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(base(inp)))
    )
    model = keras.Model(inp, out)
    keras_calibrate(model, base, shape, rng)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    model.fit(rng.uniform(-1, 1, (12, *shape, 3)), rng.integers(0, 4, 12), batch_size=4, epochs=1, verbose=0)
    x = rng.uniform(-1, 1, (4, *shape, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    for ext in ("h5", "keras"):
        model.save(tmp / f"m.{ext}")
        with torch.no_grad():
            z = convert(tmp / f"m.{ext}")(nchw(x)).numpy()
        rows.append((f"Keras 3 model .{ext} (nested, trained)", "0.5", "97x97", "probabilities", np.abs(z - y).max()))
    # Keras 2 (tf-keras) whole model .h5.
    ref = np.load(FIX / "keras2" / "reference.npz")
    k2 = convert(FIX / "keras2" / "keras2_transfer_035.h5")
    for size in ("96x96", "64x128"):
        with torch.no_grad():
            z = k2(nchw(ref[f"input_{size}"])).numpy()
        rows.append(
            (
                "Keras 2 model .h5 (nested, trained)",
                "0.35",
                size,
                "probabilities",
                np.abs(z - ref[f"probs_{size}"]).max(),
            )
        )
    # Hugging Face transformers.
    g = torch.Generator().manual_seed(0)
    for tf_padding in (True, False):
        for dm, hw in ((0.35, (96, 96)), (0.75, (75, 83)), (1.4, (65, 64))):
            hf = MobileNetV2ForImageClassification(
                MobileNetV2Config(depth_multiplier=dm, tf_padding=tf_padding, num_labels=10)
            )
            torch_calibrate(hf, 64, g)
            hf.save_pretrained(tmp / "hf")
            x = torch.randn(4, 3, *hw, generator=g)
            with torch.no_grad():
                d = (convert(tmp / "hf")(x) - hf(x).logits).abs().max().item()
            rows.append((f"HF transformers tf_padding={tf_padding}", str(dm), f"{hw[0]}x{hw[1]}", "logits", d))
    # torchvision / timm references.
    refs = load_file(str(FIX / "interop" / "reference.safetensors"))
    for m in json.loads((FIX / "interop" / "manifest.json").read_text())["models"]:
        model = convert(FIX / "interop" / m["file"])
        for case in m["inputs"]:
            with torch.no_grad():
                d = (model(refs[case["key"] + "/input"]) - refs[case["key"] + "/logits"]).abs().max().item()
            lib = {"tv": "torchvision", "timm": "timm"}[m["library"]] + f" {Path(m['file']).suffix}"
            rows.append((lib, str(m["width"]), "x".join(map(str, case["shape"][2:])), "logits", d))
    print("| source | width | input | compared | max abs diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {float(r[4]):.2e} |")


if __name__ == "__main__":
    main()
