"""Batch-32 throughput of one multi-thread XNNPACK interpreter vs one single-thread interpreter per core ("lanes").

What ``LiteRtEngine`` does for batches (BENCHMARKS.md, Deployment, "LiteRT lanes"): each lane gets its contiguous
share of the batch, fed ``k`` images at a time; lanes run in parallel threads (``invoke`` releases the GIL).
Make the file with ``mnv2 export CKPT --format tflite --static-batch --out model.tflite`` (any batch-1 TFLite file
works; an int8 one takes int8 input, which the script detects from its name).

    python benchmarks/litert_lanes.py model.tflite [rounds]
"""

import statistics
import sys
import threading
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

path = sys.argv[1]


def interp(threads, batch):
    it = Interpreter(path, num_threads=threads)
    i = it.get_input_details()[0]["index"]
    it.resize_tensor_input(i, [batch, 3, 224, 224])
    it.allocate_tensors()
    o = it.get_output_details()[0]["index"]

    def run(x):
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)

    return run


x = np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32)
if "int8" in path:
    x = np.random.default_rng(0).integers(-128, 127, (32, 3, 224, 224)).astype(np.int8)


def t_one():
    r = interp(2, 32)
    r(x)

    def f():
        r(x)

    return f


def t_two(k):
    rs = [interp(1, k) for _ in range(2)]
    halves = [x[:16], x[16:]]
    for r in rs:
        r(halves[0][:k])

    def work(r, h):
        for j in range(0, 16, k):
            r(h[j : j + k])

    def f():
        ts = [threading.Thread(target=work, args=(rs[n], halves[n])) for n in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]

    return f


def t_one_k(k):
    r = interp(2, k)
    r(x[:k])

    def f():
        for j in range(0, 32, k):
            r(x[j : j + k])

    return f


cands = {"one 2T b32": t_one()}
for k in (1, 2, 4, 8, 16):
    cands[f"two 1T k{k}"] = t_two(k)
for k in (4, 8):
    cands[f"one 2T k{k}"] = t_one_k(k)
res = {n: [] for n in cands}
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
    for n, f in cands.items():
        t = time.perf_counter()
        f()
        res[n].append(32 / (time.perf_counter() - t))
for n, v in res.items():
    print(f"{n:14s} {statistics.median(v):7.1f} img/s  ({min(v):.0f}-{max(v):.0f})")
