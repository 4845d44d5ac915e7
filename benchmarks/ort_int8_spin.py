"""ONNX Runtime INT8 (QDQ per-channel, MobileNetV2 1.0 @224, random weights) at batch 32 with 2 threads: thread
spinning on vs off, called in turn, median img/s (BENCHMARKS.md, Deployment, idle-machine rerun).

    .venv/bin/python benchmarks/ort_int8_spin.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from mnv2 import create_model
from mnv2.deploy.exporters.onnx import ExportOptions, export_onnx, ort_session
from mnv2.deploy.quantize import quantize_onnx_static


def main(rounds: int = 6, batch: int = 32) -> None:
    d = Path(tempfile.mkdtemp())
    export_onnx(create_model("mobilenetv2_100").eval(), d / "f.onnx", ExportOptions(fold_bn=True, dynamic_batch=True))
    calib = np.random.default_rng(0).standard_normal((16, 3, 224, 224), dtype=np.float32)
    quantize_onnx_static(d / "f.onnx", d / "q.onnx", calib, "minmax", per_channel=True, batch=8)
    x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    sessions = {spin: ort_session(d / "q.onnx", 2, spin=spin) for spin in (True, False)}
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds + 1):  # the first round warms up
        for spin, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            rates[spin].append(batch / (time.perf_counter() - t))
    for spin, r in rates.items():
        print(f"spinning {'on ' if spin else 'off'}: {np.median(r[1:]):.1f} img/s (median of {rounds})")


if __name__ == "__main__":
    main()
