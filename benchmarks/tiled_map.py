"""Tiled against untiled detection (issue 27, 2) on large images with small objects: the raccoon set's 40 val photos
pasted small (longest side 160 px by default) into 2000x1500 canvases, four to a canvas at seeded random places, their
VOC boxes moved with them; `mnv2 eval` of the example detector on that set, whole-image and with `--tile`.

    .venv/bin/python benchmarks/tiled_map.py [--side 160] [--tiles 320 480]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from mnv2.data.detection import parse_voc_xml

ROOT = Path(__file__).resolve().parents[1]
RACCOON = ROOT.parent / "shared" / "data" / "raccoon"
DETECTOR = ROOT / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors"
CANVAS = (2000, 1500)


def build(out: Path, side: int, seed: int = 0) -> int:
    """The canvases as a VOC folder (``images/``, ``annotations/``, ``val.txt``); returns the number of boxes."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True)
    (out / "annotations").mkdir()
    stems = (RACCOON / "val.txt").read_text().split()
    stems = [Path(s).stem for s in stems]
    names, boxes = [], 0
    for c in range(0, len(stems), 4):
        canvas = Image.new("RGB", CANVAS, (118, 124, 108))
        objects = []
        cells = rng.sample([(x, y) for x in range(4) for y in range(3)], 4)  # one photo per cell: no overlaps
        for stem, (cx, cy) in zip(stems[c : c + 4], cells):
            photo = Image.open(RACCOON / "images" / f"{stem}.jpg").convert("RGB")
            scale = side / max(photo.size)
            small = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)
            x = cx * 500 + rng.randint(0, 500 - small.width)
            y = cy * 500 + rng.randint(0, 500 - small.height)
            canvas.paste(small, (x, y))
            for _, b in parse_voc_xml(RACCOON / "annotations" / f"{stem}.xml")[1]:
                bx = [x + b[0] * scale, y + b[1] * scale, x + b[2] * scale, y + b[3] * scale]
                objects.append(
                    "<object><name>raccoon</name><bndbox>"
                    + "".join(f"<{t}>{v:.1f}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), bx))
                    + "</bndbox></object>"
                )
        name = f"canvas{c // 4:02d}"
        canvas.save(out / "images" / f"{name}.jpg", quality=92)
        (out / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename>{''.join(objects)}</annotation>"
        )
        names.append(name)
        boxes += len(objects)
    (out / "val.txt").write_text("\n".join(names) + "\n")
    return boxes


def evaluate(data: Path, *extra: str) -> tuple[dict, float]:
    mnv2 = Path(sys.executable).parent / "mnv2"
    t0 = time.perf_counter()
    out = subprocess.run([str(mnv2), "eval", str(DETECTOR), "--data", str(data), "--split", "val", "--json",
                          "--confusion", str(data), "--workers", "0", *extra],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=160, help="longest side of each pasted photo, px")
    ap.add_argument("--tiles", type=int, nargs="+", default=[320, 480])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "canvases"
        boxes = build(data, args.side)
        print(f"{time.strftime('%Y-%m-%d %H:%M')}: {len(list((data / 'images').iterdir()))} canvases of "
              f"{CANVAS[0]}x{CANVAS[1]}, {boxes} raccoons (photos at {args.side} px on the longest side)")  # fmt: skip
        print("| inference | mAP@0.5 | COCO mAP | AR@100 | eval s |")
        print("|---|---:|---:|---:|---:|")
        runs = [("whole image (one 320-px resize)", ())] + [
            (f"tiles of {t} px, overlap 0.2", ("--tile", str(t))) for t in args.tiles]  # fmt: skip
        for name, extra in runs:
            r, s = evaluate(data, *extra)
            print(f"| {name} | {r['mAP50']:.3f} | {r['mAP']:.3f} | {r['AR100']:.3f} | {s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
