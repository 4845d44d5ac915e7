"""CPU training throughput (images/s) of mnv2's engine vs a plain fp32 eager loop, same model, one run.

Both sides train MobileNetV2 (default 1.0 @224, batch 32, SGD) on a fixed synthetic batch. The plain loop is the
textbook one in a default PyTorch process: NCHW fp32 tensors, eager mode, glibc's default allocator. mnv2's engine
is ``mnv2.engine.loop.train_one_epoch`` with what ``mnv2 train`` sets: channels_last memory format, bf16 autocast
where it pays (``--amp auto``: CUDA and AMX CPUs), glibc told to keep freed memory (``keep_memory``), and
optionally ``torch.compile`` (``--compile``). The allocator setting is process-wide, so every measurement runs in
a fresh subprocess; the sides alternate ``--reps`` times, so load from other processes hits them alike; medians.
``--breakdown`` also measures each engine setting alone.

    python benchmarks/train_throughput.py [--width 1.0] [--resolution 224] [--batch 32] [--steps 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SIDES = {
    "plain": "plain fp32 eager (NCHW, default allocator)",
    "engine": "mnv2 engine (channels_last, keep_memory)",
    "plain_keep": "plain fp32 eager + keep_memory only",
    "engine_nokeep": "mnv2 engine, channels_last only",
    "engine_compile": "mnv2 engine + torch.compile",
}


class SameBatch:
    """A 'dataset' that yields one fixed batch ``steps`` times (decoding is not what is measured)."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self):
        return self.steps

    def epoch(self, epoch):
        for _ in range(self.steps):
            yield self.x, self.y


def measure(side: str, width: float, resolution: int, batch: int, steps: int, threads: int | None) -> float:
    """Images/s of one side, after 2 warm-up steps (allocator, oneDNN primitive caches, compilation)."""
    import torch
    import torch.nn.functional as F

    from mnv2 import mobilenet_v2
    from mnv2.engine.config import load_recipe
    from mnv2.engine.loop import autocast_dtype, set_cpu_allocator, train_one_epoch
    from mnv2.tasks import get_task

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, 1000, (batch,))
    model = mobilenet_v2(width_mult=width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if side.startswith("plain"):
        if side == "plain_keep":
            set_cpu_allocator(True)

        def run(n):
            model.train()
            for _ in range(n):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    else:
        set_cpu_allocator(side != "engine_nokeep")
        config = load_recipe("modern")
        dtype = autocast_dtype("auto", torch.device("cpu"))
        model = model.to(memory_format=torch.channels_last)
        net = torch.compile(model) if side == "engine_compile" else model
        xc = x.contiguous(memory_format=torch.channels_last)

        def run(n):
            train_one_epoch(
                net,
                SameBatch(xc, y, n),
                opt,
                config,
                0,
                0,
                n,
                task=get_task("classification"),
                dtype=dtype,
                device=torch.device("cpu"),
                rank=1,
            )

    run(2)
    t = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also measure the engine with torch.compile")
    ap.add_argument("--breakdown", action="store_true", help="also measure each engine setting alone")
    ap.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    shape = (args.width, args.resolution, args.batch, args.steps, args.threads)
    if args.side:
        print(json.dumps(measure(args.side, *shape)))
        return
    sides = ["plain", "engine"] + (["plain_keep", "engine_nokeep"] if args.breakdown else [])
    sides += ["engine_compile"] if args.compile else []
    results = {s: [] for s in sides}
    base_cmd = [sys.executable, __file__, "--width", str(args.width), "--resolution", str(args.resolution)]
    base_cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
    base_cmd += ["--threads", str(args.threads)] if args.threads else []
    for _ in range(args.reps):
        for s in sides:
            out = subprocess.run([*base_cmd, "--side", s], capture_output=True, text=True, check=True).stdout
            results[s].append(float(out.strip().splitlines()[-1]))
    threads = args.threads or "default"
    print(
        f"MobileNetV2 {args.width} @{args.resolution}, batch {args.batch}, threads {threads}, {args.steps} timed "
        f"steps per measurement, {args.reps} alternating reps (each in a fresh process)"
    )
    base = statistics.median(results["plain"])
    for s, vals in results.items():
        med = statistics.median(vals)
        runs = ", ".join(f"{v:.1f}" for v in vals)
        print(f"  {SIDES[s]:<44} {med:8.1f} img/s  x{med / base:.2f}  (runs: {runs})")


if __name__ == "__main__":
    main()
