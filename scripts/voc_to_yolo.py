"""Write a detection dataset (any layout mnv2 reads) in the Ultralytics YOLO layout, keeping mnv2's splits as
``<split>.txt`` lists in the reader's order: ``python scripts/voc_to_yolo.py SRC DST`` (issue 29's parity check of
the YOLO reader against the VOC one, BENCHMARKS.md "Data formats and the architecture")."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from mnv2.data.detection import load_detection_dataset
from mnv2.data.yolo import label_path


def main(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    names, splits = load_detection_dataset(src)
    config: dict = {"names": dict(enumerate(names)), "nc": len(names)}
    for split, records in splits.items():
        lines = []
        for r in records:
            image = dst / "images" / split / Path(r.path).name
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(r.path, image)
            labels = label_path(image)
            labels.parent.mkdir(parents=True, exist_ok=True)
            labels.write_text("".join(
                f"{label - 1} {(x1 + x2) / 2 / r.width:.6f} {(y1 + y2) / 2 / r.height:.6f} "
                f"{(x2 - x1) / r.width:.6f} {(y2 - y1) / r.height:.6f}\n"
                for (x1, y1, x2, y2), label in zip(r.boxes, r.labels)
            ))  # fmt: skip
            lines.append(f"./images/{split}/{image.name}\n")
        (dst / f"{split}.txt").write_text("".join(lines))
        config[split] = f"{split}.txt"
    (dst / "data.yaml").write_text(yaml.safe_dump(config))
    print({s: len(v) for s, v in splits.items()}, names)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
