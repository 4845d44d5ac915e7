"""The training loop: ``train_one_epoch`` and ``evaluate`` as plain functions, and ``train`` wiring a run
directory (config.yaml, metrics.csv, best/last checkpoints, train_state.pt for --resume, curves.png).

Run directory contents, all written atomically at the end of every epoch:
  config.yaml          the resolved TrainConfig
  best.safetensors     weights with the best val top-1 so far (EMA weights when EMA is on), self-describing
  last.safetensors     weights after the latest epoch
  train_state.pt       optimizer, EMA, epoch, history (torch.save of tensors/plain types; loaded weights_only)
  metrics.csv          one row per epoch;  curves.png  loss/accuracy curves;  confusion.png  of the best model
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
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from mnv2.cpu import auto_threads
from mnv2.data.loaders import build_data, epoch_seed, fashion_preprocessing, folder_preprocessing
from mnv2.data.preprocessing import Preprocessing
from mnv2.engine import finetune, qat
from mnv2.engine.config import TrainConfig
from mnv2.engine.metrics import confusion_matrix, summarize, topk_correct
from mnv2.engine.optim import ModelEma, build_optimizer, lr_factor
from mnv2.engine.plots import plot_confusion, plot_curves
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.models.mobilenetv2 import MobileNetV2, MobileNetV2Config, check_resolution
from mnv2.models.registry import model_info
from mnv2.weights.checkpoint import CheckpointMeta, atomic_write, save_checkpoint, unwrap

STATE_FILE = "train_state.pt"
CPU = torch.device("cpu")
TTA_MODES = ("none", "flip")  # test-time augmentation in evaluate()
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "epoch_s", "img_s")


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


# ----------------------------------------------------------------------------------------------- model
def build_model(config: TrainConfig, num_classes: int, data_pre: Preprocessing) -> tuple[MobileNetV2, Preprocessing]:
    """A fresh model from the config, or ``--init``'s checkpoint with a head for ``num_classes``.

    Fine-tuning keeps the checkpoint's normalisation (mean/std or [-1, 1]) and input size, so the features see
    inputs scaled as in pre-training.
    """
    if config.init:
        model, _ = finetune.init_from_checkpoint(config.init, num_classes, config.dropout)
        src = model.meta.preprocessing
        pre = dataclasses.replace(data_pre, mean=src.mean, std=src.std)
        return model, pre
    check_resolution(config.resolution)
    width = model_info(config.model).width_mult if config.model else config.width
    mc = MobileNetV2Config(
        width_mult=width, num_classes=num_classes, dropout=config.dropout, stem_stride=config.stem_stride
    )
    return MobileNetV2(mc), data_pre


# ----------------------------------------------------------------------------------------------- epochs
def train_one_epoch(
    model, batches, optimizer, config, epoch, step, steps_per_epoch, *, ema=None, frozen=(), dtype=None, device, rank=0
):
    """One pass over ``batches``; returns (mean loss, top-1 % on the augmented batches, steps taken, img/s)."""
    finetune.set_train_mode(model, list(frozen), config.bn)
    base_lrs = [config.scaled_lr] * len(optimizer.param_groups)
    loss_sum = correct = seen = 0.0
    t0 = time.perf_counter()
    bar = tqdm(
        batches.epoch(epoch),
        total=len(batches),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=rank != 0,
        leave=False,
    )
    for x, y in bar:
        # 1. learning rate of this step
        f = lr_factor(config, step, steps_per_epoch)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * f
        # 2. forward / backward
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
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
        n = len(y)
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        bar.set_postfix(
            loss=f"{loss_sum / seen:.3f}",
            lr=f"{optimizer.param_groups[0]['lr']:.3g}",
            img_s=f"{seen / (time.perf_counter() - t0):.0f}",
        )
    stats = all_reduce_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64))
    elapsed = time.perf_counter() - t0
    return stats[0].item() / stats[2].item(), 100 * stats[1].item() / stats[2].item(), step, stats[2].item() / elapsed


@torch.no_grad()
def evaluate(
    model: nn.Module, batches, class_names: list[str], *, device=CPU, dtype=None, desc="eval", rank=0, tta: str = "none"
) -> dict:
    """top-1/top-5/per-class accuracy (percent), mean loss, n and the confusion matrix over ``batches``.

    ``tta="flip"`` scores each image by the mean of its and its mirror image's class probabilities (test-time
    augmentation; the loss is that mixture's cross-entropy). Only meaningful for a model trained with flips.
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
    model.eval()
    k = len(class_names)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    top5 = 0
    loss_sum = torch.zeros((), dtype=torch.float64)
    softmax_out = getattr(unwrap(model), "config", None) is not None and unwrap(model).config.output == "softmax"

    def log_scores(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x).float().cpu()
        if out.shape[1] != k:
            raise ConfigError(f"the model has {out.shape[1]} outputs but the data has {k} classes")
        return out.clamp_min(1e-12).log() if softmax_out else out

    for x, y in tqdm(batches.epoch(0), total=len(batches), desc=desc, disable=rank != 0, leave=False):
        x = x.to(device)
        logits = log_scores(x)
        if tta == "flip":  # log of the mean probability: still a log-distribution, so cross_entropy applies
            logits = torch.logaddexp(logits.log_softmax(1), log_scores(x.flip(-1)).log_softmax(1)) - math.log(2)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion += confusion_matrix(logits.argmax(1), y, k)
        top5 += topk_correct(logits, y, (5,))[5]
    all_reduce_sum(confusion)
    counts = all_reduce_sum(torch.tensor([top5], dtype=torch.float64))
    all_reduce_sum(loss_sum)
    result = summarize(confusion, int(counts[0]), loss_sum.item(), class_names)
    result["confusion"] = confusion
    return result


