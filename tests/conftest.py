import os

import pytest
import torch

# Two CPU cores: under pytest-xdist each worker gets one thread, so workers do not fight over cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
