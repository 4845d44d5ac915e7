"""Memory and time of one large segmentation request (issue 28, 13), each in a fresh process.

    python benchmarks/segment_memory.py --model examples/models/camvid_deeplabv3_mnv2.safetensors \
        --image ../shared/data/camvid/val/0016E5_07959.png \
        [--old-src /tmp/old/src]

The photo is scaled up to 40 megapixels (the server's default limit), 12 (4000x3000) and 2; for each, a child
process opens the model (``mnv2.deploy.runtime.predict.Predictor``, what ``mnv2 serve`` and ``mnv2 predict``
run), predicts the photo once, and reports its peak resident memory (``ru_maxrss``) and the prediction's wall
time. ``--old-src`` runs the same child against another checkout's ``src`` (the code before a change) in the same
run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from PIL import Image
from mnv2.deploy.runtime.predict import Predictor
model, image = sys.argv[1], sys.argv[2]
p = Predictor.open(model, threads=int(sys.argv[3]))
im = Image.open(image).convert("RGB")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
r = p.predict_images([im])[0]
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak, "before_mb": base, "s": dt, "size": [r["width"], r["height"]]}))
"""


def measure(src: Path, model: str, image: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(image), str(threads)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--old-src", default=None, help="another checkout's src/ to compare with")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from PIL import Image

    here = Path(__file__).resolve().parents[1] / "src"
    photo = Image.open(args.image).convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((7300, 5475), (4000, 3000), (1600, 1200)):  # 40 MP: mnv2 serve's default --max-megapixels
            path = Path(tmp) / f"{w}x{h}.png"
            photo.resize((w, h), Image.BILINEAR).save(path)
            srcs = [("this checkout", here)] + ([("old src", Path(args.old_src))] if args.old_src else [])
            for name, src in srcs:
                r = measure(src, args.model, path, args.threads)
                print(
                    f"{w}x{h} ({w * h / 1e6:.1f} MP), {name:<13}: peak RSS {r['peak_mb']:7.0f} MB (after opening the "
                    f"model: {r['before_mb']:.0f} MB), predict {r['s']:.2f} s, mask {r['size'][0]}x{r['size'][1]}"
                )


if __name__ == "__main__":
    main()