# ----------------------------------------------------------------------------------------------- run directory
def _save_state(path: Path, state: dict) -> None:
    def write(tmp):
        torch.save(state, tmp)

    atomic_write(path, write)


def _write_csv(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
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
                if k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, log=None) -> dict:
    """Train per ``config`` into ``out_dir``; with ``resume`` continue the run saved there. Returns the final
    metrics (``best_top1``, ``last_top1``, ``epochs``, ``wall_s``, ``best``: path)."""
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out_dir)
    rank, world, device = setup_distributed()
    if device.type == "cpu":
        set_cpu_allocator(config.keep_memory)
        torch.set_num_threads(config.threads or (1 if world > 1 else auto_threads()))
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    state = None
    if resume:
        if not (out / STATE_FILE).is_file():
            raise ResumeError(f"{str(out)!r} has no {STATE_FILE} to resume from")
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(state["config"], f"{out}/{STATE_FILE}")
        config = dataclasses.replace(saved, epochs=config.epochs if config.epochs > saved.epochs else saved.epochs)
    elif (out / STATE_FILE).exists():
        raise ConfigError(
            f"{str(out)!r} already holds a run; continue it with `mnv2 train --resume {out}` or choose another --out"
        )
    if config.qat and not config.init:
        raise ConfigError("--qat fine-tunes a trained model: give --init CHECKPOINT")
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    torch.manual_seed(config.seed)

    # data and model
    if config.data == "fashion-mnist":
        data_pre = fashion_preprocessing(config.resolution)
    else:
        data_pre = folder_preprocessing(config.resolution)
    if config.init:
        from mnv2.weights.checkpoint import read_checkpoint_meta

        src = read_checkpoint_meta(config.init).preprocessing
        # QAT adapts the model to rounding on the data it was trained for: exactly its preprocessing and size.
        data_pre = src if config.qat else dataclasses.replace(data_pre, mean=src.mean, std=src.std)
    data = build_data(
        config.data, data_pre, config.augment, config.batch_size // world, config.eval_batch_size,
        data_root=config.data_root, val_split=config.val_split, strict=config.strict, workers=config.workers,
        seed=config.seed, rank=rank, world=world, pin=device.type == "cuda",
        train_limit=config.train_limit, val_limit=config.val_limit,
    )  # fmt: skip
    if data.report.message() and rank == 0:
        log(f"data: {data.report.message()}")
    model, pre = build_model(config, len(data.class_names), data.preprocessing)
    if config.qat:  # simulate the deployed INT8 model (mnv2 quantize) while fine-tuning
        model = qat.prepare_qat(model)
    frozen = finetune.apply_freeze(model, config.freeze, config.bn)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
    optimizer = build_optimizer(model, config)
    history: list[dict] = []
    start_epoch, step, best = 0, 0, -1.0
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, step, best, history = state["epoch"], state["step"], state["best"], list(state["history"])
        if rank == 0:
            log(f"resuming {out} at epoch {start_epoch + 1}/{config.epochs}")
    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        train_model = torch.compile(train_model)
    dtype = autocast_dtype(config.amp, device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(config.to_yaml()))
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"mnv2 train: {config.recipe} recipe, width {model.config.width_mult} @{pre.input_size}px "
            f"(stem stride {model.config.stem_stride}), {n_params:,} params, {len(data.class_names)} classes, "
            f"{data.train.num_samples} train / {data.val.num_samples} {data.val_name} images, "
            f"{config.epochs} epochs, batch {config.batch_size}, {'bf16' if dtype else 'fp32'}"
            f"{' with simulated INT8 (QAT)' if config.qat else ''}, "
            f"{world} process(es) x {torch.get_num_threads()} thread(s)"
        )
    meta = CheckpointMeta(
        model.config, pre, data.class_names, {"framework": "mnv2", "recipe": config.recipe}, config.to_dict()
    )
    tb = _TensorBoard(out / "tensorboard", rank == 0)
    steps_per_epoch = len(data.train)
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(config.seed, epoch) + 1)  # dropout etc.: a resumed epoch draws the same
        loss, top1, step, img_s = train_one_epoch(
            train_model, data.train, optimizer, config, epoch, step, steps_per_epoch,
            ema=ema, frozen=frozen, dtype=dtype, device=device, rank=rank,
        )  # fmt: skip
        eval_model = ema.module if ema is not None else model
        if config.qat:
            qat.observe(eval_model, False)  # validation must not fit the INT8 ranges
        val = evaluate(
            eval_model, data.val, data.class_names, device=device, dtype=dtype, desc=f"{data.val_name}", rank=rank
        )
        row = {
            "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss, "train_top1": top1,
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "epoch_s": time.perf_counter() - t0, "img_s": img_s,
        }  # fmt: skip
        if config.qat:
            qat.observe(eval_model, True)
        history.append(row)
        if rank == 0:
            metrics = {
                "top1": val["top1"],
                "top5": val["top5"],
                "n": val["n"],
                "epoch": epoch + 1,
                "split": data.val_name,
                "data": config.data,
            }
            emeta = dataclasses.replace(meta, metrics=metrics)
            plain = qat.convert_qat(eval_model) if config.qat else eval_model  # the plain architecture's keys
            save_checkpoint(out / "last.safetensors", plain, emeta)
            if val["top1"] > best:
                best = val["top1"]
                save_checkpoint(out / "best.safetensors", plain, emeta)
                plot_confusion(
                    val["confusion"],
                    data.class_names,
                    out / "confusion.png",
                    f"{data.val_name} top-1 {best:.2f}% (epoch {epoch + 1})",
                )
            _save_state(out / STATE_FILE, {
                "config": config.to_dict(), "epoch": epoch + 1, "step": step, "best": best, "history": history,
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
            })  # fmt: skip
            _write_csv(out / "metrics.csv", history)
            plot_curves(
                history, out / "curves.png", f"mnv2 {config.recipe}: {config.data} (val = {data.val_name} split)"
            )
            tb.log(row)
            log(
                f"epoch {epoch + 1}/{config.epochs}: train loss {loss:.4f} top-1 {top1:.2f}% | {data.val_name} loss "
                f"{val['loss']:.4f} top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}% | {row['epoch_s']:.0f}s, "
                f"{img_s:.0f} img/s"
            )
        best = max(best, val["top1"])
    wall = time.perf_counter() - t_run
    if dist.is_initialized():
        dist.barrier()
    last = history[-1]["val_top1"] if history else math.nan
    return {
        "best_top1": best,
        "last_top1": last,
        "epochs": config.epochs,
        "wall_s": wall,
        "best": str(out / "best.safetensors"),
    }


def load_run_config(out_dir: str | Path) -> TrainConfig:
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise ResumeError(f"{str(out_dir)!r} has no config.yaml")
    return TrainConfig.from_dict(yaml.safe_load(path.read_text()), str(path))
