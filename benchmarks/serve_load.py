"""Load test of `mnv2 serve` over loopback (issue 17): MobileNetV2 1.0 @224 (random weights, 1000 classes) served
with the fastest installed engine, hit at concurrency 1, 8 and 32 with a fixed request count and a time limit per
level. Reports throughput, p50/p99 latency and errors, and the same engine's offline batch-32 throughput measured by
`mnv2 bench`'s code in the same run (after the server has stopped, so the two never share the cores).

The client is hey (`apt-get install hey`), a compiled load generator with a request count and kept-alive
connections: on a 2-core machine the client shares the cores with the server, and a Python client's ~1.5 ms of CPU
per request would be counted against the server. Without hey (or with `--client httpx`) an async httpx client runs
instead, and says so.

    .venv/bin/python benchmarks/serve_load.py                     # the table for BENCHMARKS.md
    .venv/bin/python benchmarks/serve_load.py --requests 64 --json  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from mnv2.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[1]
SERVER = ServeSettings()  # the server's own defaults, unless a flag says otherwise
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


async def level(url: str, data: bytes, concurrency: int, requests: int, limit_s: float, started=lambda: None) -> dict:
    """``requests`` predictions from ``concurrency`` clients (each sends its next request when answered)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(concurrency, 8)):  # warm the connections and the engine
            await client.post(url, content=data, headers={"content-type": "image/jpeg"})
        started()
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


