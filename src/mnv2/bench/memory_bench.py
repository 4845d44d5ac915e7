"""``mnv2 bench --memory``: measured peak activation memory and latency of §5.1 streaming vs the dense model.

For each width and split count, in one run: the allocator's measured peak during a batch forward of the dense
eager model and of :func:`mnv2.streaming` (:func:`mnv2.bench.memory.measure_peak`), the analytic §5.1 bound
(:func:`mnv2.bench.memory.memory_report`), and latency. Latencies are measured interleaved — each repeat times the
dense model (NCHW and channels-last input) and every split count back to back — and reported as medians and as
the median of the per-repeat ratios against the faster dense layout, so that load from other processes on a
shared machine moves both sides alike.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from mnv2.bench.memory import PeakMeasurement, label_modules, measure_peak, memory_report
from mnv2.models import mobilenet_v2
from mnv2.models.mobilenetv2 import MobileNetV2, check_resolution
from mnv2.models.streaming import SPLITS_FULL, check_splits, streaming

DEFAULT_WIDTHS = (0.35, 1.0)
DEFAULT_SPLITS: tuple[int | str, ...] = (1, 2, 4, 6, SPLITS_FULL)
LATENCY_TARGET = 1.5  # issue 5: streamed latency at t <= 6 within 1.5x dense (paper: t = 2..5 is the sweet spot)


@dataclass
class MemoryBenchRow:
    """One (width, resolution, splits) measurement. Bytes are allocator bytes above the level before the call."""

    width: float
    resolution: int
    batch: int
    splits: int | str
    dense_peak_bytes: int  # measured, dense eager model (the lower of NCHW and channels-last input)
    streamed_peak_bytes: int  # measured, mnv2.streaming
    bound_bytes: int  # analytic §5.1 bound for this split count (fp32)
    bound_held_input_bytes: int  # the same with the caller's input alive through the forward
    dense_ms: float  # median latency, dense eager model, NCHW input (the default layout)
    dense_cl_ms: float  # median latency, dense eager model, channels-last input
    streamed_ms: float
    latency_ratio: float  # median over repeats of streamed / the faster dense layout, timed back to back

    @property
    def peak_over_bound(self) -> float:
        return self.streamed_peak_bytes / self.bound_bytes

    @property
    def dense_over_streamed(self) -> float:
        return self.dense_peak_bytes / self.streamed_peak_bytes

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["peak_over_bound"] = round(self.peak_over_bound, 4)
        d["dense_over_streamed"] = round(self.dense_over_streamed, 4)
        return d


def make_input(batch: int, resolution: int, channels_last: bool, device: str = "cpu") -> torch.Tensor:
    """A random image batch allocated directly in its memory format (no temporary in the other format)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(batch, 3, resolution, resolution, memory_format=fmt, device=device).normal_()


def _measure_forward(fn, batch: int, resolution: int, channels_last: bool, device: str, labels=()) -> PeakMeasurement:
    # The input is created inside the measured call, so the measured peak counts it as the analytic bound does.
    def call() -> None:
        with torch.inference_mode():
            fn(make_input(batch, resolution, channels_last, device))

    call()  # warm-up: one-off allocations (oneDNN primitive caches) are not activation memory
    return measure_peak(call, device, labels)


def dense_peak(model: MobileNetV2, batch: int, resolution: int, device: str = "cpu") -> int:
    """Measured peak of the dense eager model, the lower of NCHW and channels-last input."""
    return min(_measure_forward(model, batch, resolution, cl, device).peak_bytes for cl in (False, True))


def streamed_peak(model: MobileNetV2, splits: int | str, batch: int, resolution: int, device: str = "cpu") -> int:
    """Measured peak of ``mnv2.streaming(model, splits)`` (channels-last input: the layout it runs in)."""
    return _measure_forward(streaming(model, splits), batch, resolution, True, device).peak_bytes


