"""Image transforms. Per-image ops for image files (PIL decode, kornia augmentation) and batched tensor
augmentation for in-memory datasets (kornia on a whole batch at once).

Train: random resized crop (or, for small in-memory images, random crop with padding), horizontal flip, optional
colour jitter, RandAugment and random erasing (kornia implements them; torchvision is not available here).
Eval: resize the short side to ``input_size / crop_pct`` and centre-crop ``input_size`` (:class:`Preprocessing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from PIL import Image
from torch import nn

from mnv2.data.preprocessing import Preprocessing
from mnv2.data.tensors import normalize, to_tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation.

    Attributes:
        scale: area range of the random resized crop (image files).
        crop_padding: pixels of padding for the random crop of in-memory images (``0`` = resized crop instead).
        hflip: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation strength (0 = off).
        randaugment_n, randaugment_m: RandAugment ops per image and magnitude (n=0: off).
        random_erasing: probability of erasing a random rectangle (Zhong et al. 2017), after normalisation.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    crop_padding: int = 4
    hflip: float = 0.5
    color_jitter: float = 0.0
    randaugment_n: int = 0
    randaugment_m: int = 9
    random_erasing: float = 0.0


def _photometric(aug: AugmentConfig) -> list[nn.Module]:
    ops: list[nn.Module] = []
    if aug.color_jitter > 0:
        c = aug.color_jitter
        ops.append(K.ColorJiggle(c, c, c, 0.0, p=0.8))
    if aug.randaugment_n > 0:
        from kornia.augmentation.auto import RandAugment

        ops.append(RandAugment(n=aug.randaugment_n, m=aug.randaugment_m))
    return ops


class ImageTrainTransform:
    """Per-image train transform for image files (runs in DataLoader workers): RGB PIL → normalised CHW."""

    def __init__(self, pre: Preprocessing, aug: AugmentConfig) -> None:
        self.pre = pre
        ops = [
            K.RandomResizedCrop((pre.input_size, pre.input_size), scale=aug.scale),
            K.RandomHorizontalFlip(aug.hflip),
        ]
        self.geometric = K.AugmentationSequential(*ops, *_photometric(aug))
        self.erase = K.RandomErasing(p=aug.random_erasing) if aug.random_erasing > 0 else None

    def __call__(self, im: Image.Image) -> torch.Tensor:
        x = self.geometric(to_tensor(im)[None]).clamp_(0, 1)
        x = normalize(x[0], self.pre)
        return self.erase(x[None])[0] if self.erase is not None else x


class BatchAugment(nn.Module):
    """Batched train augmentation of an in-memory uint8 ``[N, C, H, W]`` batch → normalised float batch.

    Random crop with ``crop_padding`` (or a random resized crop when 0), flip, photometric ops, then normalisation
    and random erasing, all on the whole batch (kornia draws per-sample parameters from torch's global RNG).
    """

    def __init__(self, pre: Preprocessing, aug: AugmentConfig | None) -> None:
        super().__init__()
        self.pre = pre
        size = (pre.input_size, pre.input_size)
        ops: list[nn.Module] = []
        if aug is not None:
            crop = (
                K.RandomCrop(size, padding=aug.crop_padding)
                if aug.crop_padding
                else K.RandomResizedCrop(size, scale=aug.scale)
            )
            ops = [crop, K.RandomHorizontalFlip(aug.hflip), *_photometric(aug)]
        self.ops = nn.Sequential(*ops)
        self.erase = K.RandomErasing(p=aug.random_erasing) if aug is not None and aug.random_erasing > 0 else None
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        if x.shape[1] == 1 and len(self.pre.mean) == 3:
            x = x.expand(-1, 3, -1, -1)  # grayscale → 3 channels (model input stays RGB-shaped)
        if len(self.ops):
            x = self.ops(x)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x.contiguous(memory_format=torch.channels_last)
