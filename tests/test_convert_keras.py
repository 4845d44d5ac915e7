"""Parity with real Keras 3 models (torch backend) and a real Keras 2 (tf-keras) file.

Keras 3 models are built here: random init with well-scaled, perturbed BN statistics, and one trained for a few
steps. The Keras 2 file was made by scripts/make_keras2_fixture.py where TensorFlow runs (tests/fixtures/keras2/).
"""

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported anywhere

from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest
import torch

import mnv2
import mnv2.weights.convert.common
import mnv2.weights.hub
from mnv2.data import TF_MEAN, TF_STD
from mnv2.models.layers import BN_MOMENTUM_KERAS
from mnv2.weights.convert import ConvertError, convert

PROB_ATOL, LOGIT_ATOL = 1e-6, 1e-5  # the bounds
KERAS2 = Path(__file__).parent / "fixtures" / "keras2"
# Keras 3 with NumPy 2 warns on every variable read; noise here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def calibrate(keras, model, base, shape, rng):
    """Moving statistics measured on a random batch (momentum 0), then perturbed and floored; random gamma/beta."""
    bns = [la for la in base.layers if isinstance(la, keras.layers.BatchNormalization)]
    for la in bns:
        la.momentum = 0.0
    model(rng.uniform(-1, 1, (8, *shape, 3)).astype("float32"), training=True)
    for la in bns:
        la.momentum = 0.999
        gamma, _, mean, var = la.get_weights()
        n = gamma.shape[0]
        la.set_weights(
            [
                rng.uniform(0.5, 1.5, n),
                rng.normal(0, 0.2, n),
                mean + rng.normal(0, 0.1, n) * np.sqrt(var),
                var * rng.uniform(0.7, 1.4, n) + 0.05,
            ]
        )


