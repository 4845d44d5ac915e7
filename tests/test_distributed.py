"""Two-process data parallel training on CPU (gloo), as torchrun would start it."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FIXTURES = Path(__file__).parent / "fixtures"
# Each task's smallest real run: a few real images, a narrow model, one epoch of two-image shards.
TASK_RUNS = {
    "detection": ("detection", FIXTURES / "detection" / "raccoon", {"width": 0.35, "resolution": 128}),
    "segmentation": (
        "segmentation",
        FIXTURES / "segmentation" / "camvid",
        {"width": 0.35, "resolution": 96, "ignore_index": 11},
    ),
}


def _worker(rank: int, world: int, port: int, data: str, out: str, recipe: str = "default",
            overrides: dict | None = None) -> None:  # fmt: skip
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    from mnv2.engine.config import apply_overrides, load_recipe
    from mnv2.engine.loop import train

    batch = 8 if recipe == "default" else 4
    settings = {"data": data, "epochs": 1, "batch_size": batch, "eval_batch_size": 2, "workers": 0, **(overrides or {})}
    config = apply_overrides(load_recipe(recipe), settings)
    captured = {}
    import mnv2.engine.loop as loop

    original = loop.build_run_model

    def build_and_keep(*args, **kwargs):
        model, pre = original(*args, **kwargs)
        captured["model"] = model
        return model, pre

    loop.build_run_model = build_and_keep
    result = train(config, out, log=lambda *_: None)
    params = {k: v.detach().clone() for k, v in captured["model"].named_parameters()}
    torch.save({"result": result, "params": params}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_gloo_training(tmp_path, image_folder):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(image_folder), str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    # both ranks evaluated the whole val set together (sharded, counts summed): the same numbers on each
    assert r0["result"]["best_top1"] == r1["result"]["best_top1"]
    assert (out / "best.safetensors").is_file() and (out / "metrics.csv").is_file()
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:  # DDP keeps the replicas identical
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    saved = load_file(out / "last.safetensors")  # unwrapped: no "module." prefix
    assert all(torch.equal(saved[k], r0["params"][k]) for k in r0["params"])


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASK_RUNS))
def test_two_process_gloo_training_of_each_task(tmp_path, task):
    """DDP for detection and segmentation: replicas stay identical and both ranks compute the same val metrics
    (COCO AP from the gathered detections; mIoU from the summed confusion matrix)."""
    recipe, data, overrides = TASK_RUNS[task]
    if task == "segmentation":  # 4 train images: 2 per process, as the image-pooling BatchNorm needs
        import shutil

        data = shutil.copytree(data, tmp_path / "camvid")
        for kind in ("", "annot"):
            shutil.copy(next((data / f"val{kind}").iterdir()), data / f"train{kind}" / "extra.png")
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(out), recipe, overrides), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    metric = r0["result"]["metric"]
    assert metric == {"detection": "mAP50", "segmentation": "mIoU"}[task]
    assert r0["result"][f"best_{metric}"] == r1["result"][f"best_{metric}"]
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert (out / "best.safetensors").is_file() and (out / "metrics.csv").read_text().count("\n") == 2
