"""Which part of a detector loses its INT8 accuracy? Keep one region in fp32 at a time (every ONNX node from the
region's convolutions up to the next region's), quantize the rest with ONNX Runtime (static QDQ, as `mnv2
quantize`), and report COCO metrics on the val split (BENCHMARKS.md, "SSDLite on raccoon", INT8).

    .venv/bin/python benchmarks/int8_regions.py RUN/best.safetensors --data ../shared/data/raccoon
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from mnv2.deploy.exporters.onnx import ExportOptions, export_onnx, ort_session
from mnv2.deploy.quantize import float_tail, onnx_runner, quantize_onnx_static, read_batches, task_metrics
from mnv2.tasks import get_task
from mnv2.weights.checkpoint import load_checkpoint

REGIONS = ("none", "stem", "blocks0-3", "blocks4-5", "blocks6", "backbone-rest", "extras", "predictors")


def region_of(weight: str) -> str:
    """A conv's region from its weight's name (``model.backbone.blocks.K...``: Table 2's bottleneck rows)."""
    m = re.match(r"model\.backbone\.blocks\.(\d+)", weight)
    if m:
        b = int(m.group(1))
        return "blocks0-3" if b <= 3 else "blocks4-5" if b <= 5 else "blocks6"
    if "backbone" in weight:
        return "stem" if "stem" in weight else "backbone-rest"
    return "extras" if "extras" in weight else "predictors"


def regions(graph) -> dict[str, str]:
    """node name -> region: a conv's own; any other node, its first region-holding input's (topological order)."""
    producer = {o: n for n in graph.node for o in n.output}
    reg: dict[str, str] = {}
    for n in graph.node:
        if n.op_type == "Conv":
            reg[n.name] = region_of(n.input[1])
            continue
        for i in n.input:
            p = producer.get(i)
            if p is not None and p.name in reg:
                reg[n.name] = reg[p.name]
                break
    return reg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--num-calibration", type=int, default=48)
    ap.add_argument("--regions", default=",".join(REGIONS))
    args = ap.parse_args()
    model = load_checkpoint(args.checkpoint)
    meta, task = model.meta, get_task("detection")
    train, _, _ = task.load_eval_data(args.data, meta.preprocessing, 8, split="train", workers=0)
    val, _, _ = task.load_eval_data(args.data, meta.preprocessing, 8, split="val", workers=0)
    x_cal, _, _ = read_batches(train, None, args.num_calibration)
    x_val, t_val, _ = read_batches(val, None)

    def metrics(path: Path) -> dict:
        return task_metrics(task, onnx_runner(ort_session(path)), x_val, t_val, meta, meta.class_names).metrics

    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "fp32.onnx"
        export_onnx(model, fp32, ExportOptions(fold_bn=True, dynamic_batch=True))
        print("| kept fp32 (all else INT8) | COCO mAP | mAP@0.5 | mAP@0.75 |\n|---|---:|---:|---:|")
        for r in args.regions.split(","):
            out = Path(d) / f"int8-{r}.onnx"

            def keep(graph, r=r):
                return [k for k, v in regions(graph).items() if v == r] + (float_tail(graph) if r != "none" else [])

            quantize_onnx_static(fp32, out, x_cal, args.method, batch=8, keep_float=keep)
            m = metrics(out)
            label = r if r == "none" else f"{r} + decoding"
            print(f"| {label} | {m['mAP']:.3f} | {m['mAP50']:.3f} | {m['mAP75']:.3f} |", flush=True)
        m = metrics(fp32)
        print(f"| fp32 | {m['mAP']:.3f} | {m['mAP50']:.3f} | {m['mAP75']:.3f} |")


if __name__ == "__main__":
    main()
