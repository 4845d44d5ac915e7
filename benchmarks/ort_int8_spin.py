"""ONNX Runtime INT8 (QDQ per-channel, MobileNetV2 1.0 @224, random weights) at batch 32, 2 threads: thread spinning
on vs off, interleaved, median img/s (BENCHMARKS.md, Deployment, idle-machine rerun).

    .venv/bin/python benchmarks/ort_int8_spin.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from mnv2 import create_model
from mnv2.export.onnx_export import ExportOptions, export_onnx, ort_session
from mnv2.export.quantize import quantize_onnx_static

d = Path(tempfile.mkdtemp())
m = create_model("mobilenetv2_100").eval()
export_onnx(m, d / "f.onnx", ExportOptions(fold_bn=True, dynamic_batch=True))
calib = np.random.default_rng(0).standard_normal((16, 3, 224, 224), dtype=np.float32)
quantize_onnx_static(d / "f.onnx", d / "q.onnx", calib, "minmax", per_channel=True, batch=8)
x = np.random.default_rng(1).standard_normal((32, 3, 224, 224), dtype=np.float32)
s = {k: ort_session(d / "q.onnx", 2, spin=k) for k in (True, False)}
for k in s:
    s[k].run(None, {s[k].get_inputs()[0].name: x})
res = {True: [], False: []}
for r in range(6):
    for k in s:
        t = time.perf_counter()
        s[k].run(None, {s[k].get_inputs()[0].name: x})
        res[k].append(32 / (time.perf_counter() - t))
print({k: round(float(np.median(v)), 1) for k, v in res.items()})
