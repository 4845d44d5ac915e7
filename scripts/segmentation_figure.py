"""Draw a segmentation model's figure for the docs: for each photo of a SegNet/CamVid-layout split, the photo, its
ground truth and the model's prediction (``mnv2.predict``, the path every engine shares), side by side in the
model's class colours; label values outside the classes (CamVid's 11, unlabelled) are black.

    .venv/bin/python scripts/segmentation_figure.py examples/models/camvid_deeplabv3_mnv2.safetensors \
        ../shared/data/camvid/val docs/camvid-val-overlay.png --images 0016E5_07959 0016E5_07977 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnv2.deploy.runtime.predict import Predictor
from mnv2.tasks.infer.segmentation import class_colors

PANEL = (320, 240)  # each panel's size: three across fit a page
HEADER = 24


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("images", help="the split's image folder; its labels are in the folder named <it>annot")
    ap.add_argument("out")
    ap.add_argument("--images", dest="stems", nargs="+", required=True, help="image names, without the suffix")
    args = ap.parse_args()
    folder = Path(args.images)
    photos = [folder / f"{s}.png" for s in args.stems]
    predictor = Predictor.open(args.model, threads=2)
    results = predictor.predict_images([Image.open(p).convert("RGB") for p in photos])
    colors = class_colors(predictor.info)
    canvas = Image.new("RGB", (3 * PANEL[0], HEADER + len(photos) * PANEL[1]), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(("photo", "ground truth (black: unlabelled)", "mnv2 prediction")):
        draw.text((i * PANEL[0] + 8, 6), text, fill="black")
    for row, (photo, result) in enumerate(zip(photos, results)):
        label = np.asarray(Image.open(folder.parent / f"{folder.name}annot" / photo.name))
        truth = np.zeros((*label.shape, 3), np.uint8)
        known = label < len(colors)
        truth[known] = colors[label[known]]
        panels = (Image.open(photo).convert("RGB"), Image.fromarray(truth), Image.fromarray(colors[result["mask"]]))
        for col, panel in enumerate(panels):
            canvas.paste(panel.resize(PANEL, Image.NEAREST if col else Image.BILINEAR),
                         (col * PANEL[0], HEADER + row * PANEL[1]))  # fmt: skip
    canvas.save(args.out, optimize=True)
    print(json.dumps({"out": args.out, "images": [p.name for p in photos]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
