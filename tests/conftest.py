import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/deploy_data.py

# Two CPU cores: under pytest-xdist each worker gets one thread, so workers do not fight over cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A MobileNetV2 0.35 trained on the synthetic 8-class task (tests/deploy_data.py), shared by xdist workers.

    Trained once per test run: the first worker takes a file lock and trains, the other waits and reuses it.
    """
    import fcntl

    from deploy_data import train_tiny

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "tiny-synthetic.safetensors"
    with open(root / "tiny-synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            train_tiny(path)
    return path
