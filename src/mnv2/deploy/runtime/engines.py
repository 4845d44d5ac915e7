"""Inference engines behind one small API, with the fastest installed one picked for this CPU.

>>> engine = load_engine("model.safetensors")          # auto: fastest installed engine, fp32-accurate
>>> probs_or_logits = engine(batch)                   # batch: preprocessed float NCHW numpy array

Engines (all fp32-accurate unless the precision says otherwise):

- ``onnxruntime``: the checkpoint exported once (BN folded, verified) and cached on disk; ORT CPU session with
  full graph optimizations (NCHWc layout on AVX-512), ``threads`` intra-op threads, no inter-op pool, and thread
  spinning only when no other job runs at session creation (sleeping workers were 1.5-2.7x faster on a shared
  2-core machine; spinning ones 1.35x faster for INT8 on an idle one).
- ``openvino``: the same ONNX compiled by OpenVINO's CPU plugin (oneDNN; int8 via VNNI, bf16 via AVX512-BF16 or
  AMX), with the LATENCY hint for batch 1 and the THROUGHPUT hint (several streams) for larger batches.
  ``precision="bf16"`` is *not* fp32-accurate and is reported separately.
- ``litert``: the checkpoint converted once to TFLite (litert-torch, parity-checked) and run by the LiteRT
  interpreter with XNNPACK; the same kernels as the TFLite peer. Batch 1 runs on one interpreter with ``threads``
  threads; larger batches are split over one single-thread interpreter per thread, fed image by image.
- ``torch``: fallback needing nothing else: BN folded into the convs, channels_last, ``inference_mode``.

INT8: pass an INT8 ONNX file from ``mnv2 quantize`` (``onnxruntime`` or ``openvino`` run its QDQ graph).

Sessions are cached per (file, mtime, engine, precision, threads): the second ``load_engine`` for the same model is
free, which is what a server calling ``predict`` per request needs.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnv2.deploy.runtime.card import fixed_input_hw, read_card, read_model_metadata
from mnv2.errors import ConfigError
from mnv2.extras import require_torch

ENGINES = ("onnxruntime", "openvino", "litert", "torch")
PRECISIONS = ("fp32", "bf16", "int8")
ONNX_ENGINES = ("onnxruntime", "openvino")
# Measured order on this project's machine kind (BENCHMARKS.md, Deployment, `mnv2 bench`): fp32, LiteRT/XNNPACK was
# fastest at batch 32 (1.7x ONNX Runtime with lanes, idle) and on par at batch 1, then ONNX Runtime, then OpenVINO;
# torch eager, even BN-folded, is far behind. INT8: OpenVINO's VNNI kernels ran the same QDQ file 1.7x faster than
# ONNX Runtime at batch 32 under load, 0.7x when idle (equal at batch 1). LiteRT runs only INT8 TFLite files
# (``mnv2 quantize --out x.tflite``), the fastest INT8 path measured (1.25-1.5x ONNX Runtime's int8, 1.9-2.04x the
# best fp32, at batch 32). ``load_engine`` picks among the engines that read the file's format.
FP32_PREFERENCE = ("litert", "onnxruntime", "openvino", "torch")
INT8_PREFERENCE = ("litert", "openvino", "onnxruntime")
CACHE_SIZE = 8
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert", "torch": "torch"}


def installed_engines() -> list[str]:
    """The engines whose packages import here: each runs the files of its format (``runtime`` install: onnxruntime
    and litert)."""
    return [name for name in ENGINES if importlib.util.find_spec(_PACKAGES[name]) is not None]


def converting_engines() -> list[str]:
    """The engines that can also run a checkpoint, converting it on the fly: torch, plus ``onnx`` for the ONNX
    engines and ``litert-torch`` for LiteRT."""
    if importlib.util.find_spec("torch") is None:
        return []
    needs = {"onnxruntime": "onnx", "openvino": "onnx", "litert": "litert_torch", "torch": "torch"}
    return [name for name in installed_engines() if importlib.util.find_spec(needs[name]) is not None]


def pick_engine(precision: str = "fp32", installed: list[str] | None = None) -> str:
    """The fastest installed engine for ``precision`` on this CPU (order measured, see module doc)."""
    installed = installed_engines() if installed is None else installed
    order = INT8_PREFERENCE if precision == "int8" else FP32_PREFERENCE
    if precision == "bf16":
        order = ("openvino",)
    for name in order:
        if name in installed:
            return name
    raise ConfigError(
        f"no installed engine runs precision {precision!r} here; install openvino, onnxruntime or ai-edge-litert"
    )


@dataclass
class Engine:
    """A ready-to-run model: ``engine(x)`` maps a float NCHW numpy batch to the model's outputs."""

    name: str
    precision: str
    source: str
    threads: int | None
    output_kind: str | None = None  # the exported file's output kind (detection: "boxes_scores"); None: the model's own
    input_hw: tuple[int, int] | None = None  # the exported graph's fixed (height, width); None: any size (torch)

    def answers(self, info: dict) -> dict:
        """``info`` (``card_inference``'s) as this engine answers: a checkpoint run through an exported file takes the
        file's output kind and fixed input size (the task's ``prepare``/``results`` resize for it)."""
        extra = {"output": self.output_kind} if self.output_kind else {}
        if self.input_hw:
            extra["input_hw"] = self.input_hw
        return {**info, **extra}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))

    def io_shapes(self) -> tuple[list, list] | None:
        """The graph's own input and output shapes (symbolic dimensions as names); None where unknown (torch)."""
        return None

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class TorchEngine(Engine):
    """PyTorch eager, BN folded, channels_last. A checkpoint's task may trace another module for export
    (``Task.export_module``: a detector with its boxes decoded); the engine runs that module, so its outputs are
    the exported file's and one inference half reads every engine's (``mnv2.tasks.infer``)."""

    def __init__(self, model, source: str, threads: int | None, task=None) -> None:
        import torch

        from mnv2.models.fold import fold_batchnorm

        super().__init__("torch", "fp32", source, threads)
        model = fold_batchnorm(model)
        if task is not None and task.export_module is not None:
            size = model.meta.preprocessing.input_size
            model, self.output_kind = task.export_module(model, (size, size))
        self.model = model.to(memory_format=torch.channels_last)

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            out = self.model(t)
            return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


