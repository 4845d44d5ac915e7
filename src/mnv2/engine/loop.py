"""The training loop, for every task: ``train_one_epoch`` and ``evaluate`` as plain functions, and ``train``
wiring a run directory. What is task-specific (data, model, loss, evaluator, report plot) comes from the run's
``mnv2.tasks`` task; nothing here knows classification from detection.

Run directory contents, all written atomically at the end of every epoch:
  config.yaml          the resolved TrainConfig
  best.safetensors     weights with the best val metric so far (the evaluator's ``best``; EMA weights when EMA is
                       on), self-describing
  last.safetensors     weights after the latest epoch
  train_state.pt       optimizer, EMA, epoch, history (torch.save of tensors/plain types; loaded weights_only)
  metrics.csv          one row per epoch, columns from the task;  curves.png  loss and metric curves;
  <report>.png         the task's picture of the best epoch (classification: confusion.png)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm.auto import tqdm

from mnv2.cpu import auto_threads
from mnv2.data.loaders import epoch_seed
from mnv2.engine import finetune, qat
from mnv2.engine.config import RESUME_FLAGS, TrainConfig, apply_overrides, list_recipes, load_recipe, resolve_steps
from mnv2.engine.optim import ModelEma, build_optimizer, lr_factor
from mnv2.engine.plots import plot_curves
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.files import atomic_write, remove_stale_temporaries
from mnv2.models.utils import unwrap
from mnv2.tasks import DEFAULT_TASK, Task, get_task
from mnv2.weights.checkpoint import (
    CheckpointMeta,
    NonFiniteError,
    load_checkpoint,
    non_finite_tensors,
    read_checkpoint_meta,
    save_checkpoint,
)

STATE_FILE = "train_state.pt"
CPU = torch.device("cpu")


class ResumeError(Mnv2Error):
    """A run directory cannot be resumed."""


# ----------------------------------------------------------------------------------------------- environment
def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it pays: CUDA, and CPUs with AMX tiles. Without AMX, bf16 convs are slower than fp32 on CPU
    (measured on this project's AVX-512-BF16 CPU: 0.35@32 trains at 0.4x the fp32 speed)."""
    if amp == "off":
        return None
    if amp == "bf16" or device.type == "cuda":
        return torch.bfloat16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx else None


# glibc mallopt parameters (malloc.h) and defaults (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_TOP_PAD,
# DEFAULT_MMAP_MAX).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024, M_MMAP_MAX: 65536}
KEEP_MEMORY = {M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 64 * 2**20, M_MMAP_MAX: 0}


