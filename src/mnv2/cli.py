"""The ``mnv2`` command line: ``mnv2 <verb>``. Each verb parses its arguments and calls the library.

Every failure is one line on stderr. Exit status 2: a user-caused failure (``mnv2: error: ...``: a bad argument,
file or data; an I/O failure such as a full or read-only disk, named as such); 70 (``EX_SOFTWARE``): a bug in mnv2,
one line asking for a report (the traceback only with ``MNV2_DEBUG=1``); 130: interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from mnv2.errors import ConfigError, Mnv2Error

# Class counts of the published task models `mnv2 summary --task` builds: COCO as the TF Object Detection API numbers
# it (label-map ids 1..90, 80 in use: `num_classes: 90` in its configs) and PASCAL VOC's 21 (Table 7).
SUMMARY_CLASSES = {"detection": 90, "segmentation": 21}


def _finite(obj):
    """``obj`` with every NaN or infinity replaced by ``None``: strict JSON (``null``), never ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj) -> str:
    return json.dumps(_finite(obj), allow_nan=False)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line ``mnv2: error: ...`` (exit status 2) like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"mnv2: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def _float_at_least(low: float, strict: bool):
    """A finite float > ``low`` (``strict``) or >= ``low``: argparse's ``float`` takes nan and inf."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {'>' if strict else '>='} {low:g}")
        return value

    parse.__name__ = f"number {'>' if strict else '>='} {low:g}"
    return parse


def _port(text: str) -> int:
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return value


_port.__name__ = "port 0-65535"


def _image_size(text: str) -> int | tuple[int, int]:
    """``320`` (square) or ``480x360`` (width x height, as image sizes are written) → ``320`` or ``(360, 480)``."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give N or WIDTHxHEIGHT, e.g. 320 or 480x360")
    if len(parts) == 1:
        return int(parts[0])
    w, h = (int(p) for p in parts)
    return w if w == h else (h, w)


_image_size.__name__ = "size N or WIDTHxHEIGHT"


def _add_arch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered name (see `mnv2 models`); default mobilenetv2_100")
    p.add_argument("--width", type=float, default=None, help="width multiplier (any value > 0); overrides --model")
    p.add_argument("--resolution", type=int, default=None, help="input size in pixels (>= 32; default 224)")
    p.add_argument(
        "--num-classes", type=int, default=None,
        help="classifier outputs (1001 for TF-slim/Keras); detection: object classes without background (default "
        "90); segmentation: classes (default 21)",
    )  # fmt: skip
    p.add_argument("--task", default="classification", help="classification, detection or segmentation (the model "
                   "its recipe builds)")  # fmt: skip
    p.add_argument("--aspp", default=None, help="segmentation: off, separable or regular (Table 7's 'with ASPP')")
    p.add_argument("--padding", default=None, help="torch (symmetric) or tf (TF SAME)")
    p.add_argument("--output-stride", type=int, default=None, help="32 (default), 16 or 8 (dilated, §6.3)")


def _build_from_args(args: argparse.Namespace):
    from mnv2.models import create_model, mobilenet_v2, model_info

    if args.task != "classification":  # the task's model as its recipe builds it, for --num-classes classes
        from mnv2.engine.config import TrainConfig, apply_overrides, list_recipes, load_recipe
        from mnv2.tasks import get_task

        task = get_task(args.task)
        config = load_recipe(args.task) if args.task in list_recipes() else TrainConfig(task=args.task)
        flags = {"model": args.model, "width": args.width, "resolution": args.resolution, "padding": args.padding,
                 "output_stride": args.output_stride, "aspp": args.aspp}  # fmt: skip
        config = apply_overrides(config, flags)
        classes = [str(i) for i in range(args.num_classes or SUMMARY_CLASSES.get(args.task, 10))]
        return task.build_model(config, classes), config.resolution

    overrides = {"num_classes": args.num_classes, "padding": args.padding, "output_stride": args.output_stride}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.width is not None:
        return mobilenet_v2(width_mult=args.width, **overrides), args.resolution or 224
    name = args.model or "mobilenetv2_100"
    return create_model(name, **overrides), args.resolution or model_info(name).default_resolution


def cmd_models(args: argparse.Namespace) -> int:
    import dataclasses

    from mnv2.models import list_models, model_info

    if args.pretrained:
        return _print_pretrained(args.json)
    infos = [model_info(n) for n in list_models()]
    if args.json:
        print(_dumps([dataclasses.asdict(i) for i in infos]))
        return 0
    print(f"{'name':<18} {'width':>6}  resolutions with published checkpoints")
    for i in infos:
        print(f"{i.name:<18} {i.width_mult:>6}  {', '.join(map(str, i.resolutions))}")
    return 0


