import os

import pytest
import torch

# Two CPU cores: under pytest-xdist each worker gets one thread, so workers do not fight over cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_image_folder(root, classes=("red", "green", "blue"), n=8, size=40, seed=0):
    """Tiny learnable image folder: each class is a noisy image dominated by one colour channel."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] = rng.integers(150, 255, (size, size), dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    """root/train/<class> and root/val/<class> with 3 classes."""
    make_image_folder(tmp_path / "data" / "train", n=10, seed=1)
    make_image_folder(tmp_path / "data" / "val", n=4, seed=2)
    return tmp_path / "data"
