"""``mnv2 predict``: answers for images, folders (a resumable job with ``--out FILE.jsonl``), videos and streams."""

from __future__ import annotations

import argparse
import sys

from mnv2.cli.common import chosen_tile, dumps, non_negative, positive, set_threads
from mnv2.errors import ConfigError


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("predict", help="class names and probabilities for images")
    p.add_argument("checkpoint", help="mnv2 checkpoint (.safetensors), or an .onnx/.tflite from mnv2 export/quantize")
    p.add_argument("inputs", nargs="+", metavar="SOURCE",
                   help="image files and folders; video files (mp4, mkv, avi, mov, webm), a camera (/dev/videoN) or a "
                   "stream (rtsp://, http(s):// MJPEG or HLS): DIR/<name>.jsonl and DIR/<name>.mp4")  # fmt: skip
    p.add_argument("--topk", type=positive, default=5)
    p.add_argument(
        "--engine", default=None, help="auto (fastest installed), onnxruntime, openvino, litert or torch "
        "(default: torch for checkpoints, auto for .onnx/.tflite files)",
    )  # fmt: skip
    p.add_argument("--precision", default=None, help="fp32, bf16 (openvino) or int8 (an INT8 file)")
    p.add_argument("--threads", type=positive, default=None, help="engine intra-op threads (default: all cores)")
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
        "model's input size) for small objects in large images; default: the tile the model was trained on, if "
        "any, else the whole image at once; 0: the whole image",
    )
    p.add_argument("--overlap", type=float, default=0.2, help="with --tile: the tiles' overlap, a fraction of a tile")
    p.add_argument("--json", action="store_true", help="one JSON list (detection: COCO results-style boxes)")
    p.add_argument("--ray", default=None, metavar="ADDRESS|auto|local",
                   help="with --out FILE.jsonl: run the job's model on this Ray cluster's actors (pip install "
                   "'mnv2[ray]'); the file is written and continued here as without it")  # fmt: skip
    p.add_argument("--no-video", action="store_true", help="video sources: write the JSONL only, no annotated mp4")
    p.add_argument("--vid-stride", type=positive, default=1, help="video files: process every Nth frame")
    p.add_argument("--track", action="store_true", help="video, detection: a track_id per box, stable across frames "
                   "(ByteTrack; pip install 'mnv2[track]')")  # fmt: skip
    p.add_argument(
        "--max-reconnects",
        type=non_negative,
        default=5,
        help="live streams: reopen a lost stream this many times (back-off 1, 2, 4 ... s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnv2.deploy.runtime.jobs import JOB_SUFFIX, run_job
    from mnv2.deploy.runtime.predict import Predictor
    from mnv2.deploy.runtime.video import is_video_source, run_video

    videos = [s for s in args.inputs if is_video_source(s)]
    images = [s for s in args.inputs if not is_video_source(s)]
    if videos and args.out and args.out.endswith(JOB_SUFFIX):
        raise ConfigError(f"a video's results go to DIR/<name>.jsonl: give --out a folder, not {args.out!r}")
    if args.ray is not None and not (args.out and args.out.endswith(JOB_SUFFIX)):
        raise ConfigError("--ray runs a job: give --out FILE.jsonl")
    if videos and args.tile:
        raise ConfigError("--tile is for still images; video frames run whole")
    # default engine: torch for a checkpoint; for an exported file the fastest of its own engines, torch-free
    p = Predictor.open(args.checkpoint, args.engine, args.precision, args.threads)
    args.tile = chosen_tile(args.tile, p.info.get("tile"), note=bool(images))
    if p.engine.name == "torch":
        set_threads()
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
        print(dumps([p.inference.to_json(r) for r in found]))
    else:
        for r in found:
            print(p.inference.format_line(r), flush=True)
    return 0
