"""``mnv2 bench --task detection|segmentation``: batch-1 latency of the paper's other two models on every engine.

SSDLite-MobileNetV2 1.0 @320 with COCO's 90 classes (§6.2, Table 6) and Mobile DeepLabv3 1.0 at output stride 16
without ASPP, 21 classes (§6.3, Table 7), random weights (speed does not depend on them). Each engine runs the
file ``mnv2 export`` writes (parity-checked on the way): the detector with its boxes decoded in the graph (NMS is
the host's and not timed; it is the same on every engine). Timing as ``mnv2 bench``: engines in blocks, rounds in
alternating order, medians, and the fp32 matmul peak measured first for the fraction of peak.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mnv2.bench.speed import _blocks, measure_matmul_peak
from mnv2.errors import ConfigError


@dataclass
class TaskBenchRecord:
    task: str
    engine: str
    height: int
    width: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    madds: int
    gflops: float
    peak_fraction: float
    peak_gflops: float
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def build_task_model(task: str, height: int, width: int):
    """The task's paper model (``Task.paper``, random weights) and its checkpoint metadata for one input size."""
    from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
    from mnv2.engine.config import paper_model
    from mnv2.tasks import get_inference, get_task
    from mnv2.weights.checkpoint import CheckpointMeta

    torch.manual_seed(0)
    if height != width and get_inference(task).fixed_size:
        raise ConfigError(f"a {task} model is benchmarked at square sizes (its input has one size)")
    model, _ = paper_model(task, padding="tf")  # the TF models' "SAME" padding, as published
    names = [str(i) for i in range(get_task(task).paper.num_classes)]
    pre = Preprocessing(input_size=min(height, width), crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    meta = CheckpointMeta(model.config, pre, names, task=task, head=model.head_config)
    model.meta = meta
    return model.eval(), meta


def _madds(model: torch.nn.Module, height: int, width: int) -> int:
    from mnv2.bench.profile import summarize

    return summarize(model, (height, width)).madds


def _engines(model, meta, height: int, width: int, threads: int, workdir: Path, only: list[str] | None) -> dict:
    """name -> run(x) for every installed engine that runs this model at this size."""
    from mnv2.deploy.exporters.edge import export_other
    from mnv2.deploy.exporters.onnx import ExportOptions, export_onnx
    from mnv2.deploy.runtime.engines import TorchEngine, converting_engines, open_file_engine

    runs = {"torch": TorchEngine(model, "bench", threads)}
    size = (height, width)  # a fixed-size graph, TF padding as the paper's models (--input-size WxH in the CLI)
    onnx_path = workdir / f"{meta.task}-{height}x{width}.onnx"
    installed = converting_engines()
    want = [e for e in ("onnxruntime", "openvino", "litert") if e in installed and (not only or e in only)]
    if {"onnxruntime", "openvino"} & set(want):
        export_onnx(model, onnx_path, ExportOptions(dynamic_batch=False, input_size=size), meta=meta)
        for name in {"onnxruntime", "openvino"} & set(want):
            runs[name] = open_file_engine(name, onnx_path, "fp32", threads)
    if "litert" in want:
        tfl = workdir / f"{meta.task}-{height}x{width}.tflite"
        export_other("tflite", model, tfl, ExportOptions.for_format("tflite", input_size=size), meta=meta)
        runs["litert"] = open_file_engine("litert", tfl, "fp32", threads)
    return {k: v for k, v in runs.items() if not only or k in only}


def run_task_bench(
    task: str,
    sizes: list[tuple[int, int]] | None = None,
    threads: int = 2,
    rounds: int = 3,
    iters: int = 20,
    only: list[str] | None = None,
    progress=None,
) -> list[TaskBenchRecord]:
    """Batch-1 latency of ``task``'s paper model on every installed engine, at each of ``sizes`` (H, W)."""
    if rounds < 1 or iters < 1 or threads < 1:
        raise ConfigError("rounds, iters and threads must all be >= 1")
    from mnv2.tasks import get_task

    paper = get_task(task).paper
    if paper is None or paper.recipe is None:
        raise ConfigError(f"--task {task!r}: the task bench times the models a recipe builds (detection, segmentation)")
    sizes = sizes or list(paper.sizes)
    torch.set_num_threads(threads)
    if progress:
        progress(f"fp32 matmul peak on {threads} threads")
    peak = measure_matmul_peak(threads)
    records = []
    with tempfile.TemporaryDirectory() as d:
        for h, w in sizes:
            model, meta = build_task_model(task, h, w)
            if progress:
                progress(f"{task} {h}x{w}: exporting to each engine (parity-checked)")
            runs = _engines(model, meta, h, w, threads, Path(d), only)
            x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for r in range(rounds):
                if progress:
                    progress(f"{task} {h}x{w}: round {r + 1}/{rounds}")
                order = dict(list(runs.items())[:: 1 if r % 2 == 0 else -1])
                for k, ts in _blocks(order, x, iters, warmup=3, slow_ms=2000).items():
                    times[k] += ts
            madds = _madds(model, h, w)
            for k, ts in times.items():
                ms = statistics.median(ts)
                gflops = 2 * madds / (ms / 1e3) / 1e9
                records.append(TaskBenchRecord(task, k, h, w, round(ms, 2), round(float(np.percentile(ts, 90)), 2),
                                               round(1e3 / ms, 1), madds, round(gflops, 1), round(gflops / peak, 3),
                                               round(peak, 1), threads))  # fmt: skip
    return records


def format_task_table(records: list[TaskBenchRecord]) -> str:
    lines = ["| task | size (HxW) | engine | batch-1 median (ms) | p90 (ms) | img/s | GFLOP/s | of fp32 peak |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in records:
        lines.append(f"| {r.task} | {r.height}x{r.width} | {r.engine} | {r.median_ms:.2f} | {r.p90_ms:.2f} | "
                     f"{r.images_per_s:.1f} | {r.gflops:.1f} | {100 * r.peak_fraction:.1f}% |")  # fmt: skip
    if records:
        r = records[0]
        lines.append(f"\n{r.madds / 1e9:.2f}B multiply-adds per image at {r.height}x{r.width}; fp32 matmul peak "
                     f"{r.peak_gflops:.0f} GFLOP/s on {r.threads} threads (measured in this run)")  # fmt: skip
    return "\n".join(lines)
