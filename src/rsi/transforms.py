"""Image transforms of the paper: ImageNet normalisation, the criteria's scale transform S(X), and the
ablation's scale sweep under both crop rules. Pure functions on (N, C, H, W) tensors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CropRule = Literal["authors_code", "paper_text"]
CROP_RULES: tuple[str, ...] = ("authors_code", "paper_text")


def normalize(images: Tensor) -> Tensor:
    """ImageNet normalisation of float images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


def center_crop(images: Tensor, size: int) -> Tensor:
    """torchvision's CenterCrop (same offsets: round((H - size) / 2))."""
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"cannot center-crop {size} px from a {height}x{width} image")
    return TF.center_crop(images, [size, size])


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize to size x size, antialiased when shrinking (as PIL and torchvision's Resize)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return TF.resize(images, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def scale_crop(images: Tensor, fraction: float = 0.5) -> Tensor:
    """S(X) of Eq. 1: center-crop to ``fraction`` of the side (112 of 224), bilinear resize back."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"scale fraction must be in (0, 1], got {fraction}")
    side = images.shape[-1]
    return resize(center_crop(images, int(side * fraction)), side)


def shrink_pad(images: Tensor, size: int = 112) -> Tensor:
    """The authors' optional mirror test: resize to ``size`` and reflect-pad back to the input side."""
    side = images.shape[-1]
    pad = (side - size) // 2
    small = resize(images, size)
    return F.pad(small, [pad, side - size - pad, pad, side - size - pad], mode="reflect")


def ablation_crop(percent: int, rule: CropRule = "authors_code", *, source: int = 256, out: int = 224) -> int:
    """Crop side (px, from the ``source`` px center crop) for a scale of ``percent`` % (0 = no scale).

    ``authors_code``: s = 1 + percent/100, crop int(out * (2 - s)): 201, 179, 156, 134, 112 px.
    ``paper_text``: crop source - floor(source * percent / 100): 231, 205, 180, 154, 128 px.
    No scale is the standard center crop ``out`` under both rules.
    """
    if not 0 <= percent < 100:
        raise ValueError(f"scale percent must be in [0, 100), got {percent}")
    if percent == 0:
        return out
    if rule == "authors_code":
        scale = round(1 + percent / 100, 1)
        return int(out * (2 - scale))
    if rule == "paper_text":
        return source - math.floor(source * percent / 100)
    raise ValueError(f"unknown crop rule {rule!r}: choose one of {CROP_RULES}")


def ablation_view(images_uint8: Tensor, crop: int, out: int = 224) -> Tensor:
    """Normalised float model input from cached uint8 (N, 3, S, S) images: center crop, resize."""
    images = images_uint8.float().div_(255.0)
    return normalize(resize(center_crop(images, crop), out))
