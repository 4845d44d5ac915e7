"""Archive jobs (issue 27): images/s of `mnv2 predict MODEL DIR --out results.jsonl` against the same engine's offline
batch throughput in the same run, and the job's resident memory after 1,000 and after N images (goal: flat).

The archive is N hard links to the raccoon set's 200 JPEGs (no extra disk), spread over nested folders. The job runs
as a subprocess (the real command); its RSS is sampled from /proc while the results file grows.

    .venv/bin/python benchmarks/job_throughput.py --images 20000 \
        [--model examples/models/raccoon_ssdlite_mnv2.safetensors]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT.parent / "shared" / "data" / "raccoon" / "images").glob("*.jpg"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def offline(model: str, engine: str | None, threads: int, n: int = 256) -> float:
    from mnv2.data.images import load_image
    from mnv2.deploy.runtime.predict import Predictor

    p = Predictor.open(model, engine, threads=threads)
    xs = [p.prepare(load_image(PHOTOS[i % len(PHOTOS)])) for i in range(n)]
    batch = p.inference.batch_size
    p.run(xs[:batch])
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            p.run(xs[i : i + batch])
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "examples" / "models" / "fashion_mnist_mnv2.safetensors"))
    ap.add_argument("--engine", default=None)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ray", action="store_true", help="also time one site's images here and on a local Ray cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        for i in range(args.images):
            d = root / f"site{i % 10}" / f"cam{i % 7}"
            d.mkdir(parents=True, exist_ok=True)
            os.link(PHOTOS[i % len(PHOTOS)], d / f"{i:06d}.jpg")
        out = Path(tmp) / "results.jsonl"
        cmd = [str(Path(sys.executable).parent / "mnv2"), "predict", args.model, str(root), "--out", str(out),
               "--threads", str(args.threads)] + (["--engine", args.engine] if args.engine else [])  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        marks = {1000: None, args.images // 2: None, args.images: None}
        t1000 = None
        while proc.poll() is None:
            done = out.read_bytes().count(b"\n") if out.exists() else 0
            for m in marks:
                if marks[m] is None and done >= m:
                    marks[m] = rss_mb(proc.pid)
                    if m == 1000:
                        t1000 = time.perf_counter()
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        summary = proc.stdout.read().strip()
        steady = (args.images - 1000) / (time.perf_counter() - t1000) if t1000 else float("nan")
        ray = {}
        if args.ray:  # the same job over one site's images, here and on a local Ray cluster (actors on this machine)
            site = root / "site0"
            n = sum(1 for _ in site.rglob("*.jpg"))
            for name, extra in (("local", []), ("ray", ["--ray", "local"])):
                res = Path(tmp) / f"{name}.jsonl"
                t = time.perf_counter()
                subprocess.run([*cmd[:3], str(site), "--out", str(res), *cmd[6:], *extra], check=True,
                               capture_output=True)  # fmt: skip
                ray[name] = (n, time.perf_counter() - t, res.read_bytes())
    off = offline(args.model, args.engine, args.threads)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {args.threads} engine threads, "
          f"model {Path(args.model).name}, engine {args.engine or 'default'}")  # fmt: skip
    print(summary)
    print(f"job: {args.images} images in {wall:.1f} s; after the first 1,000 (startup excluded): {steady:.1f} img/s")
    print(f"offline batch throughput, same engine, prepared photos in memory: {off:.1f} img/s")
    print(f"job / offline: {steady / off:.0%}")
    if ray:
        (n, local_s, a), (_, ray_s, b) = ray["local"], ray["ray"]
        print(f"{n} images, local job {n / local_s:.1f} img/s, on a local Ray cluster {n / ray_s:.1f} img/s "
              f"(wall, cluster start included); overhead {1000 * (ray_s - local_s) / n:.1f} ms an image; "
              f"files {'identical' if a == b else 'DIFFERENT'}")  # fmt: skip
    print("resident memory of the job: " + ", ".join(
        f"after {m:,} images {v:.0f} MB" for m, v in marks.items() if v is not None))  # fmt: skip


if __name__ == "__main__":
    main()