def ort_session(path_or_bytes, threads: int | None = None, optimize: bool = True, spin: bool = True):
    """An ONNX Runtime CPU session; ``threads`` sets intra-op threads (default: ORT's, = physical cores).

    ``spin=False`` stops idle worker threads from busy-waiting between ops: on a machine whose cores are shared
    with other work, spinning threads steal the time the working ones need (BENCHMARKS.md, Deployment).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


class OrtEngine(Engine):
    def __init__(self, onnx_path: Path, precision: str, threads: int | None, spin: bool | None = None) -> None:
        from mnv2.cpu import runnable_others

        super().__init__("onnxruntime", precision, str(onnx_path), threads)
        # Spinning workers are faster on idle cores (INT8 batch 32: 1.35x) and much slower on shared ones
        # (fp32 batch 1: 2.7x); decide by what runs now (BENCHMARKS.md, Deployment).
        self.spin = runnable_others() == 0 if spin is None else spin
        self.session = ort_session(onnx_path, threads, spin=self.spin)
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def io_shapes(self) -> tuple[list, list]:
        return list(self.session.get_inputs()[0].shape), list(self.session.get_outputs()[0].shape)


class LiteRtEngine(Engine):
    """LiteRT's interpreter (XNNPACK). A fully-integer file (``mnv2 quantize --out x.tflite``) takes int8 input and
    gives int8 output, as TFLite integer models do on phones: the engine quantizes the float batch with the input
    tensor's own scale and zero point and dequantizes the output, so callers see float in and out either way."""

    def __init__(self, tflite_path: Path, threads: int | None, precision: str = "fp32") -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().__init__("litert", precision, str(tflite_path), threads)
        self.n_threads = threads or os.cpu_count() or 1
        self.interp = Interpreter(str(tflite_path), num_threads=self.n_threads)
        self.interp.allocate_tensors()
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.input, self.output = inp["index"], out["index"]
        self.in_dtype, self.in_q = inp["dtype"], inp["quantization"]  # (scale, zero_point); scale 0: float
        self.out_q = out["quantization"] if np.issubdtype(out["dtype"], np.integer) else (0.0, 0)
        self.batch = 1
        self.lock = threading.Lock()
        self.lanes: list | None = None  # one single-thread interpreter per thread, made at the first large batch
        self.pool: Any = None  # the lanes' worker threads
        self.single_image_file = int(inp["shape"][0]) == 1  # mnv2's and litert-torch's exports: batch 1
        self.resizable = True  # until XNNPACK refuses a new batch size (see _resize)

    def io_shapes(self) -> tuple[list, list]:
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        return [int(d) for d in inp["shape"]], [int(d) for d in out["shape"]]

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            if self.n_threads > 1 and len(x) >= 2 * self.n_threads and self.single_image_file:
                y = self._run_lanes(x)
            elif len(x) != self.batch and not self._resize(len(x)):  # a graph fixed at batch 1: image by image
                y = np.concatenate([self._invoke(self.interp, x[i : i + 1]) for i in range(len(x))])
            else:
                y = self._invoke(self.interp, x)
        if self.out_q[0]:
            return (y.astype(np.float32) - self.out_q[1]) * np.float32(self.out_q[0])
        return y

    def _resize(self, batch: int) -> bool:
        """Re-plan the interpreter for ``batch`` images (XNNPACK takes a new batch size when nothing in the graph
        fixes it). A graph with batch-1 constants (a detector's anchors) refuses: then it stays at batch 1."""
        if not self.resizable:
            return False
        shape = [batch, *self.interp.get_input_details()[0]["shape"][1:]]
        try:
            self.interp.resize_tensor_input(self.input, shape)
            self.interp.allocate_tensors()
        except RuntimeError:
            self.resizable = False
            self.interp.resize_tensor_input(self.input, [1, *shape[1:]])
            self.interp.allocate_tensors()
            self.batch = 1
            return False
        self.batch = batch
        return True

    def _invoke(self, interp: Any, x: np.ndarray) -> np.ndarray:
        if self.in_q[0]:  # quantized here, per call: a lane's one image stays in cache (a whole batch-32 is 23 ms)
            info = np.iinfo(self.in_dtype)
            x = np.clip(np.round(x / self.in_q[0]) + self.in_q[1], info.min, info.max).astype(self.in_dtype)
        interp.set_tensor(self.input, x)
        interp.invoke()
        return interp.get_tensor(self.output).copy()

    def _run_lanes(self, x: np.ndarray) -> np.ndarray:
        """A batch streamed image by image through one single-thread interpreter per thread, the lanes in parallel
        (``invoke`` releases the GIL), each taking the next image when it is free: a lane slowed by other work on its
        core (a server decoding uploads) leaves the rest to the other lanes instead of keeping the batch waiting.

        Why: one image's activations (≤ 4.8 MB fp32 at 224 px) stay in cache where a whole batch's (150 MB at
        batch 32) stream through memory, and the lanes never wait for each other between ops. Measured 1.31x the
        one-interpreter, 2-thread batch-32 throughput on this project's 2-core machine (BENCHMARKS.md).
        """
        from concurrent.futures import ThreadPoolExecutor

        from ai_edge_litert.interpreter import Interpreter

        if self.lanes is None:
            self.lanes = [Interpreter(self.source, num_threads=1) for _ in range(self.n_threads)]
            for lane in self.lanes:  # the file is exported at batch 1, so a lane never resizes
                lane.allocate_tensors()
            self.pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="mnv2-litert")
        out: list[Any] = [None] * len(x)
        todo = iter(range(len(x)))  # shared: a lane takes the next image when it is free (next() holds the GIL)

        def work(lane: Any) -> None:
            for i in todo:
                out[i] = self._invoke(lane, x[i : i + 1])

        list(self.pool.map(work, self.lanes))  # re-raises a lane's error
        return np.concatenate(out)


