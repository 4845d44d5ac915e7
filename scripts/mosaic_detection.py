"""Make a detection set's objects small against their images: paste each split's photos, in the reader's order,
K x K to a canvas and write the canvases in the Ultralytics YOLO layout, boxes moved with their photos:
``python scripts/mosaic_detection.py SRC DST [--grid K]``. BCCD at K = 2 gives 1280x960 canvases whose cells are a
quarter of their side at a 320-px input: issue 24's measurement of tiles in training on real labels (BENCHMARKS.md,
"New data"). A split's last photos that do not fill a canvas are left out and counted. Invalid boxes are dropped
by the reader (counted in its report)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml
from PIL import Image

from mnv2.data.detection import DetectionReport, load_detection_dataset
from mnv2.data.yolo import label_path


def main(src: Path, dst: Path, grid: int) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    report = DetectionReport()
    names, splits = load_detection_dataset(src, report=report)
    config: dict = {"names": dict(enumerate(names)), "nc": len(names)}
    for split, records in splits.items():
        per = grid * grid
        lines, left = [], len(records) % per
        for n in range(len(records) // per):
            group = records[n * per : (n + 1) * per]
            # one cell per photo, the size of the group's largest photo, so no photo is resized (the point is the
            # objects' true size against a larger image)
            cw, ch = max(r.width for r in group), max(r.height for r in group)
            canvas = Image.new("RGB", (grid * cw, grid * ch))
            rows = []
            for i, r in enumerate(group):
                ox, oy = (i % grid) * cw, (i // grid) * ch
                with Image.open(r.path) as im:
                    canvas.paste(im.convert("RGB"), (ox, oy))
                for (x1, y1, x2, y2), label in zip(r.boxes, r.labels):
                    cx, cy = (x1 + x2) / 2 + ox, (y1 + y2) / 2 + oy
                    rows.append(f"{label - 1} {cx / canvas.width:.6f} {cy / canvas.height:.6f} "
                                f"{(x2 - x1) / canvas.width:.6f} {(y2 - y1) / canvas.height:.6f}\n")  # fmt: skip
            image = dst / "images" / split / f"mosaic_{n:04d}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(image, quality=95)
            labels = label_path(image)
            labels.parent.mkdir(parents=True, exist_ok=True)
            labels.write_text("".join(rows))
            lines.append(f"./images/{split}/{image.name}\n")
        (dst / f"{split}.txt").write_text("".join(lines))
        config[split] = f"{split}.txt"
        print(f"{split}: {len(lines)} canvases of {grid}x{grid} photos ({left} photos left out)")
    (dst / "data.yaml").write_text(yaml.safe_dump(config))
    print(f"classes {names}; {report.message() or 'no box dropped'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--grid", type=int, default=2, help="photos per canvas side (default 2)")
    args = parser.parse_args()
    main(args.src, args.dst, args.grid)
