"""INT8 agreement with an imported Keras model's own predictions (issue 6; BENCHMARKS.md, Deployment).

    .venv/bin/python scripts/keras_int8_agreement.py --out runs/keras-int8

No hub access here, so the Keras model is made on the spot: ``keras.applications.MobileNetV2`` (alpha 0.35,
32x32x3, softmax head, Keras 3 on the PyTorch backend) trained briefly on Fashion-MNIST with Keras's own
``fit`` (BN momentum 0.9 so that its moving statistics settle in a short run). Then the user's path:
``mnv2 convert`` the ``.keras`` file, ``mnv2 quantize`` the checkpoint (calibration: Fashion-MNIST train; report:
the 10k test split), and compare the INT8 model's top-1 class with what *Keras*
predicts for every test image. Inputs for Keras come from the converted checkpoint's own preprocessing through
``mnv2.data`` (grayscale expanded to 3 channels, scaled to [-1, 1] as Keras's ``preprocess_input``), so both
sides see the same tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import torch

from mnv2.data.loaders import build_eval_data
from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing


def arrays(split: str, pre: Preprocessing, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from mnv2.deploy.quantize import materialize

    batches, _, _ = build_eval_data("fashion-mnist", pre, 1000, split=split, limit=limit)
    return materialize(batches.epoch(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/keras-int8")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import keras

    from mnv2.deploy.quantize import quantize
    from mnv2.deploy.runtime.engines import load_engine
    from mnv2.weights.convert import convert

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # The preprocessing `mnv2 convert` assigns a Keras MobileNetV2 (preprocess_input: x / 127.5 - 1), at 32 px.
    pre = Preprocessing(32, 1.0, "bilinear", TF_MEAN, TF_STD, grayscale=True)
    x_tr, y_tr = arrays("train", pre, args.train_images)
    x_te, y_te = arrays("test", pre)
    keras.utils.set_random_seed(0)
    km = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    for layer in km.layers:  # Keras's BN momentum 0.999 needs ~10k steps for its moving statistics; this run has
        if isinstance(layer, keras.layers.BatchNormalization):  # ~1.4k, and predicted one class (10 %) with it
            layer.momentum = 0.9
    km.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    km.fit(x_tr.transpose(0, 2, 3, 1), y_tr, batch_size=128, epochs=args.epochs, verbose=2)
    keras_file = out / "fmnist_mnv2_035_32.keras"
    km.save(keras_file)
    keras_probs = km.predict(x_te.transpose(0, 2, 3, 1), batch_size=500, verbose=0)
    t_keras = time.time() - t0

    model = convert(keras_file, out / "imported.safetensors")  # what `mnv2 convert` writes
    with torch.inference_mode():
        fp32 = np.concatenate([model(torch.from_numpy(x_te[i : i + 500])).numpy() for i in range(0, len(x_te), 500)])
    x_cal, y_cal = arrays("train", model.meta.preprocessing, 2048)
    x_ev, y_ev = arrays("test", model.meta.preprocessing)
    assert np.array_equal(x_ev, x_te), "the checkpoint's preprocessing differs from the one Keras was fed"
    report = quantize(
        out / "imported.safetensors",
        out / "imported-int8.onnx",
        [(x_cal[i : i + 256], y_cal[i : i + 256]) for i in range(0, len(x_cal), 256)],
        [(x_ev[i : i + 500], y_ev[i : i + 500]) for i in range(0, len(x_ev), 500)],
    )
    int8 = load_engine(out / "imported-int8.onnx", engine="onnxruntime")
    q = np.concatenate([int8(x_te[i : i + 500]) for i in range(0, len(x_te), 500)])
    k_top, q_top = keras_probs.argmax(1), q.argmax(1)
    if (k_top == y_te).mean() < 0.5:
        raise SystemExit(f"the Keras model itself is at {100 * (k_top == y_te).mean():.1f}% top-1: nothing to compare")
    result = {
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "model": "keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), classes=10)",
        "train_images": len(y_tr),
        "epochs": args.epochs,
        "n_test": len(y_te),
        "keras_top1": float(100 * (k_top == y_te).mean()),
        "mnv2_fp32_top1": float(100 * (fp32.argmax(1) == y_te).mean()),
        "mnv2_fp32_vs_keras_max_abs_prob": float(np.abs(fp32 - keras_probs).max()),
        "mnv2_fp32_vs_keras_agreement": float(100 * (fp32.argmax(1) == k_top).mean()),
        "int8_top1": float(100 * (q_top == y_te).mean()),
        "int8_vs_keras_agreement": float(100 * (q_top == k_top).mean()),
        "quantize_method": report.method,
        "quantize_drop_vs_mnv2_fp32": report.drop,
        "seconds_keras": t_keras,
        "seconds_total": time.time() - t0,
    }
    (out / "agreement.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