def keras_out(keras, model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def mnv2_out(model, x_nhwc, features=False):
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return (model.forward_features(x).permute(0, 2, 3, 1) if features else model(x)).numpy()


def save_application_weights(keras, model, path):
    """Write weights exactly as the keras-applications files are laid out (Keras 2 ``save_weights`` HDF5)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def app_file(tmp_path, alpha, rows, top):
    return (
        tmp_path / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{'' if top else '_no_top'}.h5"
    )


@pytest.fixture(scope="module")
def app_035_96(keras, tmp_path_factory):
    """keras.applications.MobileNetV2(alpha=0.35, 96 px, 1000 classes, softmax): the shape of an official file."""
    rng = np.random.default_rng(35)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    calibrate(keras, model, model, (96, 96), rng)
    path = save_application_weights(keras, model, app_file(tmp_path_factory.mktemp("app"), 0.35, 96, True))
    return model, path


def test_application_weight_file_with_top(keras, app_035_96):
    model, path = app_035_96
    converted = convert(path)
    c = converted.config
    assert (c.width_mult, c.num_classes, c.padding, c.bn_eps, c.output) == (0.35, 1000, "tf", 1e-3, "softmax")
    assert c.bn_momentum == BN_MOMENTUM_KERAS
    meta = converted.meta
    assert meta.preprocessing.input_size == 96 and (meta.preprocessing.mean, meta.preprocessing.std) == (
        TF_MEAN,
        TF_STD,
    )
    assert meta.class_names[0] == "tench" and len(meta.class_names) == 1000 and meta.source["output"] == "softmax"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    assert np.abs(mnv2_out(converted, x) - keras_out(keras, model, x)).max() <= PROB_ATOL
    # The same model saved whole (.keras, the application's inline head) and as Keras 3 weights (.weights.h5).
    model.save(path.with_name("app.keras"))
    model.save_weights(path.with_name("app.weights.h5"))
    for other in ("app.keras", "app.weights.h5"):
        again = convert(path.with_name(other))
        assert again.config == c and np.abs(mnv2_out(again, x) - keras_out(keras, model, x)).max() <= PROB_ATOL
    logits = convert(path, output="logits")
    assert logits.config.output == "logits"
    np.testing.assert_allclose(torch.from_numpy(mnv2_out(logits, x)).softmax(-1).numpy(), mnv2_out(converted, x))


@pytest.mark.parametrize(("alpha", "shape", "top"), [(0.5, (75, 83), True), (1.0, (64, 64), False)])
def test_application_weight_files_other_widths_and_odd_sizes(keras, alpha, shape, top, tmp_path):
    rng = np.random.default_rng(int(alpha * 100))
    model = keras.applications.MobileNetV2(
        input_shape=(*shape, 3), alpha=alpha, weights=None, include_top=top, classes=11, classifier_activation=None
    )
    calibrate(keras, model, model, shape, rng)
    # A weights file does not say how the head ends; keras.applications' default is softmax, this model has none.
    path = save_application_weights(keras, model, app_file(tmp_path, alpha, shape[0], top))
    converted = convert(path, output="logits")
    assert converted.config.width_mult == alpha and converted.config.num_classes == (11 if top else 0)
    x = rng.uniform(-1, 1, (2, *shape, 3)).astype("float32")
    diff = np.abs(mnv2_out(converted, x, features=not top) - keras_out(keras, model, x)).max()
    assert diff <= LOGIT_ATOL  # logits (top) or the 1280-channel feature map (no top)


@pytest.fixture(scope="module")
def trained_transfer(keras, tmp_path_factory):
    """The transfer-learning shape, trained for a few steps: Rescaling -> nested MobileNetV2 -> pool -> dropout ->
    Dense softmax, at a fixed odd input size."""
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    shape = (97, 97)
    base = keras.applications.MobileNetV2(input_shape=(*shape, 3), alpha=0.5, include_top=False, weights=None)
    inputs = keras.Input((*shape, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    x = keras.layers.Dropout(0.25)(x)
    head = keras.layers.Dense(4, activation="softmax")
    model = keras.Model(inputs, head(x))
    calibrate(keras, model, base, shape, rng)
    before = [w.copy() for w in base.get_layer("Conv_1_bn").get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    model.fit(rng.uniform(0, 255, (12, *shape, 3)), rng.integers(0, 4, 12), batch_size=4, epochs=1, verbose=0)
    after = base.get_layer("Conv_1_bn").get_weights()
    assert not np.allclose(before[2], after[2])  # training moved the BN moving mean
    d = tmp_path_factory.mktemp("transfer")
    model.save(d / "model.h5")
    model.save(d / "model.keras")
    return model, d, shape


@pytest.mark.parametrize("ext", ["h5", "keras"])
def test_trained_transfer_model_matches(keras, trained_transfer, ext, tmp_path):
    model, d, shape = trained_transfer
    convert(d / f"model.{ext}", out=tmp_path / "m.safetensors")
    converted = mnv2.load_checkpoint(tmp_path / "m.safetensors")
    c, pre = converted.config, converted.meta.preprocessing
    assert (c.width_mult, c.num_classes, c.output, c.dropout, c.padding) == (0.5, 4, "softmax", 0.25, "tf")
    assert pre.input_size == 97 and pre.mean == pytest.approx(TF_MEAN) and pre.std == pytest.approx(TF_STD)
    assert converted.meta.source["format"] == ("keras_v3" if ext == "keras" else "h5")
    rng = np.random.default_rng(1)
    low, high = rng.uniform(0, 64, (1, *shape, 3)), rng.uniform(192, 255, (1, *shape, 3))  # dark, bright
    pixels = np.concatenate([low, high, rng.uniform(0, 255, (1, *shape, 3))]).astype("float32")
    # Keras sees raw pixels (its Rescaling layer); mnv2 sees them normalised by the recorded preprocessing.
    normalised = (pixels / 255 - np.array(pre.mean, dtype="float32")) / np.array(pre.std, dtype="float32")
    expected = keras_out(keras, model, pixels)
    assert np.abs(mnv2_out(converted, normalised) - expected).max() <= PROB_ATOL
    # The outputs depend on the input far beyond the tolerance, so a wrong layer could not hide under it.
    assert np.abs(expected[0] - expected[1]).max() > 100 * PROB_ATOL


def test_dynamic_shape_sequential_linear_head(keras, tmp_path):
    rng = np.random.default_rng(3)
    base = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=0.35, include_top=False, weights=None)
    model = keras.Sequential(
        [keras.Input((None, None, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )
    calibrate(keras, model, base, (64, 64), rng)
    model.save(tmp_path / "seq.keras")
    converted = convert(tmp_path / "seq.keras")
    assert converted.config.output == "logits" and converted.meta.preprocessing.input_size == 224
    assert "unknown input size" in converted.meta.source["padding_note"]
    x = rng.uniform(-1, 1, (2, 64, 128, 3)).astype("float32")  # every stride-2 input even: see README
    assert np.abs(mnv2_out(converted, x) - keras_out(keras, model, x)).max() <= LOGIT_ATOL


@pytest.mark.parametrize("size", ["96x96", "64x128"])
def test_real_keras2_h5_matches(size):
    ref = np.load(KERAS2 / "reference.npz")
    converted = convert(KERAS2 / "keras2_transfer_035.h5")
    assert converted.meta.source["keras_version"].startswith("2.")
    assert (converted.config.width_mult, converted.config.num_classes, converted.config.output) == (0.35, 5, "softmax")
    assert np.abs(mnv2_out(converted, ref[f"input_{size}"]) - ref[f"probs_{size}"]).max() <= PROB_ATOL


def test_unsupported_keras_models_are_refused_by_name(keras, tmp_path):
    base = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
    inputs = keras.Input((64, 64, 3))
    scaled = keras.layers.Lambda(lambda t: t / 127.5 - 1, name="my_lambda")(inputs)
    lam = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base(scaled))))
    lam.save(tmp_path / "lambda.h5")
    with pytest.raises(ConvertError, match="'my_lambda' is a Lambda: it holds arbitrary Python code"):
        convert(tmp_path / "lambda.h5")
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalMaxPooling2D(name="maxpool")(base(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(pooled)).save(tmp_path / "max.keras")
    with pytest.raises(ConvertError, match=r"'maxpool' \(GlobalMaxPooling2D\) is not supported"):
        convert(tmp_path / "max.keras")
    data = (tmp_path / "max.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=r"truncated|damaged"):
        convert(tmp_path / "cut.keras")
    data = (tmp_path / "lambda.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(ConvertError, match="truncated"):
        convert(tmp_path / "cut.h5")


def test_official_keras_entry_downloads_converts_once(keras, app_035_96, http_server, tmp_path):
    """The registry's real entry for keras' 0.35/96 file, served from 127.0.0.1 (same name, same layout)."""
    model, path = app_035_96
    base, files = http_server
    entry = mnv2.weights.hub.get_pretrained("mobilenetv2_035.keras_in1k_r96")
    assert entry.files[0].url.endswith(path.name) and entry.files[0].sha256 is None
    u = urlparse(entry.files[0].url)
    files.routes[f"/{u.netloc}{u.path}"] = path.read_bytes()
    kw = {"weights": "keras_in1k_r96", "cache_dir": tmp_path, "mirror": base, "progress": False}
    loaded = mnv2.create_model("mobilenetv2_035", **kw)
    assert loaded.meta.source["integrity"] == "trust-on-first-use"
    assert loaded.meta.metrics["tf_slim_top1"] == 45.5
    x = np.random.default_rng(5).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    assert np.abs(mnv2_out(loaded, x) - keras_out(keras, model, x)).max() <= PROB_ATOL
    mnv2.create_model("mobilenetv2_035", **kw)
    assert len(files.requests) == 1
    cached = next((tmp_path / "downloads").rglob(path.name))
    assert cached.with_name(cached.name + ".sha256").read_text().strip() == mnv2.weights.convert.common.sha256_file(
        path
    )
    with open(cached, "r+b") as f:  # the cached file changes after its first download
        f.seek(5000)
        f.write(b"\x00" * 16)
    with pytest.raises(ConvertError, match="changed since its first download"):
        mnv2.create_model("mobilenetv2_035", **kw)