class OpenVinoEngine(Engine):
    def __init__(self, onnx_path: Path, precision: str, threads: int | None) -> None:
        import openvino as ov

        super().__init__("openvino", precision, str(onnx_path), threads)
        self.core = ov.Core()
        self.requests: dict[str, Any] = {}
        self.lock = threading.Lock()

    def _request(self, hint: str):
        if hint not in self.requests:
            config = {
                "PERFORMANCE_HINT": hint,
                # f32 keeps fp32 accuracy; OpenVINO would otherwise pick bf16 on AMX/AVX512-BF16 CPUs by itself.
                # An INT8 (QDQ) model keeps f32 for its non-quantized ops.
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            }
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = self.threads
            self.requests[hint] = self.core.compile_model(self.source, "CPU", config).create_infer_request()
        return self.requests[hint]

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.lock:  # one infer request per hint: serialise callers (a server makes one engine per worker)
            return self._request("LATENCY" if len(x) == 1 else "THROUGHPUT").infer({0: x})[0].copy()


_CACHE: OrderedDict[tuple, Engine] = OrderedDict()
_LOCK = threading.Lock()


def export_cache_dir() -> Path:
    """Where exported ONNX files of checkpoints are kept: ``onnx/`` in mnv2's cache (:func:`mnv2.files.cache_dir`)."""
    from mnv2 import files

    return files.cache_dir() / "onnx"


