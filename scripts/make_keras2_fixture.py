"""Generate a real Keras 2 (tf-keras) whole-model .h5 for the Keras interop tests: tests/fixtures/keras2/.

Keras 2 needs TensorFlow, which mnv2 does not depend on, so the file is made here once and committed. Run it in a
separate environment (not the project .venv):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf-keras h5py
    /tmp/tfenv/bin/python scripts/make_keras2_fixture.py

The model is the standard transfer-learning shape: ``tf_keras.applications.MobileNetV2(include_top=False)`` nested
as a sub-model, then GlobalAveragePooling2D, Dropout and a Dense softmax head. BatchNorm moving statistics are
randomised and the model is trained for a few steps, so BN statistics and weights are non-trivial. Reference inputs
(sizes that stay even down to stride 32, in [-1, 1] as Keras' preprocess_input) and the Keras outputs are saved as a
plain .npz.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
import tf_keras

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keras2"
ALPHA, CLASSES = 0.35, 5


def build() -> tf_keras.Model:
    # input_shape=None: any resolution, as transfer-learning code often builds it. Keras then pads stride-2 depthwise
    # convs (0, 1) whatever the size (correct_pad with an unknown shape), which is TF SAME only while every
    # stride-2 input is even, so the references use such sizes (96, 64x128); odd sizes are tested with fixed-shape
    # Keras 3 models.
    base = tf_keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=ALPHA, include_top=False, weights=None)
    inputs = tf_keras.Input((None, None, 3))
    x = base(inputs)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    x = tf_keras.layers.Dropout(0.3)(x)
    outputs = tf_keras.layers.Dense(CLASSES, activation="softmax", name="head")(x)
    return tf_keras.Model(inputs, outputs, name="transfer")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1801)
    tf.random.set_seed(4381)
    model = build()
    # Moving statistics measured on random batches (momentum 0 = take the batch's), then perturbed: activations
    # stay well scaled through the depth, so the outputs depend on the input and on every BN statistic.
    bns = [la for la in model.get_layer(index=1).layers if isinstance(la, tf_keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(rng.uniform(-1, 1, (16, 64, 64, 3)).astype("float32"), training=True)
    for layer in bns:
        layer.momentum = 0.999
        gamma, _beta, mean, var = layer.get_weights()
        n = gamma.shape[0]
        mean = mean + rng.normal(0, 0.1, n) * np.sqrt(var)
        var = var * rng.uniform(0.7, 1.4, n) + 0.05  # a floor: near-zero variances would amplify rounding noise
        layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), mean, var])
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    x = rng.uniform(-1, 1, (16, 64, 64, 3)).astype("float32")
    y = rng.integers(0, CLASSES, 16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 10, bias])  # sharper probabilities: the outputs differ clearly between inputs
    model.save(OUT / "keras2_transfer_035.h5", include_optimizer=False)  # tf-keras 2: HDF5 whole-model format
    refs = {}
    for h, w in ((96, 96), (64, 128)):
        inp = rng.uniform(-1, 1, (2, h, w, 3)).astype("float32")
        refs[f"input_{h}x{w}"] = inp
        refs[f"probs_{h}x{w}"] = model.predict(inp, verbose=0)
    np.savez(OUT / "reference.npz", **refs)
    meta = {
        "generator": "scripts/make_keras2_fixture.py",
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
    }
    meta.update({"alpha": ALPHA, "classes": CLASSES, "activation": "softmax"})
    (OUT / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(meta, {k: v.shape for k, v in refs.items()})


if __name__ == "__main__":
    main()
