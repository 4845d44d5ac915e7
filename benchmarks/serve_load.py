"""Load test of `mnv2 serve` over loopback (issue 17): MobileNetV2 1.0 @224 (random weights, 1000 classes) served
with the fastest installed engine, hit by an async client at concurrency 1, 8 and 32; a fixed request count and a
time limit per level. Reports throughput, p50/p99 latency and errors, and the same engine's offline batch-32
throughput measured by `mnv2 bench`'s code in the same run (before the server starts, on an idle machine).

    .venv/bin/python benchmarks/serve_load.py                     # the table for BENCHMARKS.md
    .venv/bin/python benchmarks/serve_load.py --requests 64 --json  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "fixtures" / "detection" / "raccoon" / "images" / "raccoon-109.jpg"


def write_model(path: Path, resolution: int) -> Path:
    from mnv2.data.preprocessing import Preprocessing
    from mnv2.models import create_model
    from mnv2.weights.checkpoint import CheckpointMeta, save_checkpoint

    model = create_model("mobilenetv2_100").eval()
    return save_checkpoint(path, model, CheckpointMeta(model.config, Preprocessing(input_size=resolution)))


def offline(engine: str, resolution: int, threads: int, batch: int, rounds: int) -> dict:
    """The engine's batch-1 latency and batch-``batch`` throughput as `mnv2 bench` measures them."""
    from mnv2.bench.speed import run_bench

    records = run_bench("mobilenetv2_100", resolution, batch=batch, rounds=rounds, threads=threads, peers=False,
                        int8=False, only=[engine])  # fmt: skip
    rec = {(r.engine, r.batch): r for r in records if r.precision == "fp32"}
    name = next(n for n, b in rec if b == batch)
    return {
        "engine": name,
        "batch1_ms": rec[(name, 1)].median_ms,
        f"batch{batch}_img_s": rec[(name, batch)].images_per_s,
    }


async def level(url: str, data: bytes, concurrency: int, requests: int, limit_s: float) -> dict:
    """``requests`` predictions from ``concurrency`` clients (each sends its next request when answered)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(concurrency, 8)):  # warm the connections and the engine
            await client.post(url, content=data, headers={"content-type": "image/jpeg"})
        start = time.perf_counter()
        deadline = start + limit_s

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=data, headers={"content-type": "image/jpeg"})
                    if r.status_code != 200:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                        continue
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": sent,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 2),
        "throughput_img_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=600, help="requests per level")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level at most")
    ap.add_argument("--threads", type=int, default=2, help="inference threads (server and offline bench)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--image", type=Path, default=PHOTO)
    ap.add_argument("--rounds", type=int, default=3, help="offline bench rounds")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = args.image.read_bytes()
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_model(Path(d) / "mobilenetv2_100.safetensors", args.resolution)
        cmd = [sys.executable, "-m", "mnv2.cli", "serve", str(ckpt), "--port", str(args.port), "--engine",
               args.engine, "--threads", str(args.threads), "--max-batch", str(args.max_batch), "--max-wait-ms",
               str(args.max_wait_ms), "--max-queue", str(4 * max(args.concurrency))]  # fmt: skip
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "MNV2_API_KEY": ""})  # fmt: skip
        try:
            base = f"http://127.0.0.1:{args.port}"
            for _ in range(600):
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read()}")
                try:
                    models = httpx.get(f"{base}/v1/models", timeout=1).json()["models"]
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise SystemExit("server did not start")
            engine = models[0]["engine"]
            url = f"{base}/v1/models/{models[0]['name']}:predict"
            rows = [asyncio.run(level(url, data, c, args.requests, args.time_limit)) for c in args.concurrency]
        finally:
            server.terminate()
            server.wait(60)
    # Offline after the server is gone, so the two never share the cores.
    ref = offline(engine, args.resolution, args.threads, args.max_batch, args.rounds)
    out = {
        "engine": engine,
        "offline": ref,
        "levels": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
    }
    top = max(rows, key=lambda r: r["concurrency"])
    one = min(rows, key=lambda r: r["concurrency"])
    out["c_max_over_c1"] = round(top["throughput_img_s"] / one["throughput_img_s"], 2)
    out["c_max_over_offline"] = round(top["throughput_img_s"] / ref[f"batch{args.max_batch}_img_s"], 3)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"engine {engine}; offline (mnv2 bench): batch 1 {ref['batch1_ms']:.2f} ms, batch {args.max_batch} "
          f"{ref[f'batch{args.max_batch}_img_s']:.1f} img/s")  # fmt: skip
    print("| concurrency | requests | errors | throughput (img/s) | p50 (ms) | p99 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['ok']} | {r['errors']} | {r['throughput_img_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} |")  # fmt: skip
    print(f"concurrency {top['concurrency']} / 1: {out['c_max_over_c1']}x; / offline batch {args.max_batch}: "
          f"{100 * out['c_max_over_offline']:.0f}%")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
