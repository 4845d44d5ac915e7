"""The torch-free runtime install against the full one (issue 25), measured in one run:

- the size on disk of a fresh ``pip install ".[runtime,serve]"`` venv (and of its site-packages by package);
- the cold start of ``mnv2 predict model.tflite photo.jpg`` in each venv (wall time, median of alternating runs);
- the post-processing time per image of each task (the numpy inference half, ``mnv2.tasks.infer``), and, with
  ``--old-src DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/old b9ac071``), the torch code it
  replaced, timed on the same outputs in a process of its own.

    python benchmarks/runtime_install.py --model raccoon.tflite --image ../shared/data/raccoon/images/raccoon-1.jpg \\
        [--venv /tmp/rtvenv] [--old-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def build_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    env = {**os.environ, "PIP_FIND_LINKS": ""}
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", f"{ROOT}[runtime,serve]"], check=True, env=env)
    return where


def cold_start(venvs: dict[str, tuple[Path, str | None]], model: str, image: str, repeats: int):
    """Wall seconds of ``mnv2 predict MODEL IMAGE`` per venv (``(venv, PYTHONPATH or None)``), runs alternating so
    that a slow minute of the host hits every venv alike."""
    times: dict[str, list[float]] = {k: [] for k in venvs}
    for _ in range(repeats):
        for name, (venv, path) in venvs.items():
            env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
            cmd = [str(venv / "bin" / "python"), "-m", "mnv2.cli", "predict", model, image]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - t0)
    return times


def time_postprocess(which: str) -> dict[str, float]:
    """Median ms per image of each task's ``results`` on fixed outputs: ``which`` ``new`` (the numpy inference
    half) or ``old`` (the torch code of an earlier tree on ``PYTHONPATH``: ``Task.results`` on tensors)."""
    import numpy as np
    from PIL import Image

    from mnv2.data.preprocessing import Preprocessing
    from mnv2.models.ssdlite import SSDLiteConfig, num_anchors

    rng = np.random.default_rng(0)
    image = Image.new("RGB", (480, 360))
    n = num_anchors(320, 320, SSDLiteConfig(num_classes=1))  # SSDLite at 320 px
    corner = rng.uniform(0, 1, (1, n, 2)).astype(np.float32)
    scores = rng.uniform(0, 0.5, (1, n, 1)).astype(np.float32)
    decoded = np.concatenate([corner, np.minimum(corner + 0.2, 1), scores], -1)
    det_info = {"class_names": 1, "output": "boxes_scores", "head": SSDLiteConfig(num_classes=1).to_dict(),
                "preprocessing": Preprocessing(input_size=320, crop_pct=1.0)}  # fmt: skip
    cases = {
        "classification": (rng.normal(size=(1, 10)), {"class_names": 10, "output": "logits"}, {"topk": 5}),
        "detection": (decoded, det_info, {"min_score": 0.0}),
        "segmentation": (rng.normal(size=(1, 11, 360, 480)), {"class_names": 11, "output": "logits", "head": {}}, {}),
    }
    if which == "new":
        from mnv2.tasks import get_inference as get

        def wrap(a):
            return a.astype(np.float32)
    else:
        import torch

        from mnv2.tasks import get_task as get

        torch.set_num_threads(1)

        def wrap(a):
            return torch.from_numpy(a.astype(np.float32))

    out = {}
    for task, (outputs, info, opts) in cases.items():
        results, x = get(task).results, wrap(outputs)
        results(x, [image], info, **opts)  # warm-up
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            results(x, [image], info, **opts)
            times.append(time.perf_counter() - t0)
        out[task] = 1000 * statistics.median(times)
    return out


def postprocess_times(src: Path | None, which: str) -> dict[str, float]:
    """:func:`time_postprocess` in a process of its own (``src``: the tree on its ``PYTHONPATH``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, __file__, "--postprocess-only", which]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--postprocess-only"]:
        print(json.dumps(time_postprocess(sys.argv[2])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported .tflite (or .onnx) file")
    p.add_argument("--image", required=True)
    p.add_argument("--venv", type=Path, default=None, help="an existing runtime venv (default: build a fresh one)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--old-src", type=Path, default=None, help="src/ of an earlier checkout: its torch post-processing")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        venv = args.venv or build_venv(Path(tmp) / "venv")
        site = next((venv / "lib").glob("python*/site-packages"))
        sizes = sorted(((du(d), d.name) for d in site.iterdir() if d.is_dir()), reverse=True)
        print(f"runtime venv: {du(venv) / 1e6:.0f} MB on disk ({du(site) / 1e6:.0f} MB site-packages); largest:")
        for size, name in sizes[:8]:
            print(f"  {name:<28} {size / 1e6:6.1f} MB")
        full = Path(sys.prefix)
        print(f"full venv ({full}): {du(full) / 1e6:.0f} MB")
        venvs = {"runtime": (venv, None), "full": (full, None)}
        if args.old_src:
            venvs["full, old src"] = (full, str(args.old_src))
        times = cold_start(venvs, args.model, args.image, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"cold start of `mnv2 predict {Path(args.model).name} {Path(args.image).name}` (median of {args.repeats}):"
        )
        for k, v in med.items():
            print(f"  {k:<14} {v:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[k])})")
        for k in med:
            if k != "runtime":
                print(f"  runtime / {k}: {med['runtime'] / med[k]:.2f}x")
    new = postprocess_times(None, "new")
    old = postprocess_times(args.old_src, "old") if args.old_src else None
    print("post-processing per image, one thread (ms, median of 20):")
    for task, ms in new.items():
        extra = f"   torch code before: {old[task]:.2f} ms ({old[task] / ms:.2f}x the numpy time)" if old else ""
        print(f"  {task:<15} numpy {ms:.2f} ms{extra}")


if __name__ == "__main__":
    main()
