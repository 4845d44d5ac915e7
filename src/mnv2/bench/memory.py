"""Activation memory of MobileNetV2, dense and §5.1-streamed: the analytic accounting and the measured peak.

Analytic (:func:`memory_report`). §5.1 bounds a graph's memory by its worst single op,
``M(G) = max_op [Σ|inputs| + Σ|outputs| + |op|]``. Shapes come from a forward pass over the real module graph
(:func:`mnv2.bench.profile.summarize`), never from a retyped table. Per row (stem, each block, head, classifier):

* dense: every ConvNormAct is an op: ``|in| + |out|``, plus the block input while a shortcut still needs it;
* streamed (``mnv2.streaming``, the block as one op, §5.1): ``|in| + |out| + one slice`` where a slice is
  ``ceil(n / t)`` inner channels at the expansion's resolution plus the same channels after the depthwise (both
  live while the depthwise runs). The stem is fused into the first (t = 1) block, whose op input is then the
  image; the head is pooled slice by slice. ``splits="full"`` is the paper's limit
  ``|s²k| + |s′²k′| + O(max(s², s′²))``.

Table 3 (:meth:`MemoryReport.table3`) lists, per spatial size, the largest tensor streamed inference materialises
(block outputs, and the pooled 1x1 features) in 16-bit floats, as the paper's MobileNetV2 column.

Measured (:func:`measure_peak`): the allocator's peak above its level at the start, during a call. On CPU through
the PyTorch profiler's memory events (``profile_memory=True``: every allocation and free of c10's CPU allocator,
oneDNN scratch included, with its size); on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mnv2.bench.profile import summarize
from mnv2.models.mobilenetv2 import MobileNetV2
from mnv2.models.streaming import SPLITS_FULL, check_splits, slice_width

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
TABLE3_BYTES = BYTES_PER_ELEMENT["fp16"]  # Table 3: "16-bit floats"


@dataclass
class MemoryRow:
    """One op of the streamed graph (stem, a block, head, classifier); element counts per image."""

    name: str
    in_shape: tuple[int, ...]  # (C, H, W) or (F,)
    out_shape: tuple[int, ...]
    inner: int  # channels of the sliced inner tensor (0: nothing sliced)
    slice_channels: int
    dense_peak: int  # elements, dense eager graph with ideal liveness
    streamed_peak: int | None  # elements, §5.1; None when fused into the next row (the stem)
    note: str = ""
    after_input: bool = True  # the op does not read the image (an eager caller still holds it)


@dataclass
class MemoryReport:
    """Per-op dense and streamed activation peaks (elements, per image) and the whole-network maxima."""

    input_shape: tuple[int, ...]
    splits: int | str
    batch: int
    rows: list[MemoryRow] = field(default_factory=list)

    @property
    def dense_max(self) -> int:
        return self.batch * max(r.dense_peak for r in self.rows)

    @property
    def streamed_max(self) -> int:
        return self.batch * max(r.streamed_peak for r in self.rows if r.streamed_peak is not None)

    @property
    def streamed_max_held_input(self) -> int:
        """The streamed maximum when the caller keeps the input alive through the forward (any eager API does:
        the argument is referenced until the call returns), where §5.1's graph frees it after the first op."""
        image = _numel(self.input_shape)
        return self.batch * max(
            r.streamed_peak + (image if r.after_input else 0) for r in self.rows if r.streamed_peak is not None
        )

    def bound_bytes(self, dtype: str = "fp32", held_input: bool = False) -> int:
        """The §5.1 bound for this split count: the streamed whole-network maximum, in bytes."""
        return (self.streamed_max_held_input if held_input else self.streamed_max) * BYTES_PER_ELEMENT[dtype]

    def table3(self) -> list[dict]:
        """Table 3's MobileNetV2 column: per spatial size, the largest tensor streaming materialises (fp16)."""
        best: dict[tuple[int, ...], int] = {}
        for r in self.rows:
            if r.name.startswith("blocks.") or r.name == "head":
                spatial = r.out_shape[1:] if len(r.out_shape) == 3 else (1, 1)
                best[spatial] = max(best.get(spatial, 0), r.out_shape[0])
        rows = []
        for spatial in sorted(best, reverse=True):
            channels = best[spatial]
            elements = channels * spatial[0] * spatial[1]
            rows.append({"size": spatial, "channels": channels, "elements": elements, "bytes": elements * TABLE3_BYTES})
        return rows

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_max"], d["streamed_max"] = self.dense_max, self.streamed_max
        d["streamed_max_held_input"] = self.streamed_max_held_input
        d["bytes"] = {k: {"dense": self.dense_max * b, "streamed": self.streamed_max * b}
                      for k, b in BYTES_PER_ELEMENT.items()}  # fmt: skip
        d["table3"] = self.table3()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def format_table(self) -> str:
        kb = {k: 1000 / b for k, b in BYTES_PER_ELEMENT.items()}  # elements per kB
        head = (
            f"{'op':<12} {'input':>12} {'output':>12} {'slice':>9} {'dense':>10} {'streamed':>10}"
            f" {'dense kB fp32/fp16/int8':>24} {'streamed kB fp32/fp16/int8':>27}"
        )
        lines = [f"activation memory per op (elements per image, splits={self.splits})", head, "-" * len(head)]

        def kbs(n: int | None) -> str:
            return "fused" if n is None else "/".join(f"{n / kb[k]:.0f}" for k in BYTES_PER_ELEMENT)

        for r in self.rows:
            shape_in, shape_out = ("x".join(map(str, s)) for s in (r.in_shape, r.out_shape))
            sl = f"{r.slice_channels}/{r.inner}" if r.inner else "-"
            streamed = "fused" if r.streamed_peak is None else f"{r.streamed_peak:,}"
            lines.append(
                f"{r.name:<12} {shape_in:>12} {shape_out:>12} {sl:>9} {r.dense_peak:>10,} {streamed:>10}"
                f" {kbs(r.dense_peak):>24} {kbs(r.streamed_peak):>27}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"max (batch {self.batch}): dense {self.dense_max:,} elements, streamed {self.streamed_max:,} elements "
            f"({self.dense_max / self.streamed_max:.2f}x less); "
            f"{self.streamed_max_held_input:,} with the caller's input held through the forward"
        )
        for k, b in BYTES_PER_ELEMENT.items():
            lines.append(f"  {k}: dense {self.dense_max * b:,} B, streamed (§5.1 bound) {self.streamed_max * b:,} B")
        lines.append("Table 3, MobileNetV2 column (largest tensor materialised per spatial size, 16-bit floats):")
        for t in self.table3():
            size = "x".join(map(str, t["size"]))
            lines.append(f"  {size:>9}: {t['channels']:>5} channels, {t['bytes'] / 1000:>6.0f} kB")
        top = max(t["bytes"] for t in self.table3())
        lines.append(f"  {'max':>9}: {top / 1000:.0f} kB   (paper P-v4: 400K; see README for the CVPR 200K)")
        return "\n".join(lines)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def memory_report(
    model: MobileNetV2, resolution: int | tuple[int, int], splits: int | str = SPLITS_FULL, batch: int = 1
) -> MemoryReport:
    """Dense and §5.1-streamed activation peaks of ``model`` at ``resolution``, per op and whole network.

    ``splits`` is as :func:`mnv2.streaming`; figures are per image times ``batch`` for the maxima.
    """
    splits = check_splits(splits)
    summary = summarize(model, resolution)
    shape = {r.module: r.output_shape for r in summary.layers}
    image = summary.input_shape
    report = MemoryReport(input_shape=image, splits=splits, batch=batch)
    stem = shape["stem"]
    fuse_stem = not model.plan[0].has_expand  # as StreamingMobileNetV2: the stem is the t = 1 block's B
    report.rows.append(
        MemoryRow(
            "stem", image, stem, 0, 0, _numel(image) + _numel(stem),
            None if fuse_stem else _numel(image) + _numel(stem), "fused into blocks.0.0" if fuse_stem else "",
            after_input=False,
        )
    )  # fmt: skip
    prev = stem
    for spec in model.plan:
        name = spec.name
        d, out = shape[f"{name}.dw"], shape[f"{name}.project"]
        e = shape[f"{name}.expand"] if spec.has_expand else prev  # the inner tensor (the input itself when t = 1)
        keep = _numel(prev) if spec.use_residual else 0  # the shortcut keeps the block input alive
        ops = [_numel(prev) + _numel(e), keep + _numel(e) + _numel(d)] if spec.has_expand else [_numel(e) + _numel(d)]
        dense = max(*ops, keep + _numel(d) + _numel(out))
        n = d[0]
        c = slice_width(n, splits)
        op_in = image if (fuse_stem and spec is model.plan[0]) else prev
        if spec.has_expand or op_in is image:  # the slice of B's output is a new tensor
            inner_slice = c * _numel(e[1:])
        else:  # no expansion: slices are views of the block input
            inner_slice = 0
        streamed = _numel(op_in) + _numel(out) + inner_slice + c * _numel(d[1:])
        report.rows.append(MemoryRow(name, op_in, out, n, c, dense, streamed, after_input=op_in is not image))
        prev = out
    head = shape["head"]
    pooled = (head[0],)
    c = slice_width(head[0], splits)
    report.rows.append(
        MemoryRow(
            "head", prev, pooled, head[0], c,
            max(_numel(prev) + _numel(head), _numel(head) + _numel(pooled)),
            _numel(prev) + _numel(pooled) + c * _numel(head[1:]), "1x1 conv + ReLU6 + pool per slice",
        )
    )  # fmt: skip
    if "classifier" in shape:
        logits = shape["classifier"]
        both = _numel(pooled) + _numel(logits)
        report.rows.append(MemoryRow("classifier", pooled, logits, 0, 0, both, both))
    return report


