"""Is LiteRT/XNNPACK INT8 a faster INT8 engine than ONNX Runtime's QDQ? (issue 6: INT8 >= 2x mnv2 fp32).

Builds MobileNetV2 1.0 @224 (random weights, non-trivial BN statistics), exports mnv2's fp32 TFLite (BN folded,
the `mnv2 litert` engine of `mnv2 bench`), quantizes it with Google's ai-edge-quantizer (static int8 weights and
activations, per-channel weights, min/max calibration on N(0,1) inputs: this measures speed, not accuracy) and
with mnv2's own path (``quantize_tflite_static``: PT2E + litert-torch, as ``mnv2 quantize --out x.tflite``), and
times fp32 vs both int8 files on the same XNNPACK interpreter at batch 1 and 32, calls taken in turn.

    python benchmarks/litert_int8.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnv2.data.preprocessing import Preprocessing
from mnv2.deploy.exporters.edge import export_other
from mnv2.deploy.exporters.onnx import ExportOptions
from mnv2.deploy.quantize import quantize_tflite_static
from mnv2.deploy.runtime.engines import LiteRtEngine
from mnv2.models.fold import fold_batchnorm
from mnv2.models.registry import mobilenet_v2
from mnv2.weights.checkpoint import CheckpointMeta


def quantize_tflite(float_path: Path, out: Path, samples: int = 16) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    interp = Interpreter(str(float_path))
    ((key, sig),) = interp.get_signature_list().items()
    name = sig["inputs"][0]
    shape = interp.get_signature_runner(key).get_input_details()[name]["shape"]
    rng = np.random.default_rng(0)
    data = {key: [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(samples)]}
    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    qt.quantize(qt.calibrate(data), enable_progress_report=False).export_model(str(out), overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = mobilenet_v2(width_mult=1.0, num_classes=1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    meta = CheckpointMeta(model.config, Preprocessing(input_size=224))
    with tempfile.TemporaryDirectory() as d:
        fp32, int8, pt2e = Path(d) / "fp32.tflite", Path(d) / "int8.tflite", Path(d) / "pt2e.tflite"
        export_other("tflite", fold_batchnorm(model), fp32, ExportOptions(dynamic_batch=False), meta=meta)
        t0 = time.perf_counter()
        quantize_tflite(fp32, int8)
        sizes = f"{fp32.stat().st_size >> 10} KiB -> {int8.stat().st_size >> 10} KiB"
        print(f"quantized in {time.perf_counter() - t0:.1f} s: {sizes}")
        t0 = time.perf_counter()
        calib = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
        quantize_tflite_static(fold_batchnorm(model), pt2e, calib, "histogram")  # what `mnv2 quantize` runs
        print(f"pt2e-quantized in {time.perf_counter() - t0:.1f} s: {pt2e.stat().st_size >> 10} KiB")
        engines = {k: LiteRtEngine(p, args.threads) for k, p in (("fp32", fp32), ("int8", int8), ("pt2e", pt2e))}
        x1 = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
        x32 = np.random.default_rng(2).standard_normal((32, 3, 224, 224)).astype(np.float32)
        ref = engines["fp32"].run(x32)
        for k in ("int8", "pt2e"):
            got = engines[k].run(x32)
            print(f"{k} vs fp32 top-1 agreement on random inputs: {(ref.argmax(1) == got.argmax(1)).mean():.2%}")
        for batch, x, iters in ((1, x1, 40), (32, x32, 4)):
            times = {k: [] for k in engines}
            for e in engines.values():
                e.run(x)  # warm up at this shape
            for _ in range(args.rounds):
                for k, e in engines.items():
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        e.run(x)
                    times[k].append((time.perf_counter() - t0) / iters)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k in engines:
                ratio = statistics.median(f / i for f, i in zip(times["fp32"], times[k], strict=True))
                ms, ips = med[k] * 1e3, batch / med[k]
                print(f"batch {batch:2d} {k:5s}: {ms:7.2f} ms, {ips:6.1f} img/s, {ratio:.2f}x fp32")


if __name__ == "__main__":
    main()