def _onnx_for_checkpoint(path: Path) -> Path:
    """Export a checkpoint once (keyed by its content hash) and reuse the file afterwards."""
    from mnv2.deploy.exporters.onnx import ExportOptions, export_onnx
    from mnv2.files import sha256_file

    digest = sha256_file(path)
    out = export_cache_dir() / f"{digest[:24]}-fp32.onnx"
    if not out.is_file():
        export_onnx(
            path, out, ExportOptions(fold_bn=True, dynamic_batch=True), extra_metadata={"checkpoint_sha256": digest}
        )
    return out


def _tflite_for_checkpoint(path: Path) -> Path:
    """Convert a checkpoint once to TFLite (batch 1, parity-checked) and reuse the file afterwards."""
    from mnv2.deploy.exporters.edge import export_other
    from mnv2.deploy.exporters.onnx import ExportOptions
    from mnv2.files import sha256_file
    from mnv2.weights.checkpoint import load_checkpoint

    out = export_cache_dir() / f"{sha256_file(path)[:24]}-fp32-b1.tflite"
    if not out.is_file():
        export_other("tflite", load_checkpoint(path), out, ExportOptions.for_format("tflite"))
    return out


def _is_int8(path: Path) -> bool:
    return read_model_metadata(path).get("precision") == "int8"


def _converts_on_the_fly(path: Path) -> bool:
    """Whether ``auto`` converts this checkpoint for the export engines (ONNX/TFLite with parity; detection with its
    boxes decoded in the graph): only tasks whose inputs have one size. A segmentation checkpoint runs on torch under
    ``auto``: torch takes each image at its own size, while an export has one and would resize every image to it.
    Export a segmenter at its images' size (``mnv2 export --input-size 480x360``) and pass that file: every engine
    then runs it (``mnv2.tasks.infer.segmentation``)."""
    from mnv2.tasks import get_inference

    task, _ = read_card(path)
    return get_inference(task).fixed_size


# Which engines read which exported file (a checkpoint runs on every engine, converted and cached as needed).
FILE_ENGINES = {".onnx": ONNX_ENGINES, ".tflite": ("litert",)}


def check_engine(engine: str) -> None:
    """``engine`` is ``auto`` or one of :data:`ENGINES` (installed or not); ``ConfigError`` otherwise."""
    if engine != "auto" and engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose auto or one of {', '.join(ENGINES)}")


def open_file_engine(name: str, path: str | Path, precision: str, threads: int | None) -> Engine:
    """The engine ``name`` (``onnxruntime``, ``openvino`` or ``litert``) on an exported file: the one place that
    maps an engine's name to its class (``load_engine``, ``mnv2 bench speed`` and the task bench all build here)."""
    if name == "litert":
        return LiteRtEngine(Path(path), threads, precision)
    if name == "onnxruntime":
        return OrtEngine(Path(path), precision, threads)
    if name == "openvino":
        return OpenVinoEngine(Path(path), precision, threads)
    raise ConfigError(f"engine {name!r} does not run exported files; use one of {', '.join(FILE_ENGINE_NAMES)}")


FILE_ENGINE_NAMES = ("onnxruntime", "openvino", "litert")


