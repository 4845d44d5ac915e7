"""Torch versions of the image helpers, for training and evaluation datasets (the inference half uses the numpy ones
in :mod:`mnv2.data.images`; both do the same float32 operations, so the same bits)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mnv2.data.preprocessing import Preprocessing


def to_tensor(im: Image.Image):
    """PIL RGB image → float CHW torch tensor on [0, 1], contiguous (the ops after it run 2-10x faster than on a
    permuted view: 0.25 against 2.6 ms for a 224x224 image with :func:`normalize`, one thread)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))).float().div_(255)


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB image → uint8 ``[3, H, W]`` (the detection and segmentation datasets' input to augmentation)."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(x, pre: Preprocessing):
    """``(x - mean) / std`` per channel of a CHW (or NCHW) torch tensor."""
    return normalize_(x.clone(), pre)


def normalize_(x, pre: Preprocessing):
    """:func:`normalize` in place (the same float operations, so the same bits), for a tensor made just before."""
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)
