"""Image data: preprocessing metadata, datasets and transforms."""

from mnv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, Preprocessing

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TF_MEAN", "TF_STD", "Preprocessing"]