def set_cpu_allocator(keep: bool) -> bool:
    """Keep freed memory in the process (``keep=True``) or restore glibc's defaults; False where not glibc.

    glibc serves large blocks (activations) with mmap and returns them to the OS on free, so every training step
    page-faults its activations anew: at 1.0 @224 half of a step was system time on this project's CPU. Serving
    everything from the heap and never trimming it doubled training throughput (BENCHMARKS.md, Training).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    for param, value in (KEEP_MEMORY if keep else GLIBC_DEFAULTS).items():
        libc.mallopt(param, value)
    return True


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def to_device(obj, device: torch.device):
    """Tensors (also inside the lists and dicts a task's targets may be) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------- model
def build_run_model(task: Task, config: TrainConfig, data) -> tuple[nn.Module, object]:
    """A fresh model from the config, or ``--init``'s checkpoint's architecture and weights with the task's head
    for the data's classes. Returns ``(model, preprocessing)``.

    Fine-tuning keeps the checkpoint's normalisation (mean/std or [-1, 1]) and input size, so the features see
    inputs scaled as in pre-training.
    """
    if not config.init:
        return task.build_model(config, data.class_names), data.preprocessing
    source = load_checkpoint(config.init)
    model = task.build_model(config, data.class_names, source.config)
    task.init_from(model, source)
    model.meta = source.meta
    src = source.meta.preprocessing
    return model, dataclasses.replace(data.preprocessing, mean=src.mean, std=src.std)


# ----------------------------------------------------------------------------------------------- epochs
def train_one_epoch(
    model, batches, optimizer, config, epoch, step, steps_per_epoch, *, task: Task, ema=None, frozen=(), dtype=None,
    device, rank=0,
):  # fmt: skip
    """One pass over ``batches``; returns (mean loss and the task's train parts, steps taken, img/s)."""
    finetune.set_train_mode(model, list(frozen), config.bn)
    base_lrs = [config.scaled_lr] * len(optimizer.param_groups)
    sums = torch.zeros(2 + len(task.train_parts), dtype=torch.float64)  # seen, loss, parts (weighted by batch size)
    t0 = time.perf_counter()
    bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch + 1}/{config.epochs}",
               disable=rank != 0, leave=False)  # fmt: skip
    for x, y in bar:
        # 1. learning rate of this step
        f = lr_factor(config, step, steps_per_epoch)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * f
        # 2. forward / backward
        x, y = x.to(device, non_blocking=True), to_device(y, device)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss, parts = task.loss(model(x), y, config)
        if not torch.isfinite(loss):
            raise Mnv2Error(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower --lr or add --grad-clip"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # 3. clip, step, EMA
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(unwrap(model))
        step += 1
        # 4. log
        n = len(x)
        sums += torch.tensor([n, loss.item() * n, *(float(parts[k]) * n for k in task.train_parts)], dtype=sums.dtype)
        bar.set_postfix(loss=f"{sums[1] / sums[0]:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                        img_s=f"{sums[0] / (time.perf_counter() - t0):.0f}")  # fmt: skip
    sums = all_reduce_sum(sums)
    means = (sums[1:] / sums[0]).tolist()
    return dict(zip(("loss", *task.train_parts), means)), step, sums[0].item() / (time.perf_counter() - t0)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches, task: Task, class_names: list[str], *, device=CPU, dtype=None, desc="eval", rank=0,
    tta: str = "none",
) -> dict:  # fmt: skip
    """The task's metrics of ``model`` over ``batches`` (summed over DDP ranks). ``tta``: one of the task's
    test-time augmentations (classification: ``flip``)."""
    if tta not in task.tta_modes:
        raise ConfigError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(task.tta_modes)}")
    model.eval()
    evaluator = task.evaluator(class_names)
    for x, y in tqdm(batches.epoch(0), total=len(batches), desc=desc, disable=rank != 0, leave=False):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            evaluator.update(task.infer(model, x.to(device), tta), y)
    evaluator.reduce(all_reduce_sum)
    return evaluator.compute()