# --- measured peak ---------------------------------------------------------------------------------------------


@dataclass
class PeakMeasurement:
    """Allocator peak during a call, in bytes above the level at its start, overall and per labelled range."""

    peak_bytes: int
    device: str
    per_label: dict[str, int] = field(default_factory=dict)  # peak while inside each record_function label


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints "USDT ... profiler_start/stop" lines from C++ on every run)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(fn: Callable[[], object], labels: tuple[str, ...]) -> PeakMeasurement:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)
    # The profiler's event tree (the API torch.profiler._memory_profiler builds on) holds each CPU allocation and
    # free with its size; the running sum in time order is the allocator's level above the start.
    events: list[tuple[int, int, str | None]] = []
    wanted = set(labels)

    def walk(event, label: str | None) -> None:
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size, label))
        elif event.name in wanted:
            label = event.name
        for child in event.children:
            walk(child, label)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, None)
    events.sort(key=lambda e: e[0])
    level = peak = 0
    per_label: dict[str, int] = {}
    for _, size, label in events:
        level += size
        peak = max(peak, level)
        if label is not None:
            per_label[label] = max(per_label.get(label, 0), level)
    return PeakMeasurement(peak, "cpu", per_label)


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> PeakMeasurement:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return PeakMeasurement(torch.cuda.max_memory_allocated(device) - start, str(device))


def measure_peak(
    fn: Callable[[], object], device: str | torch.device = "cpu", labels: tuple[str, ...] = ()
) -> PeakMeasurement:
    """Peak bytes the allocator holds during ``fn()`` above what it held at the start (not a formula).

    Whatever ``fn`` allocates counts — create the input inside it to count the input too. On CPU, ``labels``
    names ``torch.profiler.record_function`` ranges (``StreamingMobileNetV2`` labels each op, see
    :func:`label_modules` for a dense model) whose own peaks are reported in ``per_label``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    return _cpu_peak(fn, labels)


class label_modules:
    """Context manager: wrap the named submodules' forwards in ``record_function(name)`` ranges (for per-layer
    peaks of a dense model)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.modules = [(n, model.get_submodule(n)) for n in names]
        self.handles: list = []

    def __enter__(self) -> label_modules:
        from torch.profiler import record_function

        for name, module in self.modules:
            ranges: list = []

            def pre(_m, _a, name=name, ranges=ranges):
                r = record_function(name)
                r.__enter__()
                ranges.append(r)

            def post(_m, _a, _o, ranges=ranges):
                ranges.pop().__exit__(None, None, None)

            self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
