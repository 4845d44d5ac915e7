"""CPU training throughput (images/s) of mnv2's engine vs a plain fp32 eager loop, same model, same run.

Both sides train MobileNetV2 (default 1.0 @224, batch 32, SGD) on the same synthetic batch. The plain loop is the
textbook one: NCHW fp32 tensors, eager mode. mnv2's engine is ``mnv2.engine.loop.train_one_epoch`` with the
settings ``mnv2 train`` uses: channels_last memory format, bf16 autocast where it pays (``--amp auto``: CUDA and
AMX CPUs), and optionally ``torch.compile`` (``--compile``). The two sides alternate ``--reps`` times, so load from
other processes hits both alike; medians are printed.

    python benchmarks/train_throughput.py [--width 1.0] [--resolution 224] [--batch 32] [--steps 6] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mnv2 import mobilenet_v2
from mnv2.engine.config import load_recipe
from mnv2.engine.loop import autocast_dtype, train_one_epoch


class SameBatch:
    """A 'dataset' that yields one fixed batch ``steps`` times (decoding is not what is measured)."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self):
        return self.steps

    def epoch(self, epoch):
        for _ in range(self.steps):
            yield self.x, self.y


def plain_loop(model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t)


def engine_loop(model, x, y, steps, config, dtype):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = SameBatch(x.contiguous(memory_format=torch.channels_last), y, steps)
    t = time.perf_counter()
    train_one_epoch(model, batches, opt, config, 0, 0, steps, dtype=dtype, device=torch.device("cpu"), rank=1)
    return steps * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also measure the engine with torch.compile")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    y = torch.randint(0, 1000, (args.batch,))
    config = load_recipe("modern")
    dtype = autocast_dtype("auto", torch.device("cpu"))
    plain = mobilenet_v2(width_mult=args.width)
    engine = mobilenet_v2(width_mult=args.width).to(memory_format=torch.channels_last)
    sides = {"plain fp32 eager (NCHW)": lambda n: plain_loop(plain, x, y, n),
             f"mnv2 engine (channels_last, {'bf16' if dtype else 'fp32'})":
                 lambda n: engine_loop(engine, x, y, n, config, dtype)}  # fmt: skip
    if args.compile:
        compiled = torch.compile(mobilenet_v2(width_mult=args.width).to(memory_format=torch.channels_last))
        sides["mnv2 engine + torch.compile"] = lambda n: engine_loop(compiled, x, y, n, config, dtype)
    for fn in sides.values():  # warm-up: allocator, oneDNN primitive caches, compilation
        fn(2)
    results = {k: [] for k in sides}
    for _ in range(args.reps):
        for name, fn in sides.items():
            results[name].append(fn(args.steps))
    print(f"MobileNetV2 {args.width} @{args.resolution}, batch {args.batch}, {torch.get_num_threads()} thread(s), "
          f"{args.steps} steps x {args.reps} alternating reps; torch {torch.__version__}")  # fmt: skip
    base = statistics.median(results[next(iter(sides))])
    for name, vals in results.items():
        med = statistics.median(vals)
        print(f"  {name:<42} {med:8.1f} img/s  (runs: {', '.join(f'{v:.1f}' for v in vals)})  x{med / base:.2f}")


if __name__ == "__main__":
    main()