def level_hey(url: str, image: Path, concurrency: int, requests: int, limit_s: float, started=lambda: None) -> dict:
    """``requests`` predictions (rounded down to a multiple of ``concurrency``: hey gives each client an equal share)
    from ``concurrency`` hey clients on kept-alive connections, each sending its next request when answered; a run
    past ``limit_s`` seconds is stopped and counted as failed."""
    base = ["hey", "-m", "POST", "-T", "image/jpeg", "-D", str(image), "-t", "60"]
    subprocess.run([*base, "-n", "64", "-c", str(min(concurrency, 8)), url], check=True, capture_output=True)  # warm
    n = max(concurrency, requests // concurrency * concurrency)
    started()
    try:
        out = subprocess.run([*base, "-n", str(n), "-c", str(concurrency), url], check=True, capture_output=True,
                             text=True, timeout=limit_s).stdout  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"concurrency": concurrency, "requests": n, "ok": 0, "errors": n, "error_kinds": {"time limit": n},
                "seconds": limit_s, "throughput_img_s": 0.0, "p50_ms": None, "p99_ms": None}  # fmt: skip
    statuses = {m[0]: int(m[1]) for m in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = {f"status {k}": v for k, v in statuses.items() if k != "200"}
    errors.update({e.strip(): int(c) for c, e in re.findall(r"\[(\d+)\]\s+(Post .*)", out)})
    ok = statuses.get("200", 0)
    wall = float(re.search(r"Total:\s+([\d.]+) secs", out).group(1))
    pct = {p: 1000 * float(v) for p, v in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    return {
        "concurrency": concurrency,
        "requests": n,
        "ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 2),
        "throughput_img_s": round(ok / wall, 1),
        "p50_ms": round(pct["50"], 1),
        "p99_ms": round(pct["99"], 1) if "99" in pct else None,  # hey prints no 99th percentile under ~100 answers
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(args: argparse.Namespace, client: str, data: bytes) -> dict:
    """Start the server, load it level by level, stop it, then measure the engine offline."""
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_model(Path(d) / "mobilenetv2_100.safetensors", args.resolution)
        cmd = [sys.executable, "-m", "mnv2.cli", "serve", str(ckpt), "--port", str(args.port), "--engine",
               args.engine, "--threads", str(args.threads), "--max-batch", str(args.max_batch), "--max-wait-ms",
               str(args.max_wait_ms), "--max-queue", str(4 * max(args.concurrency)), "--decode-threads",
               str(args.decode_threads)]  # fmt: skip
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
            rows = []
            for c in args.concurrency:
                cpu = [0.0]

                def started(pid: int = server.pid, cpu: list = cpu) -> None:  # after the warm-up
                    cpu[0] = cpu_seconds(pid)

                rows.append(
                    level_hey(url, args.image, c, args.requests, args.time_limit, started)
                    if client == "hey"
                    else asyncio.run(level(url, data, c, args.requests, args.time_limit, started))
                )
                used = cpu_seconds(server.pid) - cpu[0]  # the server process, every thread
                rows[-1]["server_cpu_ms_per_request"] = round(1000 * used / max(1, rows[-1]["ok"]), 2)
        finally:
            server.terminate()
            server.wait(60)
    # Offline after the server is gone, so the two never share the cores.
    ref = offline(engine, args.resolution, args.threads, args.max_batch, args.rounds)
    out = {
        "engine": engine,
        "client": client,
        "threads": args.threads,
        "offline": ref,
        "levels": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
    }
    top = max(rows, key=lambda r: r["concurrency"])
    one = min(rows, key=lambda r: r["concurrency"])
    out["c_max_over_c1"] = round(top["throughput_img_s"] / one["throughput_img_s"], 2)
    out["c_max_over_offline"] = round(top["throughput_img_s"] / ref[f"batch{args.max_batch}_img_s"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=600, help="requests per level")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level at most")
    ap.add_argument("--threads", type=int, default=2, help="inference threads (server and offline bench)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--max-batch", type=int, default=SERVER.max_batch)
    ap.add_argument("--max-wait-ms", type=float, default=SERVER.max_wait_ms)
    ap.add_argument("--image", type=Path, default=PHOTO)
    ap.add_argument("--rounds", type=int, default=3, help="offline bench rounds")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--client", choices=("auto", "hey", "httpx"), default="auto", help="auto: hey when installed")
    ap.add_argument("--decode-threads", type=int, default=SERVER.decode_threads)
    ap.add_argument("--repeats", type=int, default=1, help="whole runs (server, load, offline), each reported")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = args.image.read_bytes()
    client = args.client if args.client != "auto" else ("hey" if shutil.which("hey") else "httpx")
    if client == "hey" and not shutil.which("hey"):
        raise SystemExit("hey is not installed: apt-get install hey (or --client httpx)")
    if client == "httpx":
        print("client: httpx (Python; its CPU per request shares the server's cores). hey: apt-get install "
              "hey", file=sys.stderr)  # fmt: skip
    runs = [run_once(args, client, data) for _ in range(args.repeats)]
    if args.json:
        print(json.dumps(runs if len(runs) > 1 else runs[0], indent=2))
        return 0
    for out in runs:
        print_run(out, args.max_batch)
    if len(runs) > 1:
        ratios = sorted(r["c_max_over_offline"] for r in runs)
        print(
            f"concurrency {max(args.concurrency)} / offline over {len(runs)} runs: "
            f"{', '.join(f'{100 * x:.0f}%' for x in ratios)} (median {100 * ratios[len(ratios) // 2]:.0f}%)"
        )
    return 0


def print_run(out: dict, max_batch: int) -> None:
    """One run as the markdown table for BENCHMARKS.md."""
    ref, rows = out["offline"], out["levels"]
    top, one = max(rows, key=lambda r: r["concurrency"]), min(rows, key=lambda r: r["concurrency"])
    print(f"client {out['client']}; engine {out['engine']}; offline (mnv2 bench, after the server stopped): batch 1 "
          f"{ref['batch1_ms']:.2f} ms, batch {max_batch} {ref[f'batch{max_batch}_img_s']:.1f} img/s")  # fmt: skip
    print("| concurrency | requests | errors | throughput (img/s) | p50 (ms) | p99 (ms) | server CPU (core-ms/req) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['ok']} | {r['errors']} | {r['throughput_img_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['server_cpu_ms_per_request']} |")  # fmt: skip
    print(f"concurrency {top['concurrency']} / {one['concurrency']}: {out['c_max_over_c1']}x; / offline batch "
          f"{max_batch}: {100 * out['c_max_over_offline']:.0f}%")  # fmt: skip
    # The budget: offline, the engine spends threads / throughput core-seconds an image; the server spends that plus
    # its HTTP, decoding and batching work, on the same cores.
    engine_ms = 1000 * out["threads"] / ref[f"batch{max_batch}_img_s"]
    served = top["server_cpu_ms_per_request"]
    print(f"server CPU per answer at concurrency {top['concurrency']}: {served} core-ms; the engine alone offline: "
          f"{engine_ms:.2f} core-ms an image ({100 * engine_ms / served:.0f}%)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