def load_engine(
    source,
    engine: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
) -> Engine:
    """A warm engine for ``source`` (checkpoint ``.safetensors``, exported ``.onnx``/``.tflite``, or an mnv2 model).

    Exported files need no torch (the ``runtime`` install); checkpoints and modules do.

    Args:
        engine: ``auto`` (fastest installed for the precision, see :func:`pick_engine`) or one of :data:`ENGINES`.
        precision: ``fp32`` (default for checkpoints), ``bf16`` (OpenVINO only; not fp32-accurate) or ``int8``
            (implied by an INT8 ONNX or TFLite file from ``mnv2 quantize``).
        threads: intra-op threads (default: the engine's own default, all cores).
    """
    check_engine(engine)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not isinstance(source, (str, Path)):  # an in-memory torch module
        if engine not in ("auto", "torch"):
            raise ConfigError(f"engine {engine!r} needs a checkpoint or ONNX file, not an in-memory module")
        return TorchEngine(source, "<module>", threads)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    file_engines = FILE_ENGINES.get(path.suffix)  # None: a checkpoint
    if file_engines is None:
        require_torch(f"running the checkpoint {str(path)!r}", "or export it to .onnx/.tflite where torch is installed")
    file_precision = ("int8" if _is_int8(path) else "fp32") if file_engines else "fp32"
    if precision is None:
        precision = file_precision
    if precision == "int8" and file_precision != "int8":
        raise ConfigError(f"{str(path)!r} is not an INT8 model; make one with `mnv2 quantize`")
    if file_precision == "int8" and precision != "int8":
        raise ConfigError(f"{str(path)!r} is an INT8 model; it runs only with precision int8")
    usable = installed_engines() if file_engines else converting_engines()
    if engine == "auto" and not file_engines and not _converts_on_the_fly(path):
        name = "torch"
    elif engine == "auto":  # an exported file runs on the engines that read its format
        readers = [e for e in usable if not file_engines or e in file_engines]
        if file_engines and not readers:
            extra = "runtime-litert" if path.suffix == ".tflite" else "runtime-onnx"
            raise ConfigError(f"no installed engine reads {path.suffix} files here: pip install 'mnv2[runtime]' "
                              f"(or 'mnv2[{extra}]')")  # fmt: skip
        name = pick_engine(precision, readers)
    else:
        name = engine
    if name not in usable:
        raise ConfigError(f"engine {name!r} is not installed here (installed: {', '.join(usable) or 'none'})")
    if file_engines and name not in file_engines:
        raise ConfigError(f"engine {name!r} does not read {path.suffix} files; use {' or '.join(file_engines)}")
    if not file_engines and name not in ONNX_ENGINES and precision != "fp32":
        raise ConfigError(
            f"engine {name!r} runs checkpoints in fp32 only; for int8 run `mnv2 quantize` and pass its file"
        )
    if name == "onnxruntime" and precision == "bf16":
        raise ConfigError("precision 'bf16' is only offered by engine 'openvino'")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, name, precision, threads)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if name == "torch":
        from mnv2.tasks import get_task
        from mnv2.weights.checkpoint import load_checkpoint

        model = load_checkpoint(path)
        made: Engine = TorchEngine(model, str(path), threads, task=get_task(model.meta.task))
    elif file_engines:
        made = open_file_engine(name, path, precision, threads)
    else:  # converted once, cached by content
        made = open_file_engine(name, _tflite_for_checkpoint(path) if name == "litert" else _onnx_for_checkpoint(path),
                                precision, threads)  # fmt: skip
    if name != "torch":  # a checkpoint converted on the fly answers what its exported file does
        file_meta = read_model_metadata(made.source)
        made.output_kind = file_meta.get("output")
        made.input_hw = fixed_input_hw(file_meta)
    with _LOCK:
        _CACHE[key] = made
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return made


def clear_cache() -> None:
    """Drop every cached engine (sessions are freed when no caller holds them)."""
    with _LOCK:
        _CACHE.clear()


def card_inference(source: str | Path) -> tuple[Any, dict]:
    """``(inference half, info)`` of a checkpoint or an exported ONNX/TFLite file, from its own card
    (``mnv2.deploy.runtime.card``): the task's ``mnv2.tasks.infer`` record and what it needs (preprocessing, class
    names, output kind, head, an exported graph's fixed ``input_hw``)."""
    from mnv2.tasks import get_inference

    task, info = read_card(source)
    return get_inference(task), info
