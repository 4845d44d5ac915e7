"""Inference speed: mnv2's engines against the peers that install here, measured in one run.

Each round times every engine in turn, each in a block of consecutive calls after its own warm-up (batch-1
latency: median/p90 of ``iters_1`` calls; batch-N throughput: ``iters_n`` calls); rounds alternate the engine
order. Figures are medians over rounds; ratios against the fastest peer are taken *within* each round, then the
median, so drift in machine-wide load (the CI/dev machine is shared) cancels out of the ratios.

Peers (``peer=True``): ONNX Runtime on a plain ``torch.onnx.export`` with a default session, TFLite (LiteRT
interpreter, XNNPACK) on a plain ``litert-torch`` conversion, torch eager (the unfused torchvision-style model),
and Hugging Face transformers' ``MobileNetV2ForImageClassification`` eager. All run with the same thread count.

Weights are random (speed does not depend on them); the INT8 models are calibrated on random inputs for the same
reason. Accuracy of INT8 is ``mnv2 quantize``'s job, not this one's.

Distance to the hardware limit: every run also times a large fp32 matmul on the same thread count
(:func:`measure_matmul_peak`) and reports each engine's achieved GFLOP/s (2 x the model's multiply-adds per image,
from :func:`mnv2.bench.profile.summarize`, x images/s) as a fraction of that peak.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mnv2.errors import ConfigError


@dataclass
class BenchRecord:
    """One engine at one batch size: the row ``mnv2 bench --json`` prints."""

    engine: str
    peer: bool
    precision: str
    batch: int
    median_ms: float  # per call (per batch)
    p90_ms: float
    images_per_s: float
    ratio_vs_fastest_peer: float | None  # latency ratio at batch 1 (lower is better), throughput ratio at batch N
    fastest_peer: str | None
    rounds: int
    note: str = ""
    # Distance to the hardware limit. gflops = 2 * madds_per_image * images_per_s / 1e9: the model's useful work
    # (mnv2's own MAdds counter; BN, activations and padding are not counted), fp32-equivalent for int8/bf16 rows.
    gflops: float | None = None
    peak_fraction: float | None = None  # gflops / peak_gflops: the fp32 matmul peak measured in the same run
    madds_per_image: int | None = None
    peak_gflops: float | None = None
    peak_threads: int | None = None
    peak_n: int | None = None  # side of the square matmul that measured peak_gflops

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    name: str
    peer: bool
    precision: str
    make: Callable[[int], Callable[[np.ndarray], object]]  # batch -> run(x)
    note: str = ""


def _blocks(runs: dict, x: np.ndarray, iters: int, warmup: int, slow_ms: float) -> dict:
    """Per-call times (ms) of every engine, engine by engine: ``warmup`` untimed calls, then ``iters`` in a row.

    Why blocks, not calls interleaved one by one across engines (this bench's first design): an engine called
    right after another one finds the other's worker threads still busy. ONNX Runtime's spin by default, and
    LiteRT's batch-1 call took 4.6-5.4 ms right after an ORT call against 2.2 ms after its own (BENCHMARKS.md,
    Deployment). Its caches also hold the other engine's weights. A deployed engine runs warm and alone.
    An engine slower than ``slow_ms`` per call (torch/HF eager) is timed 3 times.
    """
    times: dict = {}
    for key, run in runs.items():
        for _ in range(warmup):
            run(x)
        times[key] = []
        for _ in range(iters):
            t = time.perf_counter()
            run(x)
            times[key].append((time.perf_counter() - t) * 1e3)
            if times[key][0] > slow_ms and len(times[key]) == 3:
                break
    return times


def measure_matmul_peak(threads: int, n: int = 2048, warmup: int = 2, repeats: int = 5, budget_s: float = 2.0) -> float:
    """This machine's fp32 peak in GFLOP/s: the median of ``repeats`` timed ``n`` x ``n`` matmuls on ``threads``.

    A large square fp32 GEMM is the best-tuned kernel torch has (oneDNN/MKL), so it is the practical ceiling for
    fp32 compute on these cores; one call is 2 n^3 FLOPs. Timed calls stop once ``budget_s`` has been spent (after
    at least 3), so a loaded machine does not make the bench much longer. The previous thread count is restored.
    """
    if threads < 1 or n < 1 or repeats < 1:
        raise ConfigError("threads, n and repeats must all be >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        # randn, not zeros/ones: no special values that a kernel could shortcut, no denormals
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        c = torch.empty(n, n)
        with torch.inference_mode():
            for _ in range(warmup):  # thread pool start-up, page faults, packing buffers
                torch.mm(a, b, out=c)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < repeats:
                t = time.perf_counter()
                torch.mm(a, b, out=c)
                times.append(time.perf_counter() - t)
                if len(times) >= 3 and time.perf_counter() - start > budget_s:
                    break
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / statistics.median(times) / 1e9


def model_madds(model_name: str, resolution: int) -> int:
    """Multiply-adds per image of ``model_name`` at ``resolution``, counted by ``mnv2 summary``'s counter."""
    from mnv2.bench.profile import summarize as profile_summary
    from mnv2.models import create_model

    return profile_summary(create_model(model_name).eval(), resolution).madds


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def build_candidates(
    model_name: str, resolution: int, threads: int, workdir: Path, peers: bool = True, int8: bool = True
) -> list[Candidate]:
    """Every engine and peer that can run here, each with a factory ``batch -> run``."""
    from mnv2.data.preprocessing import Preprocessing
    from mnv2.deploy.exporters.onnx import ExportOptions, export_onnx, ort_session
    from mnv2.deploy.runtime.engines import TorchEngine, converting_engines, open_file_engine
    from mnv2.models import create_model
    from mnv2.models.fold import fold_batchnorm
    from mnv2.weights.checkpoint import CheckpointMeta

    torch.set_num_threads(threads)
    model = create_model(model_name).eval()
    meta = CheckpointMeta(model_config=model.config, preprocessing=Preprocessing(input_size=resolution))
    installed = converting_engines()
    fp32_path = workdir / "mnv2-fp32.onnx"

    def fp32() -> Path:
        # Exported on first use: the export takes tens of seconds on a busy 2-core machine, and a run restricted
        # to engines that do not read it (``--engines torch``) should not pay for it.
        if not fp32_path.exists():
            export_onnx(model, fp32_path, ExportOptions(fold_bn=True, dynamic_batch=True), meta=meta)
        return fp32_path

    out: list[Candidate] = []

    def once(factory):  # build lazily, reuse for every batch size
        box = {}

        def make(batch):
            if "run" not in box:
                box["run"] = factory()
            return box["run"]

        return make

    if "onnxruntime" in installed:
        out.append(
            Candidate(
                "mnv2 onnxruntime",
                False,
                "fp32",
                once(lambda: open_file_engine("onnxruntime", fp32(), "fp32", threads)),
            )
        )
    if "openvino" in installed:
        out.append(
            Candidate(
                "mnv2 openvino", False, "fp32", once(lambda: open_file_engine("openvino", fp32(), "fp32", threads))
            )
        )
        out.append(
            Candidate(
                "mnv2 openvino",
                False,
                "bf16",
                once(lambda: open_file_engine("openvino", fp32(), "bf16", threads)),
                "bf16 compute: not fp32-accurate",
            )
        )
    if "litert" in installed:

        def litert():
            from mnv2.deploy.exporters.edge import export_other

            tfl = workdir / "mnv2-fp32-b1.tflite"
            export_other("tflite", fold_batchnorm(model), tfl, ExportOptions.for_format("tflite"), meta=meta)
            return open_file_engine("litert", tfl, "fp32", threads)

        out.append(Candidate("mnv2 litert", False, "fp32", once(litert), "XNNPACK, BN folded"))
    out.append(Candidate("mnv2 torch", False, "fp32", once(lambda: TorchEngine(model, "<bench>", threads))))
    if int8 and "onnxruntime" in installed:
        from mnv2.deploy.quantize import quantize_onnx_static

        q = workdir / "mnv2-int8.onnx"
        calib = np.random.default_rng(0).standard_normal((16, 3, resolution, resolution), dtype=np.float32)
        quantize_onnx_static(fp32(), q, calib, "minmax", per_channel=True, batch=8)
        note = "QDQ per-channel, calibrated on random data (speed only)"
        out.append(
            Candidate(
                "mnv2 onnxruntime",
                False,
                "int8",
                once(lambda: open_file_engine("onnxruntime", q, "int8", threads)),
                note,
            )
        )
        if "openvino" in installed:
            out.append(
                Candidate(
                    "mnv2 openvino", False, "int8", once(lambda: open_file_engine("openvino", q, "int8", threads)), note
                )
            )
    if int8 and "litert" in installed:

        def litert_int8():
            from mnv2.deploy.quantize import quantize_tflite_static

            tfl = workdir / "mnv2-int8.tflite"
            calib = np.random.default_rng(0).standard_normal((16, 3, resolution, resolution), dtype=np.float32)
            quantize_tflite_static(fold_batchnorm(model), tfl, calib, "minmax")
            return open_file_engine("litert", tfl, "int8", threads)

        note = "PT2E int8 TFLite (XNNPACK), calibrated on random data (speed only)"
        out.append(Candidate("mnv2 litert", False, "int8", once(litert_int8), note))
    if not peers:
        return out

    # --- peers ---
    plain = workdir / "plain.onnx"
    x = torch.randn(1, 3, resolution, resolution)
    with _quiet():
        torch.onnx.export(
            model, (x,), str(plain), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
        )  # fmt: skip
    if "onnxruntime" in installed:

        def ort_plain():
            s = ort_session(plain, threads)  # default options but the same thread count as everyone
            name = s.get_inputs()[0].name
            return lambda a: s.run(None, {name: a})

        out.append(Candidate("onnxruntime (plain export)", True, "fp32", once(ort_plain)))

    def torch_eager():
        def run(a):
            with torch.inference_mode():
                return model(torch.from_numpy(a))

        return run

    out.append(Candidate("torch eager (unfused)", True, "fp32", once(torch_eager)))

    if importlib.util.find_spec("transformers") is not None:

        def hf():
            from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

            m = MobileNetV2ForImageClassification(MobileNetV2Config(image_size=resolution)).eval()

            def run(a):
                with torch.inference_mode():
                    return m(pixel_values=torch.from_numpy(a)).logits

            return run

        out.append(Candidate("hf transformers eager", True, "fp32", once(hf)))

    if importlib.util.find_spec("litert_torch") and importlib.util.find_spec("ai_edge_litert"):
        tfl_cache: dict[int, Callable] = {}

        def tflite(batch):  # static shapes: one conversion per batch size
            if batch not in tfl_cache:
                import litert_torch
                from ai_edge_litert.interpreter import Interpreter

                path = workdir / f"plain-b{batch}.tflite"
                with _quiet():
                    litert_torch.convert(model, (torch.randn(batch, 3, resolution, resolution),)).export(str(path))
                it = Interpreter(str(path), num_threads=threads)
                it.allocate_tensors()
                i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

                def run(a, it=it, i=i, o=o):
                    it.set_tensor(i, a)
                    it.invoke()
                    return it.get_tensor(o)

                tfl_cache[batch] = run
            return tfl_cache[batch]

        out.append(Candidate("tflite xnnpack (litert)", True, "fp32", tflite))
    return out