# ----------------------------------------------------------------------------------------------- run directory
def csv_fields(task: Task, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics CSV's columns: the loss and the task's train parts, the evaluator's ``columns``, timing."""
    return ("epoch", "lr", "train_loss", *(f"train_{p}" for p in task.train_parts),
            *(f"val_{c}" for c in columns), "epoch_s", "img_s")  # fmt: skip


def _save_state(path: Path, state: dict) -> None:
    def write(tmp):
        torch.save(state, tmp)

    atomic_write(path, write)


def _write_csv(path: Path, fields: tuple[str, ...], history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


class _TensorBoard:
    """Writes scalars when TensorBoard is installed; silently does nothing otherwise (it is optional)."""

    def __init__(self, logdir: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(logdir))

    def log(self, row: dict) -> None:
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:  # an undefined metric has no point
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()


def _resolve(config: TrainConfig, out: Path, resume: bool, log) -> tuple[TrainConfig, dict | None]:
    """The run's config and, with ``resume``, its saved state. A resumed run keeps its saved config except the
    :data:`RESUME_FLAGS` given now (a larger ``epochs`` extends the run)."""
    if not resume:
        if (out / STATE_FILE).exists():
            raise ConfigError(
                f"{str(out)!r} already holds a run; continue it with `mnv2 train --resume {out}` or choose another "
                "--out"
            )
        return config, None
    if not (out / STATE_FILE).is_file():
        raise ResumeError(f"{str(out)!r} has no {STATE_FILE} to resume from")
    try:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # truncated, empty, not a torch file, or a pickle weights_only refuses
        raise ResumeError(
            f"{str(out / STATE_FILE)!r} is not a readable mnv2 training state ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})"
        ) from e
    keys = ("config", "epoch", "step", "best", "history", "model", "optimizer", "ema")
    if not isinstance(state, dict) or any(k not in state for k in keys) or not isinstance(state["config"], dict):
        raise ResumeError(f"{str(out / STATE_FILE)!r} is not an mnv2 training state (missing keys)")
    saved = TrainConfig.from_dict(state["config"], f"{out}/{STATE_FILE}")
    now = {k: getattr(config, k) for k in RESUME_FLAGS}
    now["epochs"] = max(config.epochs, saved.epochs)
    # the first line of a resumed run says what it takes from the command line and what from the saved run
    log(f"resuming {out} at epoch {state['epoch'] + 1}/{now['epochs']} (honours --{', --'.join(RESUME_FLAGS)}; "
        "everything else is the saved run's config)")  # fmt: skip
    if saved.threads != config.threads:
        log(f"note: --threads {config.threads} differs from the run's {saved.threads}: bit-for-bit reproduction of "
            "the uninterrupted run needs the same thread count")  # fmt: skip
    return dataclasses.replace(saved, **now), state


def _setup_runtime(config: TrainConfig, device: torch.device, world: int) -> None:
    if device.type == "cpu":
        set_cpu_allocator(config.keep_memory)
        torch.set_num_threads(config.threads or (1 if world > 1 else auto_threads()))
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)


def _data_preprocessing(task: Task, config: TrainConfig):
    pre = task.default_preprocessing(config)
    if config.init:
        src = read_checkpoint_meta(config.init).preprocessing
        # QAT adapts the model to rounding on the data it was trained for: exactly its preprocessing and size.
        pre = src if config.qat else dataclasses.replace(pre, mean=src.mean, std=src.std)
    return pre


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, log=None) -> dict:
    """Train per ``config`` into ``out_dir``; with ``resume`` continue the run saved there. Returns the final
    metrics (``best_<metric>``, ``last_<metric>``, ``metric``, ``epochs``, ``wall_s``, ``best``: path)."""
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out_dir)
    rank, world, device = setup_distributed()
    config, state = _resolve(config, out, resume, log if rank == 0 else lambda _: None)
    _setup_runtime(config, device, world)
    if config.qat and not config.init:
        raise ConfigError("--qat fine-tunes a trained model: give --init CHECKPOINT")
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    task = get_task(config.task)
    if config.batch_size // world < task.min_batch and config.bn != "frozen":
        raise ConfigError(
            f"--batch-size {config.batch_size} gives {config.batch_size // world} image(s) per process, but a "
            f"{task.name} model needs at least {task.min_batch} to train BatchNorm (its 1x1 maps have one value per "
            "channel and image); use a larger --batch-size, or --bn frozen"
        )
    torch.manual_seed(config.seed)

    # data and model
    data = task.build_data(config, _data_preprocessing(task, config), rank=rank, world=world, pin=device.type == "cuda")
    if data.report.message() and rank == 0:
        log(f"data: {data.report.message()}")
    # defaults chosen from the data, saved with the run (config.yaml) so it reproduces (issue 24, 2)
    config, notes = resolve_steps(config, len(data.train))
    if task.adapt is not None:
        config, more = task.adapt(config, data)
        notes += more
    for note in notes:
        if rank == 0:
            log(f"adapted to the data: {note}")
    model, pre = build_run_model(task, config, data)
    if config.qat:  # simulate the deployed INT8 model (mnv2 quantize) while fine-tuning
        model = qat.prepare_qat(model)
    frozen = finetune.apply_freeze(model, config.freeze, config.bn)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
    optimizer = build_optimizer(model, config)
    history: list[dict] = []
    start_epoch, step, best = 0, 0, -math.inf
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, step, best, history = state["epoch"], state["step"], state["best"], list(state["history"])
    train_model = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        train_model = torch.compile(train_model)
    dtype = autocast_dtype(config.amp, device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for f in remove_stale_temporaries(out):
            log(f"removed {f.name}, left by an interrupted write")
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(config.to_yaml()))
        log(_describe(task, config, model, pre, data, dtype, world))
        if task.data_report is not None:  # before training: what the data holds against what the model can learn
            report = task.data_report(data, model, config)
            log(report)
            atomic_write(out / "data_report.txt", lambda tmp: Path(tmp).write_text(report + "\n"))
    meta = CheckpointMeta(model.config, pre, data.class_names, {"framework": "mnv2", "recipe": config.recipe},
                          config.to_dict(), task=task.name, head=getattr(model, "head_config", None),
                          image_size=data.image_size)  # fmt: skip
    writer = _RunWriter(out, task, config, data, meta, rank == 0)
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(config.seed, epoch) + 1)  # dropout etc.: a resumed epoch draws the same
        train_stats, step, img_s = train_one_epoch(
            train_model, data.train, optimizer, config, epoch, step, len(data.train),
            task=task, ema=ema, frozen=frozen, dtype=dtype, device=device, rank=rank,
        )  # fmt: skip
        eval_model = ema.module if ema is not None else model
        if config.precise_bn:
            recompute_bn_stats(eval_model, data.train, epoch, config.precise_bn, device, dtype)
        if config.qat:
            qat.observe(eval_model, False)  # validation must not fit the INT8 ranges
        val = evaluate(eval_model, data.val, task, data.class_names, device=device, dtype=dtype,
                       desc=data.val_name, rank=rank)  # fmt: skip
        if config.qat:
            qat.observe(eval_model, True)
        _check_finite(epoch, step, val, model, eval_model)
        diagnosis = task.diagnose(val) if task.diagnose is not None else None
        if diagnosis and rank == 0:  # said at the epoch, not only at the end (issue 24, 3)
            log(f"warning: epoch {epoch + 1}: {diagnosis}")
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{k}": v for k, v in train_stats.items()}, **{f"val_{k}": val[k] for k in writer.columns},
               "epoch_s": time.perf_counter() - t0, "img_s": img_s}  # fmt: skip
        history.append(row)
        best = writer.end_epoch(epoch, row, {**val, "diagnosis": diagnosis}, history, best, eval_model, state={
            "config": config.to_dict(), "epoch": epoch + 1, "step": step, "history": history,
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
        })  # fmt: skip
        if rank == 0:
            show = task.present.format_metrics
            log(f"epoch {epoch + 1}/{config.epochs}: train {show(train_stats)} | {data.val_name} {show(val)} | "
                f"{row['epoch_s']:.0f}s, {img_s:.0f} img/s")  # fmt: skip
    wall = time.perf_counter() - t_run
    if dist.is_initialized():
        dist.barrier()
    metric = writer.best
    last = history[-1][f"val_{metric}"] if history else math.nan
    best_path = out / "best.safetensors"
    diagnosis = read_checkpoint_meta(best_path).metrics.get("diagnosis") if best_path.is_file() else None
    return {f"best_{metric}": best, f"last_{metric}": last, "metric": metric, "epochs": config.epochs,
            "wall_s": wall, "best": str(best_path), "diagnosis": diagnosis}  # fmt: skip


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches, epoch: int, images: int, device, dtype) -> None:
    """Set every BatchNorm's running statistics to their average over ``images`` train images under the current
    weights ("precise BN", Wu & Johnson 2021; pycls, Detectron2).

    Why: a running average with momentum m forgets its start as (1 - m)^steps. A layer whose activations' variance
    is far below its initial 1 (SSDLite's extra depthwise convs at TF's 0.03-std init: ~0.004) still reads ~0.4 after
    30 steps at m = 0.03, and the eval-mode detector answered the same box for every image after 5 epochs of a
    160-image set, where the train-mode one found the raccoons. Ranks average their statistics (DDP).
    """
    bns = [m for m in unwrap(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    seen = 0
    for x, _ in batches.epoch(epoch):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(to_device(x, device))
        seen += len(x)
        if seen >= images:
            break
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train(was_training)
    if dist.is_initialized() and dist.get_world_size() > 1:
        for m in bns:
            for t in (m.running_mean, m.running_var):
                dist.all_reduce(t)
                t /= dist.get_world_size()


def _check_finite(epoch: int, step: int, val: dict, *models: nn.Module) -> None:
    """Stop a diverged run before anything of it is written: a non-finite val loss or weight ends it, naming the
    epoch and step (the train loss is checked before every step in :func:`train_one_epoch`)."""
    loss = val.get("loss")
    where = f"at epoch {epoch + 1}, step {step}; lower --lr or add --grad-clip"
    if isinstance(loss, float) and not math.isfinite(loss):
        raise NonFiniteError(f"val loss became {loss} {where}")
    for m in models:  # parameters and BN statistics (not QAT observers, whose unused ranges start at +-inf)
        m = unwrap(m)
        tensors = dict(m.named_parameters())
        tensors.update((k, b) for k, b in m.named_buffers() if k.endswith(("running_mean", "running_var")))
        bad = non_finite_tensors({k: t.detach() for k, t in tensors.items()})
        if bad:
            raise NonFiniteError(f"weights became non-finite ({', '.join(bad[:3])}) {where}")


def _describe(task: Task, config: TrainConfig, model: nn.Module, pre, data, dtype, world: int) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    return (
        f"mnv2 train: {task.name}, {config.recipe} recipe, width {model.config.width_mult} @{pre.input_size}px "
        f"(stem stride {model.config.stem_stride}), {n_params:,} params, {len(data.class_names)} classes, "
        f"{data.train.num_samples} train / {data.val.num_samples} {data.val_name} images, "
        f"{config.epochs} epochs, batch {config.batch_size}, {'bf16' if dtype else 'fp32'}"
        f"{' with simulated INT8 (QAT)' if config.qat else ''}, "
        f"{world} process(es) x {torch.get_num_threads()} thread(s)"
    )


class _RunWriter:
    """Everything a run directory gets at the end of an epoch (rank 0 only): checkpoints, state, CSV, plots."""

    def __init__(self, out: Path, task: Task, config: TrainConfig, data, meta: CheckpointMeta, active: bool) -> None:
        self.out, self.task, self.config, self.data, self.meta, self.active = out, task, config, data, meta, active
        evaluator = task.evaluator(data.class_names)
        self.columns, self.best = evaluator.columns, evaluator.best
        self.fields = csv_fields(task, evaluator.columns)
        self.tb = _TensorBoard(out / "tensorboard", active)

    def end_epoch(self, epoch: int, row: dict, val: dict, history: list[dict], best: float, model, state: dict):
        """Write the epoch's files; returns the best value of the selecting metric so far."""
        value = val[self.best]
        value = -math.inf if value is None else value  # undefined (no ground truth in the split): never "better"
        if not self.active:
            return max(best, value)
        out, config, data = self.out, self.config, self.data
        metrics = {k: val[k] for k in self.columns if k != "loss"}
        metrics.update(n=val["n"], epoch=epoch + 1, split=data.val_name, data=config.data)
        if val.get("diagnosis"):  # the checkpoint says it is degenerate, for eval, the final line and a user's script
            metrics["diagnosis"] = val["diagnosis"]
        meta = dataclasses.replace(self.meta, metrics=metrics)
        plain = qat.convert_qat(model) if config.qat else model  # the plain architecture's keys
        save_checkpoint(out / "last.safetensors", plain, meta)
        if value > best or not (out / "best.safetensors").is_file():
            best = max(best, value)
            save_checkpoint(out / "best.safetensors", plain, meta)
            title = f"{data.val_name} {self.best} {value:.4g} (epoch {epoch + 1})"
            self.task.present.plot_report(val, data.class_names, out / self.task.present.report_file, title)
        _save_state(out / STATE_FILE, {**state, "best": best})
        _write_csv(out / "metrics.csv", self.fields, history)
        plot_curves(history, out / "curves.png", self.best,
                    f"mnv2 {config.recipe}: {config.data} (val = {data.val_name} split)")  # fmt: skip
        self.tb.log(row)
        return best


def run_config(out: str | None, resume: str | None, recipe: str | None, overrides: dict) -> tuple[TrainConfig, str]:
    """The config and run directory of ``mnv2 train``: a new run in ``out`` from ``recipe`` (default: the task's own
    recipe, ``recipes/<task>.yaml``, where it has one; ``qat`` for ``--qat``; else ``default``) with the flags'
    ``overrides`` (``None``: keep the recipe's), or the saved run in ``resume``, where only ``RESUME_FLAGS`` may
    change."""
    if resume and out and out != resume:
        raise ConfigError(f"--resume {resume} continues that directory; drop --out {out}")
    out = resume or out
    if out is None:
        raise ConfigError("give --out RUN_DIR (a new run) or --resume RUN_DIR (continue one)")
    if resume:
        bad = sorted(k for k, v in overrides.items() if v is not None and k not in RESUME_FLAGS)
        if bad:
            allowed = "/".join(f"--{k}" for k in RESUME_FLAGS)
            raise ConfigError(f"--resume continues the saved config; only {allowed} may change, not {bad}")
        return apply_overrides(load_run_config(out), overrides), out
    task = overrides.get("task") or DEFAULT_TASK
    recipe = recipe or ("qat" if overrides.get("qat") else task if task in list_recipes() else "default")
    return apply_overrides(load_recipe(recipe), overrides), out


def load_run_config(out_dir: str | Path) -> TrainConfig:
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise ResumeError(f"{str(out_dir)!r} has no config.yaml")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ResumeError(f"{str(path)!r} is not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(values, dict):
        raise ResumeError(f"{str(path)!r} is not a mapping of config keys")
    return TrainConfig.from_dict(values, str(path))