def _time(fn, x: torch.Tensor, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def run_width(
    width: float,
    resolution: int = 224,
    splits_list: tuple[int | str, ...] = DEFAULT_SPLITS,
    batch: int = 1,
    repeats: int = 7,
    device: str = "cpu",
    progress: bool = True,
) -> list[MemoryBenchRow]:
    """Measure one width: peaks (dense and every split count), bounds, and interleaved latencies."""
    from tqdm.auto import tqdm

    check_resolution(resolution)
    splits_list = tuple(check_splits(s) for s in splits_list)
    model = mobilenet_v2(width_mult=width).eval().to(device)
    dense = dense_peak(model, batch, resolution, device)
    wrapped = {s: streaming(model, s) for s in splits_list}
    peaks = {s: streamed_peak(model, s, batch, resolution, device) for s in splits_list}
    reports = {s: memory_report(model, resolution, s, batch) for s in splits_list}
    x_dense = make_input(batch, resolution, False, device)
    x_cl = make_input(batch, resolution, True, device)
    for s in splits_list:  # warm-up
        _time(wrapped[s], x_cl, device)
    _time(model, x_dense, device)
    _time(model, x_cl, device)
    times: dict = {s: [] for s in ("dense", "dense_cl", *splits_list)}
    for _ in tqdm(range(repeats), desc=f"latency width {width}", disable=not progress, leave=False):
        times["dense"].append(_time(model, x_dense, device))
        times["dense_cl"].append(_time(model, x_cl, device))
        for s in splits_list:
            times[s].append(_time(wrapped[s], x_cl, device))
    # the faster dense layout by median (a per-repeat min of two noisy timings would be biased low)
    best_dense = min(times["dense"], times["dense_cl"], key=statistics.median)
    rows = []
    for s in splits_list:
        ratios = [t / d for t, d in zip(times[s], best_dense)]
        rows.append(
            MemoryBenchRow(
                width, resolution, batch, s, dense, peaks[s], reports[s].bound_bytes(),
                reports[s].bound_bytes(held_input=True), statistics.median(times["dense"]),
                statistics.median(times["dense_cl"]), statistics.median(times[s]), statistics.median(ratios),
            )
        )  # fmt: skip
    return rows


def best_split(rows: list[MemoryBenchRow]) -> MemoryBenchRow:
    """The lowest measured peak among split counts within the latency target (1.5x dense); else the fastest."""
    within = [r for r in rows if r.latency_ratio <= LATENCY_TARGET]
    if within:
        return min(within, key=lambda r: (r.streamed_peak_bytes, r.latency_ratio))
    return min(rows, key=lambda r: r.latency_ratio)


def format_rows(rows: list[MemoryBenchRow]) -> str:
    head = (
        f"{'width':>5} {'res':>4} {'batch':>5} {'splits':>6} {'streamed B':>11} {'§5.1 bound B':>12} {'x bound':>7}"
        f" {'bound+input B':>13} {'dense B':>11} {'dense/str':>9} {'dense ms':>8} {'dns CL ms':>9} {'str ms':>8}"
        f" {'lat x':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.width:>5} {r.resolution:>4} {r.batch:>5} {r.splits!s:>6} {r.streamed_peak_bytes:>11,}"
            f" {r.bound_bytes:>12,} {r.peak_over_bound:>7.2f} {r.bound_held_input_bytes:>13,}"
            f" {r.dense_peak_bytes:>11,} {r.dense_over_streamed:>9.2f} {r.dense_ms:>8.2f} {r.dense_cl_ms:>9.2f}"
            f" {r.streamed_ms:>8.2f}"
            f" {r.latency_ratio:>6.2f}"
        )
    return "\n".join(lines)


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def plot_memory_per_layer(
    width: float, resolution: int, path: str, splits_list: tuple[int | str, ...] = (4, SPLITS_FULL)
) -> dict:
    """PNG: activation memory per op (fp32 kB), dense vs streamed, measured and analytic, with the §5.1 bound.

    Measured curves are the allocator's peak while inside each op (a ``record_function`` range per block), so they
    include everything alive then (the caller's input too). Returns the plotted figures.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = mobilenet_v2(width_mult=width).eval()
    full = memory_report(model, resolution, SPLITS_FULL)
    names = [r.name for r in full.rows]
    with label_modules(model, names):
        dense = _measure_forward(model, 1, resolution, False, "cpu", tuple(names)).per_label
    measured = {
        s: _measure_forward(streaming(model, s), 1, resolution, True, "cpu", tuple(names)).per_label
        for s in splits_list
    }
    kb = 4 / 1000
    image = full.input_shape[0] * full.input_shape[1] * full.input_shape[2]
    xs = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(12, 5.5))
    dense_analytic = [(r.dense_peak + (image if r.name != "stem" else 0)) * kb for r in full.rows]
    ax.plot(xs, dense_analytic, "o--", color="tab:red", alpha=0.6,
            label="dense, analytic (ideal liveness: op in + out) + caller's input")  # fmt: skip
    ax.plot(xs, [dense.get(n, float("nan")) / 1000 for n in names], "o-", color="tab:red",
            label="dense eager, measured (allocator)")  # fmt: skip
    colors = ("tab:blue", "tab:green", "tab:purple", "tab:orange")
    for color, s in zip(colors, splits_list):
        report = memory_report(model, resolution, s)
        peak = measured[s]
        ys = [peak.get(n, float("nan")) / 1000 for n in names]
        ax.plot(xs, ys, "s-", color=color, label=f"streamed t={s}, measured")
        analytic = [
            float("nan") if r.streamed_peak is None else (r.streamed_peak + (image if r.after_input else 0)) * kb
            for r in report.rows
        ]
        ax.plot(xs, analytic, "s:", color=color, alpha=0.6, label=f"streamed t={s}, analytic §5.1 + caller's input")
    bound = full.bound_bytes() / 1000
    ax.axhline(bound, color="black", lw=1.2, label=f"§5.1 bound, whole network (t=n): {bound:.0f} kB")
    top3 = max(t["bytes"] for t in full.table3()) * 2 / 1000  # Table 3 is fp16: the same tensor in fp32
    ax.axhline(top3, color="gray", lw=1, ls="--", label=f"Table 3 max (P-v4 400K fp16) in fp32: {top3:.0f} kB")
    ax.set_yscale("log")
    ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("peak activation memory while in op (kB, fp32, batch 1)")
    ax.set_title(f"MobileNetV2 {width} @{resolution}: activation memory per layer, dense vs §5.1 streaming")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"names": names, "dense_measured": dense, "streamed_measured": {str(k): v for k, v in measured.items()}}
