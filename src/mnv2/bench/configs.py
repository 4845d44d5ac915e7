"""What ``mnv2 bench speed`` and ``mnv2 bench memory`` measure, as typed configs whose fields are their flags
(light to import: the benchmarks themselves load torch and the engines), and the one call that runs each."""

from __future__ import annotations

from dataclasses import dataclass

from mnv2.data.preprocessing import DEFAULT_INPUT_SIZE
from mnv2.tasks import DEFAULT_TASK, TASK_NAMES
from mnv2.typed import option


@dataclass(frozen=True)
class SpeedBenchConfig:
    """Engine speed against the peers (issue 6): batch-1 latency and batch throughput of a registered classifier,
    or (``task``) batch-1 latency of a task's published model at the paper's sizes."""

    task: str = option(DEFAULT_TASK, "a task's published model: detection (SSDLite 1.0 @320) or segmentation "
                       "(DeepLabv3 @512x512 and 480x360): batch-1 latency per engine", choices=TASK_NAMES)  # fmt: skip
    model: str = option("mobilenetv2_100", "registered name (random weights)")
    resolution: int | None = option(
        None, f"input size (default {DEFAULT_INPUT_SIZE}; a task's model: the paper's sizes)", low=1
    )
    batch: int = option(32, "throughput batch", low=1)
    threads: int = option(2, "intra-op threads", low=1)
    rounds: int = option(3, "rounds (engine order alternates); figures are medians", low=1)
    iters: int = option(30, "timed batch-1 calls per round", low=1)
    engines: list[str] | None = option(None, "only engines whose name contains one of these", kind="list")
    peers: bool = option(True, "skip the peers", flag="--no-peers", invert=True)
    int8: bool = option(True, "skip INT8", flag="--no-int8", invert=True)


@dataclass(frozen=True)
class MemoryBenchConfig:
    """§5.1's memory: the measured peak activation memory of dense and streamed inference, its bound, and latency."""

    width: float | None = option(None, "one width (default: 0.35 and 1.0)", above=0)
    resolution: int = option(DEFAULT_INPUT_SIZE, "input size", low=1)
    batch: int = option(1, "images per forward pass", low=1)
    threads: int | None = option(None, "intra-op threads (default: torch's)", low=1)
    splits: list[str] | None = option(None, "§5.1 split counts (default: 1 2 4 6 full)", kind="list")
    repeats: int = option(7, "interleaved latency repeats (medians)", low=1)
    device: str = option("cpu", "cpu, or cuda (torch.cuda.max_memory_allocated)")
    plot: str | None = option(None, "also write the per-layer memory plot (PNG)")


def run_speed(config: SpeedBenchConfig, progress=None) -> tuple[list, str]:
    """Run the speed bench: its records and their table. The registry's classifier (a task whose published model is
    one of ``mnv2 models``) is timed in batches against the peers; another task's model at batch 1 per engine."""
    from mnv2.models.mobilenetv2 import check_resolution
    from mnv2.tasks import get_task

    if config.resolution is not None:
        check_resolution(config.resolution)
    if get_task(config.task).paper.recipe is not None:
        from mnv2.bench.task_speed import format_task_table, run_task_bench

        sizes = [(config.resolution, config.resolution)] if config.resolution else None
        records = run_task_bench(config.task, sizes, threads=config.threads, rounds=config.rounds, iters=config.iters,
                                 only=config.engines, progress=progress)  # fmt: skip
        return records, format_task_table(records)
    from mnv2.bench.speed import format_table, run_bench

    records = run_bench(
        model_name=config.model, resolution=config.resolution or DEFAULT_INPUT_SIZE, batch=config.batch,
        rounds=config.rounds, threads=config.threads, iters_1=config.iters, peers=config.peers, int8=config.int8,
        only=config.engines, progress=progress,
    )  # fmt: skip
    return records, format_table(records, config.batch)


def run_memory(config: MemoryBenchConfig, progress: bool = True) -> tuple[dict, str]:
    """Run the memory bench over its widths and splits: the best split with every candidate and the environment
    (the JSON document), and the table with its footer; writes the plot when asked."""
    from mnv2.bench import memory_bench
    from mnv2.models.mobilenetv2 import check_resolution

    check_resolution(config.resolution)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    widths = (config.width,) if config.width is not None else memory_bench.DEFAULT_WIDTHS
    splits = tuple(config.splits) if config.splits else memory_bench.DEFAULT_SPLITS
    rows = []
    for width in widths:
        rows += memory_bench.run_width(width, config.resolution, splits, config.batch, config.repeats, config.device,
                                       progress=progress)  # fmt: skip
    env = memory_bench.environment()
    document = {"device": config.device, **memory_bench.best_split(rows).to_dict(),
                "candidates": [r.to_dict() for r in rows], **env}  # fmt: skip
    text = (f"{memory_bench.format_rows(rows)}\ndevice {config.device}, torch {env['torch']}, {env['threads']} "
            "threads; bytes = allocator peak above the start")  # fmt: skip
    if config.plot:
        memory_bench.plot_memory_per_layer(widths[-1], config.resolution, config.plot)
        text += f"\nwrote {config.plot}"
    return document, text