def _print_pretrained(as_json: bool) -> int:
    from mnv2.weights.hub import describe, get_pretrained, list_pretrained

    entries = [describe(get_pretrained(n)) for n in list_pretrained()]
    if as_json:
        print(_dumps(entries))
        return 0
    # "top1" is the publisher's own figure; "slim" the TF-slim checkpoint of the same width/resolution (Keras).
    print(f"{'name':<40} {'framework':<12} {'res':>4} {'classes':>7} {'top1':>7} {'slim':>5}  sha256")
    for e in entries:
        m = e["metrics"]
        top1, slim = m.get("top1", "-"), m.get("tf_slim_top1", "-")
        print(
            f"{e['name']:<40} {e['framework']:<12} {e['resolution']:>4} {e['num_classes']:>7} {top1:>7} {slim:>5}  "
            f"{e['sha256'][-1]}"
        )
    return 0


def _check_out_file(path: str, flag: str = "--out") -> None:
    """Refuse an output file path that cannot be written, before any work: a directory, or a path below a file."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path!r} is a directory; give a file name")
    parent = next((a for a in p.parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: {str(parent)!r} is not a directory")


def cmd_convert(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    from mnv2.weights.checkpoint import save_checkpoint
    from mnv2.weights.convert import convert_source

    converted = convert_source(args.source, format=args.format, output=args.output)
    path = save_checkpoint(args.out, converted.model, converted.meta)
    meta, c = converted.meta, converted.model.config
    summary = {
        "checkpoint": str(path),
        "framework": meta.source.get("framework"),
        "width_mult": c.width_mult,
        "num_classes": c.num_classes,
        "padding": c.padding,
        "bn_eps": c.bn_eps,
        "output": c.output,
        "preprocessing": meta.preprocessing.to_dict(),
    }
    if args.json:
        print(_dumps(summary))
    else:
        p = meta.preprocessing
        print(
            f"{summary['framework']} -> {path}: width {c.width_mult}, {c.num_classes} classes, padding {c.padding}, "
            f"BN eps {c.bn_eps:g}, output {c.output}; input {p.input_size}px, mean {p.mean}, std {p.std}"
        )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from mnv2.bench.profile import summarize
    from mnv2.models.mobilenetv2 import check_resolution

    if args.resolution is not None:
        check_resolution(args.resolution)
    model, resolution = _build_from_args(args)
    if args.memory:
        from mnv2.bench.memory import memory_report

        report = memory_report(model, resolution, args.splits)
        print(_dumps({"config": model.config.to_dict(), **report.to_dict()}) if args.json else report.format_table())
        return 0
    summary = summarize(model, resolution)
    if args.json:
        head = {"head": model.head_config} if hasattr(model, "head_config") else {}
        print(_dumps({"task": args.task, "config": model.config.to_dict(), **head, **summary.to_dict()}))
    else:
        print(summary.format_table())
    return 0


_FLAG_TYPES = {"int": int, "float": float, "str": str}


def _needs_extra(advice: str):
    def run(args: argparse.Namespace) -> int:
        raise ConfigError(f"`mnv2 {args.verb}`: {advice}")

    run.accepts_any = True  # its flags are unknown here: any are taken, the answer is the same
    return run


def _add_train_args(p: argparse.ArgumentParser) -> None:
    try:
        from mnv2.engine.config import flag_fields
    except ModuleNotFoundError as e:  # the runtime install: `mnv2 train` answers which extra brings it
        from mnv2.extras import missing_extra

        if missing_extra(e) is None:
            raise
        p.set_defaults(func=_needs_extra(missing_extra(e)))
        return

    p.add_argument("--out", default=None, help="run directory (config.yaml, best/last checkpoints, metrics, plots)")
    p.add_argument(
        "--recipe",
        default=None,
        help="shipped recipe (default, fashion-mnist, paper, modern, qat) or a YAML file (default: default, or qat)",
    )
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue that run from its last completed epoch")
    # Every other flag is a TrainConfig field (mnv2.engine.config.flag): name, type, choices and help live there.
    for f in flag_fields():
        name, meta = "--" + f.name.replace("_", "-"), f.metadata
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            p.add_argument(name, action="store_const", const=True, default=None, help=meta["help"])
            continue
        choices = meta["choices"]
        help_text = meta["help"] + (f" ({', '.join(map(str, choices))})" if choices else "")
        p.add_argument(name, type=_FLAG_TYPES[kind], default=None, help=help_text, metavar=f.name.upper())


def cmd_train(args: argparse.Namespace) -> int:
    from mnv2.engine.config import RESUME_FLAGS, apply_overrides, flag_fields, list_recipes, load_recipe
    from mnv2.engine.loop import load_run_config, train

    overrides = {f.name: getattr(args, f.name) for f in flag_fields()}
    if args.resume and args.out and args.out != args.resume:
        raise ConfigError(f"--resume {args.resume} continues that directory; drop --out {args.out}")
    out = args.resume or args.out
    if out is None:
        raise ConfigError("give --out RUN_DIR (a new run) or --resume RUN_DIR (continue one)")
    if args.resume:
        config = load_run_config(out)
        bad = sorted(k for k, v in overrides.items() if v is not None and k not in RESUME_FLAGS)
        if bad:
            allowed = "/".join(f"--{k}" for k in RESUME_FLAGS)
            raise ConfigError(f"--resume continues the saved config; only {allowed} may change, not {bad}")
        config = apply_overrides(config, overrides)
    else:
        # a task's own recipe (recipes/<task>.yaml, e.g. detection) unless one is named
        task_recipe = args.task if args.task in list_recipes() else "default"
        recipe = args.recipe or ("qat" if args.qat else task_recipe)
        config = apply_overrides(load_recipe(recipe), overrides)
    result = train(config, out, resume=bool(args.resume))
    metric = result["metric"]

    def num(v) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"

    summary = (
        f"best {metric} {num(result[f'best_{metric}'])} / last {num(result[f'last_{metric}'])} after "
        f"{result['epochs']} epochs, {result['wall_s'] / 60:.1f} min; best checkpoint {result['best']}"
    )
    if result["diagnosis"]:  # never "done" for a useless model (issue 24, 3)
        print(f"finished, but the best checkpoint is degenerate: {result['diagnosis']} ({summary})")
    else:
        print(f"done: {summary}")
    return 0


def _set_threads() -> None:
    from mnv2.extras import require_torch

    require_torch("this command")
    import torch

    from mnv2.cpu import auto_threads

    torch.set_num_threads(auto_threads())


def cmd_eval(args: argparse.Namespace) -> int:
    from mnv2.engine.evaluate import evaluate_checkpoint

    task = _task_of(args.checkpoint)
    _set_threads()
    if args.tile is not None:  # through the inference half, as `predict --tile` answers
        from mnv2.deploy.tiled_eval import evaluate_tiled
        from mnv2.engine.evaluate import finish_evaluation

        if args.tta != "none":
            raise ConfigError("--tile and --tta do not combine: tiles are evaluated as predict answers")
        metrics, classes, report = evaluate_tiled(
            args.checkpoint, args.data, tile=args.tile, overlap=args.overlap, split=args.split, workers=args.workers,
            strict=args.strict, drop_invalid=args.drop_invalid,
        )  # fmt: skip
        r = finish_evaluation(args.checkpoint, args.data, task, metrics, classes, report,
                              confusion_png=args.confusion, tile=args.tile, overlap=args.overlap)  # fmt: skip
    else:
        r = evaluate_checkpoint(
            args.checkpoint, args.data, split=args.split, batch_size=args.batch_size, workers=args.workers,
            strict=args.strict, confusion_png=args.confusion, tta=args.tta, drop_invalid=args.drop_invalid,
        )  # fmt: skip
    if r.get("confusion_error"):
        print(f"mnv2: warning: {r['confusion_error']}", file=sys.stderr)
    if r.get("diagnosis"):
        print(f"mnv2: warning: {r['diagnosis']}", file=sys.stderr)
    if args.json:
        print(_dumps(r))
        return 0
    tta = f"  ({r['tta']} test-time augmentation)" if r["tta"] != "none" else ""
    tta += f"  (tiles of {r['tile']} px, overlap {r['overlap']:g})" if r.get("tile") else ""
    print(f"{r['checkpoint']} on {r['data']}: {task.format_metrics(r)}  n={r['n']}{tta}")
    for name, value in r.get("per_class", {}).items():
        print(f"  {name:<20} {'n/a' if value is None else task.format_value(value)}")
    if any(r["skipped"].values()):
        print("skipped: " + ", ".join(f"{n} {k.replace('_', '-')}" for k, n in r["skipped"].items() if n))
    if r["confusion_png"] is not None:
        print(f"{task.report_file.removesuffix('.png')}: {r['confusion_png']}")
    else:
        print(f"{task.report_file.removesuffix('.png')}: {r['confusion_error']}")
    return 0


def _task_of(path: str):
    """The task of a checkpoint or an exported file, from its card (files exported before tasks are classifiers)."""
    from mnv2.deploy.card import read_card
    from mnv2.tasks import get_task

    return get_task(read_card(path)[0])


def cmd_predict(args: argparse.Namespace) -> int:
    from mnv2.deploy.jobs import JOB_SUFFIX, run_job
    from mnv2.deploy.predict import Predictor
    from mnv2.deploy.video import is_video_source, run_video

    videos = [s for s in args.inputs if is_video_source(s)]
    images = [s for s in args.inputs if not is_video_source(s)]
    if videos and args.out and args.out.endswith(JOB_SUFFIX):
        raise ConfigError(f"a video's results go to DIR/<name>.jsonl: give --out a folder, not {args.out!r}")
    if args.ray is not None and not (args.out and args.out.endswith(JOB_SUFFIX)):
        raise ConfigError("--ray runs a job: give --out FILE.jsonl")
    if videos and args.tile is not None:
        raise ConfigError("--tile is for still images; video frames run whole")
    # default engine: torch for a checkpoint; for an exported file the fastest of its own engines, torch-free
    p = Predictor.open(args.checkpoint, args.engine, args.precision, args.threads)
    if p.engine.name == "torch":
        _set_threads()
    options = p.check_options({"topk": args.topk, "min_score": args.min_score})
    if args.out and args.out.endswith(JOB_SUFFIX):  # a job: one line per image, continued by the same command
        summary = run_job(p, images, args.out, progress=sys.stderr.isatty(), tile=args.tile,
                          overlap=args.overlap, ray=args.ray, **options)  # fmt: skip
        print(summary.line())
        return 0
    for source in videos:  # DIR/<stem>.jsonl and the annotated DIR/<stem>.mp4
        summary = run_video(p, source, args.out or "predictions", video=not args.no_video,
                            vid_stride=args.vid_stride, max_reconnects=args.max_reconnects, track=args.track,
                            progress=sys.stderr.isatty(), **options)  # fmt: skip
        print(summary.line(), flush=True)
        if summary.error:
            raise ConfigError(summary.error)
    if not images:
        return 0
    output_dir = (args.out or "predictions") if p.inference.writes_files else args.out
    found = p.predict_files(images, strict=args.strict, output_dir=output_dir, tile=args.tile,
                            overlap=args.overlap, **options)  # fmt: skip
    if args.json:
        print(_dumps([p.inference.to_json(r) for r in found]))
    else:
        for r in found:
            print(p.inference.format_line(r), flush=True)
    return 0


def _bench_memory(args: argparse.Namespace) -> int:
    from mnv2.bench import memory_bench

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    widths = (args.width,) if args.width is not None else memory_bench.DEFAULT_WIDTHS
    splits = tuple(args.splits) if args.splits else memory_bench.DEFAULT_SPLITS
    rows = []
    for width in widths:
        rows += memory_bench.run_width(
            width, args.resolution or 224, splits, args.batch or 1, args.repeats, args.device, progress=not args.json
        )
    if args.json:
        best = memory_bench.best_split(rows)
        out = {**best.to_dict(), "candidates": [r.to_dict() for r in rows], **memory_bench.environment()}
        print(_dumps({"device": args.device, **out}))
        return 0
    print(memory_bench.format_rows(rows))
    env = memory_bench.environment()
    print(
        f"device {args.device}, torch {env['torch']}, {env['threads']} threads; bytes = allocator peak above the start"
    )
    if args.plot:
        memory_bench.plot_memory_per_layer(widths[-1], args.resolution or 224, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    from mnv2.deploy import ExportOptions, export
    from mnv2.deploy.onnx_export import format_for

    fmt = args.format or format_for(args.out)
    options = ExportOptions(
        bake_preprocessing=args.bake_preprocessing,
        dynamic_batch=not args.static_batch and fmt == "onnx",  # TFLite and ExecuTorch graphs are batch 1
        dynamic_size=args.dynamic_size,
        input_size=args.input_size,
        fold_bn=not args.no_fold_bn,
    )
    report = export(args.checkpoint, args.out, fmt, options)
    if args.json:
        print(_dumps(report.to_dict()))
    else:
        shape = "x".join(str(d) for d in report.input_shape)
        print(
            f"wrote {report.path} ({report.format}): {report.input_name} {report.input_dtype}[{shape}] -> "
            f"{report.output_name}; parity vs torch max |diff| {report.parity_max_abs:.2e} at batch "
            f"{', '.join(map(str, report.parity_batches))} ({report.seconds:.1f} s)"
        )
    return 0


def _quantize_data(model, data: str, calibration: bool, limit: int | None, workers: int) -> list:
    """``(x, y)`` batches of ``data`` through ``mnv2.data`` with the checkpoint's preprocessing; calibration
    reads the training part (Fashion-MNIST's train split, a folder's train/), evaluation the held-out part."""
    from pathlib import Path

    from mnv2.data.loaders import build_eval_data

    split = None
    if calibration and (data == "fashion-mnist" or (Path(data) / "train").is_dir()):
        split = "train"
    batches, classes, report = build_eval_data(
        data, model.meta.preprocessing, 256, split=split, workers=workers, limit=limit, in_chans=model.config.in_chans
    )
    names = model.meta.class_names
    if classes is not None and names is not None and list(classes) != list(names):
        raise ConfigError(f"{data!r} has classes {classes[:5]}..., the checkpoint {list(names)[:5]}...")
    if report.message():
        print(f"{data}: {report.message()}", file=sys.stderr)
    return list(batches.epoch(0))  # quantize() collects them into arrays


def cmd_quantize(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    from mnv2.deploy.quantize import CALIBRATION_IMAGES, quantize
    from mnv2.weights.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    if model.meta.task in ("detection", "segmentation"):  # the task's metric instead of top-1; train-split calibration
        from mnv2.deploy.quantize_tasks import quantize_task

        n = min(args.num_calibration, args.max_calibration) if args.num_calibration else None
        report = quantize_task(model, args.out, args.calibration, args.eval, args.method, num_calibration=n,
                               workers=args.workers, input_size=args.input_size)  # fmt: skip
        print(_dumps(report.to_dict()) if args.json else report.format())
        return 0
    if model.meta.task != "classification":
        raise ConfigError(f"mnv2 quantize takes classification, detection and segmentation checkpoints, not "
                          f"{model.meta.task}")  # fmt: skip
    if args.input_size is not None:
        raise ConfigError("--input-size is for detection and segmentation INT8; a classifier keeps its own size")
    calib = _quantize_data(model, args.calibration, True, args.max_calibration, args.workers)
    held_out = _quantize_data(model, args.eval, False, args.max_eval, args.workers) if args.eval else None
    report = quantize(
        model, args.out, calib, held_out, method=args.method,
        num_calibration=args.num_calibration or CALIBRATION_IMAGES, per_channel=not args.per_tensor,
    )  # fmt: skip
    print(_dumps(report.to_dict()) if args.json else report.format())
    return 0


def _status_line(quiet: bool):
    """A progress callback that rewrites one stderr line (nothing under ``--json``: stdout stays one document)."""

    def progress(msg: str) -> None:
        if not quiet:
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    return progress


def _bench_task(args: argparse.Namespace) -> int:
    from mnv2.bench.task_speed import format_task_table, run_task_bench

    progress = _status_line(args.json)
    sizes = [(args.resolution, args.resolution)] if args.resolution else None
    records = run_task_bench(args.task, sizes, threads=args.threads or 2, rounds=args.rounds, iters=args.iters,
                             only=args.engines, progress=progress)  # fmt: skip
    if not args.json:
        print("\r\033[K", end="", file=sys.stderr)
    print(_dumps([r.to_dict() for r in records]) if args.json else format_task_table(records))
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from mnv2.bench.speed import format_table, run_bench
    from mnv2.errors import ConfigError

    if args.task != "classification":
        return _bench_task(args)

    memory_only = [f"--{k}" for k in ("width", "splits", "plot") if getattr(args, k) is not None]
    if memory_only:
        raise ConfigError(f"{', '.join(memory_only)}: only for `mnv2 bench --memory` (the speed bench takes --model)")

    progress = _status_line(args.json)
    records = run_bench(
        model_name=args.model, resolution=args.resolution or 224, batch=args.batch or 32, rounds=args.rounds,
        threads=args.threads or 2, iters_1=args.iters, peers=not args.no_peers, int8=not args.no_int8,
        only=args.engines, progress=progress,
    )  # fmt: skip
    if not args.json:
        print("\r\033[K", end="", file=sys.stderr)
    print(_dumps([r.to_dict() for r in records]) if args.json else format_table(records, args.batch or 32))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # One verb, two benchmarks: §5.1 memory (issue 5) or engine speed (issue 6).
    if args.resolution is not None:
        from mnv2.models.mobilenetv2 import check_resolution

        check_resolution(args.resolution)
    return _bench_memory(args) if args.memory else _bench_speed(args)


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util
    import logging
    import os

    missing = [m for m in ("starlette", "uvicorn", "multipart", "prometheus_client") if not importlib.util.find_spec(m)]
    if missing:
        raise ConfigError(f"mnv2 serve needs {', '.join(missing)}: pip install 'mnv2[serve]'")
    from mnv2.serve import API_KEY_ENV, ServeSettings, serve

    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        decode_threads=args.decode_threads,
        body_timeout_s=args.body_timeout_s,
        max_bodies_bytes=max(ServeSettings.max_bodies_bytes, int(args.max_body_mb * 2**20)),
    )
    from pathlib import Path

    from mnv2.deploy.engines import check_engine

    check_engine(args.engine)  # before any model loads
    missing = [m for m in args.models if not Path(m).exists()]
    if missing:
        raise ConfigError(f"model file {missing[0]!r} does not exist")
    _check_port(args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    serve(args.models, args.host, args.port, settings, engine=args.engine, threads=args.threads)
    return 0


def _check_port(host: str, port: int) -> None:
    """A clear error for a port in use (uvicorn would log it and exit 1 after loading every model)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``verb`` (the command line's), ``train``'s flags are made only when that verb is train:
    they come from ``TrainConfig``, whose import brings torch and kornia (1.2 s of every other verb's start-up)."""
    from mnv2._version import __version__

    parser = _Parser(prog="mnv2", description="MobileNetV2 (arXiv:1801.04381) as practical software.")
    parser.add_argument("--version", action="version", version=f"mnv2 {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")

    p = sub.add_parser("models", help="list registered models")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pretrained", action="store_true", help="list the published weights (mnv2.create_model weights=)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="per-layer params, multiply-adds and activations")
    _add_arch_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--memory", action="store_true", help="dense vs §5.1 streamed activation memory per block")
    p.add_argument("--splits", default="full", help="§5.1 slices per layer for --memory: an integer or 'full'")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train or fine-tune (recipes: default, fashion-mnist, paper, modern)")
    p.set_defaults(func=cmd_train)
    if verb in (None, "train"):
        _add_train_args(p)  # without the train extra: func answers which extra to install

    p = sub.add_parser("eval", help="top-1/top-5/per-class accuracy and a confusion-matrix PNG")
    p.add_argument("checkpoint")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (its test split) or an image folder")
    p.add_argument("--split", default=None, help="fashion-mnist: train|test; folder: a subfolder name (default val/)")
    p.add_argument("--batch-size", type=_positive, default=250)
    p.add_argument("--workers", type=_non_negative, default=2)
    p.add_argument("--strict", action="store_true", help="fail on corrupt or non-image files")
    p.add_argument("--drop-invalid", action="store_true", help="detection: drop ground-truth boxes with no area or "
                   "outside their image, and count them (default: such a box is an error naming it)")  # fmt: skip
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PIXELS",
        help="detection/segmentation: evaluate predict's tiled inference (tiles of this side)",
    )
    p.add_argument("--overlap", type=float, default=0.2, help="with --tile: the tiles' overlap, a fraction of a tile")
    p.add_argument(
        "--confusion",
        default=None,
        metavar="PNG|DIR",
        help="the report picture (default: the checkpoint's run directory, else the current directory)",
    )
    p.add_argument(
        "--tta", default="none", metavar="none|flip|ms_flip",
        help="test-time augmentation: flip averages each image with its mirror image; ms_flip (segmentation): "
        "scales 0.5-1.75 and flips, the paper's MF setting (default none: single view)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object: top1, top5, n, loss, per_class, ...")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="class names and probabilities for images")
    p.add_argument("checkpoint", help="mnv2 checkpoint (.safetensors), or an .onnx/.tflite from mnv2 export/quantize")
    p.add_argument("inputs", nargs="+", metavar="SOURCE",
                   help="image files and folders; video files (mp4, mkv, avi, mov, webm), a camera (/dev/videoN) or a "
                   "stream (rtsp://, http(s):// MJPEG or HLS): DIR/<name>.jsonl and DIR/<name>.mp4")  # fmt: skip
    p.add_argument("--topk", type=_positive, default=5)
    p.add_argument(
        "--engine", default=None, help="auto (fastest installed), onnxruntime, openvino, litert or torch "
        "(default: torch for checkpoints, auto for .onnx/.tflite files)",
    )  # fmt: skip
    p.add_argument("--precision", default=None, help="fp32, bf16 (openvino) or int8 (an INT8 file)")
    p.add_argument("--threads", type=_positive, default=None, help="engine intra-op threads (default: all cores)")
    p.add_argument("--strict", action="store_true", help="fail on an undecodable image instead of reporting it")
    p.add_argument("--out", default=None, metavar="DIR|FILE.jsonl",
                   help="detection: one PNG per image with the boxes drawn; segmentation: colour mask, overlay and "
                   "label PNGs (default ./predictions). A .jsonl file: a job, one JSON line per image appended as it "
                   "is done; the same command again continues it")  # fmt: skip
    p.add_argument("--min-score", type=float, default=None, help="detection: lowest score shown (default 0.3)")
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PIXELS",
        help="detection/segmentation: cut each image into overlapping tiles of this side (about the "
        "model's input size) for small objects in large images; default: the whole image at once",
    )
    p.add_argument("--overlap", type=float, default=0.2, help="with --tile: the tiles' overlap, a fraction of a tile")
    p.add_argument("--json", action="store_true", help="one JSON list (detection: COCO results-style boxes)")
    p.add_argument("--ray", default=None, metavar="ADDRESS|auto|local",
                   help="with --out FILE.jsonl: run the job's model on this Ray cluster's actors (pip install "
                   "'mnv2[ray]'); the file is written and continued here as without it")  # fmt: skip
    p.add_argument("--no-video", action="store_true", help="video sources: write the JSONL only, no annotated mp4")
    p.add_argument("--vid-stride", type=_positive, default=1, help="video files: process every Nth frame")
    p.add_argument("--track", action="store_true", help="video, detection: a track_id per box, stable across frames "
                   "(ByteTrack; pip install 'mnv2[track]')")  # fmt: skip
    p.add_argument(
        "--max-reconnects",
        type=_non_negative,
        default=5,
        help="live streams: reopen a lost stream this many times (back-off 1, 2, 4 ... s)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("convert", help="import Keras / torchvision / timm / Hugging Face weights as an mnv2 checkpoint")
    p.add_argument("source", help="a .h5/.keras file, a .pth/.safetensors state dict, or a Hugging Face directory")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--format", default=None, help="keras, torchvision, timm or huggingface (default: detected)")
    p.add_argument("--output", default=None, choices=("logits", "softmax"), help="default: what the source outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (or tflite/executorch), verified against torch")
    p.add_argument("checkpoint", help="mnv2 checkpoint (.safetensors)")
    p.add_argument("--format", default=None, help="onnx, tflite, executorch (default: from --out's suffix, else onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--bake-preprocessing", action="store_true", help="uint8 HWC RGB in, probabilities out")
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="batch fixed at 1 (default: dynamic batch for ONNX; TFLite and ExecuTorch are batch 1)",
    )
    p.add_argument("--dynamic-size", action="store_true", help="symbolic height/width (padding='torch' only)")
    p.add_argument(
        "--input-size", type=_image_size, default=None,
        help="N or WIDTHxHEIGHT (a segmenter at its images' size, e.g. 480x360; default: the checkpoint's size)",
    )  # fmt: skip
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm ops in the graph")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="INT8 (QDQ ONNX or TFLite) with calibrated ranges and an fp32-vs-INT8 report")
    p.add_argument("checkpoint", help="mnv2 checkpoint (.safetensors)")
    p.add_argument(
        "--calibration", required=True,
        help="fashion-mnist (its train split), an image folder (its train/ part if any) or an .npz of x, y",
    )  # fmt: skip
    p.add_argument("--eval", default=None, help="held-out data for the report: fashion-mnist (test), folder, .npz")
    p.add_argument("--out", required=True, help="INT8 file: .onnx (ONNX Runtime, OpenVINO) or .tflite (LiteRT)")
    p.add_argument(
        "--method", default="auto",
        help="auto (measure all); .onnx: percentile, entropy, distribution, minmax; .tflite: histogram, minmax",
    )  # fmt: skip
    p.add_argument(
        "--num-calibration", type=_positive, default=None,
        help="images used to calibrate ranges (default: classification 512, detection 64, segmentation 32)",
    )  # fmt: skip
    p.add_argument(
        "--input-size", type=_image_size, default=None,
        help="detection/segmentation: the graph's N or WIDTHxHEIGHT (default: the detector's size, the eval images')",
    )  # fmt: skip
    p.add_argument("--max-calibration", type=_positive, default=2048, help="images read from --calibration")
    p.add_argument("--max-eval", type=_positive, default=None, help="images read from --eval (default all)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (to see depthwise collapse)")
    p.add_argument("--workers", type=_non_negative, default=2, help="image-decoding worker processes for folders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("bench", help="benchmarks: engine speed vs peers (default) or --memory (§5.1 streaming)")
    p.add_argument("--memory", action="store_true", help="§5.1: measured peak activation memory, bound, latency")
    p.add_argument("--task", default="classification", choices=("classification", "detection", "segmentation"),
                   help="speed: detection (SSDLite 1.0 @320) or segmentation (DeepLabv3 @512x512 and 480x360): batch-1 "
                   "latency per engine")  # fmt: skip
    p.add_argument("--model", default="mobilenetv2_100", help="speed: registered name (random weights)")
    p.add_argument("--width", type=float, default=None, help="memory: one width (default: 0.35 and 1.0)")
    p.add_argument("--resolution", type=_positive, default=None, help="input size (default 224)")
    p.add_argument(
        "--batch", type=_positive, default=None, help="speed: throughput batch (default 32); memory: default 1"
    )
    p.add_argument(
        "--threads", type=_positive, default=None, help="intra-op threads (speed default 2; memory: torch's)"
    )
    p.add_argument("--json", action="store_true", help="speed: a list of records; memory: one object (best split)")
    p.add_argument(
        "--rounds", type=_positive, default=3, help="speed: rounds (engine order alternates); figures are medians"
    )
    p.add_argument("--iters", type=_positive, default=30, help="speed: timed batch-1 calls per round")
    p.add_argument("--engines", nargs="*", default=None, help="speed: only engines whose name contains one of these")
    p.add_argument("--no-peers", action="store_true", help="speed: skip the peers")
    p.add_argument("--no-int8", action="store_true", help="speed: skip INT8")
    p.add_argument("--splits", nargs="+", default=None, help="memory: split counts (default: 1 2 4 6 full)")
    p.add_argument("--repeats", type=_positive, default=7, help="memory: interleaved latency repeats (medians)")
    p.add_argument("--device", default="cpu", help="memory: cpu, or cuda (torch.cuda.max_memory_allocated)")
    p.add_argument("--plot", default=None, help="memory: also write the per-layer memory plot (PNG)")
    p.set_defaults(func=cmd_bench)

    from mnv2.serve.settings import API_KEY_ENV, ServeSettings

    p = sub.add_parser("serve", help="an HTTP API and a web page for checkpoints or exported files of any task")
    p.add_argument("models", nargs="+", help="checkpoints (.safetensors) or exported .onnx/.tflite files")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs an API key")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--api-key", default=None, help=f"bearer token required on /v1 and /metrics (or {API_KEY_ENV})")
    p.add_argument("--engine", default="auto", help="auto (the fastest installed) or onnxruntime, openvino, litert, "
                   "torch")  # fmt: skip
    p.add_argument("--threads", type=_positive, default=None, help="inference threads per model (default: all)")
    limits = ServeSettings()  # the defaults live there, once
    p.add_argument(
        "--max-batch",
        type=_positive,
        default=limits.max_batch,
        help="most images per forward pass (default %(default)s)",
    )
    p.add_argument("--max-wait-ms", type=_float_at_least(0, False), default=limits.max_wait_ms,
                   help="how long a batch waits for more requests on their way (default %(default)s)")  # fmt: skip
    p.add_argument("--max-queue", type=_positive, default=limits.max_queue,
                   help="requests waiting per model; more get 503 (default %(default)s)")  # fmt: skip
    p.add_argument("--decode-threads", type=_positive, default=limits.decode_threads,
                   help="threads decoding and preprocessing uploads (default %(default)s)")  # fmt: skip
    p.add_argument("--max-body-mb", type=_float_at_least(0, True), default=limits.max_body_bytes / 2**20,
                   help="largest request body (413 above) (default %(default)s)")  # fmt: skip
    p.add_argument("--max-megapixels", type=_float_at_least(0, True), default=limits.max_pixels / 1e6,
                   help="largest image, from its header (413 above) (default %(default)s)")  # fmt: skip
    p.add_argument("--body-timeout-s", type=_float_at_least(0, True), default=limits.body_timeout_s,
                   help="seconds a request's body may take to arrive (408 after) (default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_serve)
    return parser


# Exit statuses: 0 success, 2 a user-caused failure (bad argument, file or data; an I/O failure such as a full or
# read-only disk), 70 (EX_SOFTWARE) a bug in mnv2, 130 interrupted. Every failure is one line on stderr; a bug's
# traceback is printed only with MNV2_DEBUG=1.
EXIT_USER, EXIT_BUG = 2, 70


def _io_message(e: OSError) -> str:
    import errno
    import os

    what = {
        errno.ENOSPC: "no space left on device",
        errno.EROFS: "read-only file system",
        errno.ENOTDIR: "not a directory",
        errno.EISDIR: "is a directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOENT: "no such file or directory",
        errno.EEXIST: "file exists",
        errno.EDQUOT: "disk quota exceeded",
    }.get(e.errno, e.strerror or (os.strerror(e.errno) if e.errno else str(e)))
    names = " -> ".join(repr(str(f)) for f in (e.filename, e.filename2) if f is not None)
    return f"{names}: {what}" if names else f"{what} ({e})"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    import os

    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((w for w in words if not w.startswith("-")), None))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args.func, "accepts_any", False):
        args = parser.parse_args(argv)  # the one-line error for unknown flags
    try:
        return args.func(args)
    except Mnv2Error as e:
        print(f"mnv2: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:  # e.g. `mnv2 summary | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("mnv2: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("mnv2: error: out of memory (try a smaller --batch-size or --resolution)", file=sys.stderr)
        return EXIT_USER
    except OSError as e:
        print(f"mnv2: error: {_one_line(_io_message(e))}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # a bug: one line, the traceback only on request
        from mnv2.extras import missing_extra

        advice = missing_extra(e) if isinstance(e, ModuleNotFoundError) else None
        if advice:  # an optional extra not installed (the runtime install has no torch): a user's fix, not a bug
            print(f"mnv2: error: `mnv2 {args.verb}`: {advice}", file=sys.stderr)
            return EXIT_USER
        if os.environ.get("MNV2_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        print(
            f"mnv2: internal error: {type(e).__name__}: {_one_line(e)[:300]} -- this is a bug in mnv2; please report "
            "it with the command line (set MNV2_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