def run_bench(
    model_name: str = "mobilenetv2_100",
    resolution: int = 224,
    batch: int = 32,
    rounds: int = 3,
    threads: int = 2,
    iters_1: int = 30,
    iters_n: int = 4,
    peers: bool = True,
    int8: bool = True,
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    slow_ms: float = 200.0,
    peak_n: int = 2048,
) -> list[BenchRecord]:
    """Measure every candidate at batch 1 and ``batch``, in blocks over ``rounds``; return the records.

    Each record also carries its achieved GFLOP/s and the fraction of this machine's fp32 matmul peak, measured
    once in this run on ``threads`` threads with an ``peak_n`` x ``peak_n`` matmul.
    """
    if rounds < 1 or batch < 1 or iters_1 < 1 or iters_n < 1 or threads < 1:
        raise ConfigError("rounds, batch, iters and threads must all be >= 1")
    with tempfile.TemporaryDirectory() as d:
        cands = build_candidates(model_name, resolution, threads, Path(d), peers=peers, int8=int8)
        if only:
            cands = [c for c in cands if any(o in c.name for o in only)]
            if not cands:
                raise ConfigError(f"no engine matches {only!r}")
        madds = model_madds(model_name, resolution)
        # Before any engine is timed: ORT's and XNNPACK's worker threads spin for a while after a call, which would
        # steal cores from the matmul and understate the peak.
        if progress:
            progress(f"fp32 matmul peak on {threads} threads (n={peak_n})")
        peak = measure_matmul_peak(threads, n=peak_n)
        rng = np.random.default_rng(0)
        inputs = {b: rng.standard_normal((b, 3, resolution, resolution), dtype=np.float32) for b in (1, batch)}
        # lat[(name, precision)][b] = per-round list of per-call times (ms)
        lat: dict[tuple[str, str], dict[int, list[list[float]]]] = {}
        for r in range(rounds):
            for b in (1, batch):
                if progress:
                    progress(f"round {r + 1}/{rounds}: batch {b}, {len(cands)} engines")
                order = cands if r % 2 == 0 else cands[::-1]
                runs = {(c.name, c.precision): c.make(b) for c in order}
                n = iters_1 if b == 1 else iters_n
                times = _blocks(runs, inputs[b], n, warmup=3 if b == 1 else 1, slow_ms=slow_ms * b)
                for key, ts in times.items():
                    lat.setdefault(key, {}).setdefault(b, []).append(ts)
    return summarize_runs(cands, lat, batch, rounds, madds=madds, peak_gflops=peak, peak_threads=threads, peak_n=peak_n)


def summarize_runs(
    cands: list[Candidate],
    lat,
    batch: int,
    rounds: int,
    madds: int | None = None,
    peak_gflops: float | None = None,
    peak_threads: int | None = None,
    peak_n: int | None = None,
) -> list[BenchRecord]:
    """Per-engine medians and within-round ratios against the fastest fp32 peer; GFLOP/s and fraction of the peak
    when the model's ``madds`` per image and the measured ``peak_gflops`` are given."""
    records = []
    peer_keys = [(c.name, c.precision) for c in cands if c.peer and c.precision == "fp32"]
    for b in sorted({1, batch}):
        round_med = {k: [statistics.median(ts) for ts in v[b]] for k, v in lat.items()}
        fastest = min(peer_keys, key=lambda k: statistics.median(round_med[k])) if peer_keys else None
        for c in cands:
            key = (c.name, c.precision)
            all_calls = [t for ts in lat[key][b] for t in ts]
            med = statistics.median(round_med[key])
            ratio = None
            ips = b * 1e3 / med
            gflops = 2 * madds * ips / 1e9 if madds is not None else None
            fraction = gflops / peak_gflops if gflops is not None and peak_gflops else None
            if fastest is not None:
                # batch 1: latency ratio (lower is better); batch N: throughput ratio (higher is better)
                per_round = [
                    (m / f) if b == 1 else (f / m) for m, f in zip(round_med[key], round_med[fastest], strict=True)
                ]
                ratio = statistics.median(per_round)
            records.append(
                BenchRecord(
                    engine=c.name,
                    peer=c.peer,
                    precision=c.precision,
                    batch=b,
                    median_ms=med,
                    p90_ms=float(np.percentile(all_calls, 90)),
                    images_per_s=ips,
                    ratio_vs_fastest_peer=ratio,
                    fastest_peer=f"{fastest[0]} {fastest[1]}" if fastest else None,
                    rounds=rounds,
                    note=c.note,
                    gflops=gflops,
                    peak_fraction=fraction,
                    madds_per_image=madds,
                    peak_gflops=peak_gflops,
                    peak_threads=peak_threads,
                    peak_n=peak_n,
                )
            )
    return records


def format_table(records: list[BenchRecord], batch: int) -> str:
    """Side-by-side table: batch-1 latency and batch-N throughput per engine, with ratios vs the fastest peer, and
    batch-N GFLOP/s with its fraction of the fp32 matmul peak measured in the same run (one line states the peak)."""
    rows: dict[tuple[str, str], dict[int, BenchRecord]] = {}
    for r in records:
        rows.setdefault((r.engine, r.precision), {})[r.batch] = r
    head = (
        f"{'engine':<28}{'prec':<6}{'peer':<6}{'b1 med ms':>10}{'b1 p90':>8}{'b1 ×peer':>10}"
        f"{f'b{batch} img/s':>12}{f'b{batch} ×peer':>11}{f'b{batch} GFLOP/s':>13}{'% of peak':>11}"
    )
    lines = [head, "-" * len(head)]
    for (name, prec), by_b in rows.items():
        one, n = by_b.get(1), by_b.get(batch)

        def ratio(x):
            return f"{x:.2f}" if x is not None else "-"

        # 3 significant digits, not a fixed 1 decimal: a small model at a small resolution is well under 1 GFLOP/s
        gflops = f"{n.gflops:.3g}" if n.gflops is not None else "-"
        frac = f"{100 * n.peak_fraction:.3g}" if n.peak_fraction is not None else "-"
        lines.append(
            f"{name:<28}{prec:<6}{('yes' if one.peer else ''):<6}{one.median_ms:>10.2f}{one.p90_ms:>8.2f}"
            f"{ratio(one.ratio_vs_fastest_peer):>10}{n.images_per_s:>12.1f}{ratio(n.ratio_vs_fastest_peer):>11}"
            f"{gflops:>13}{frac:>11}"
        )
    first = records[0] if records else None
    if first is not None and first.fastest_peer:
        peers1 = {r.fastest_peer for r in records if r.batch == 1}
        peersn = {r.fastest_peer for r in records if r.batch == batch}
        lines.append(
            f"×peer: batch-1 latency / fastest peer's ({', '.join(peers1)}; lower is better); batch-{batch} "
            f"throughput / fastest peer's ({', '.join(peersn)}; higher is better). Medians of per-round ratios."
        )
    if first is not None and first.peak_gflops is not None:
        lines.append(
            f"fp32 matmul peak on {first.peak_threads} threads: {first.peak_gflops:.1f} GFLOP/s, n={first.peak_n} "
            f"(median of timed {first.peak_n}x{first.peak_n} torch matmuls, measured in this run)."
        )
        madds = f"{first.madds_per_image / 1e6:.1f} M" if first.madds_per_image is not None else "the model's"
        lines.append(
            f"GFLOP/s = 2 × {madds} MAdds/image (mnv2 summary) × b{batch} img/s; % of peak: of that peak. "
            f"int8 and bf16 rows: fp32-equivalent GFLOP/s, as a % of the fp32 peak."
        )
    return "\n".join(lines)
