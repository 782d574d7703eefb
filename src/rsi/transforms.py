"""Image transforms of the paper: ImageNet normalisation, the criteria's scale transform S(X), and the
ablation's scale sweep under both crop rules. Pure functions on (N, C, H, W) tensors.
"""

from __future__ import annotations

import functools
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


def resize(images: Tensor, size: int, *, antialias: bool = True) -> Tensor:
    """Bilinear resize to size x size, antialiased when shrinking (as PIL and torchvision's Resize);
    ``antialias=False`` is torchvision 0.15's tensor default (plain bilinear sampling when shrinking)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return TF.resize(images, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=antialias)


def scale_crop(images: Tensor, fraction: float = 0.5) -> Tensor:
    """S(X) of Eq. 1: center-crop to ``fraction`` of the side (112 of 224), bilinear resize back.

    Not antialiased: the authors resized the normalised tensor with torchvision 0.15's ``Resize``, whose
    tensor default was off; enlarging, that is the plain bilinear kernel, whose floats differ from the
    antialiased kernel's in the last bits."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"scale fraction must be in (0, 1], got {fraction}")
    side = images.shape[-1]
    return resize(center_crop(images, int(side * fraction)), side, antialias=False)


def shrink_pad(images: Tensor, size: int = 112, *, antialias: bool = False) -> Tensor:
    """The authors' optional mirror test: resize to ``size`` and reflect-pad back to the input side.

    Not antialiased by default: the authors resized the normalised FZ tensor with torchvision 0.15's
    ``resize``, whose tensor default was ``antialias=None``, i.e. off (it became on in 0.17)."""
    side = images.shape[-1]
    pad = (side - size) // 2
    small = resize(images, size, antialias=antialias)
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
        # 1 + p/100 is the same double as the authors' literal factors 1.1 ... 1.5
        return int(out * (2 - (1 + percent / 100)))
    if rule == "paper_text":
        return source - math.floor(source * percent / 100)
    raise ValueError(f"unknown crop rule {rule!r}: choose one of {CROP_RULES}")


def center_offset(length: Tensor, crop: int) -> Tensor:
    """torchvision's center-crop start ``int(round((length - crop) / 2))`` (Python's round: halves to
    even), elementwise on an integer tensor."""
    margin = length.long() - crop
    half = torch.div(margin, 2, rounding_mode="floor")
    return half + ((margin % 2 == 1) & (half % 2 == 1)).long()


def crop_offsets(resized: Tensor, crop: int, cache: int = 256) -> Tensor:
    """(N, 2) (top, left) in the ``cache`` px center square of the authors' direct center crop ``crop``
    from an image of (height, width) ``resized`` (N, 2) (after ``Resize(256)``, before any crop).

    Cropping 256 then ``crop`` rounds two half-margins; the direct crop rounds one, so along an odd long
    side the two can be one pixel apart. These offsets are the direct crop's."""
    return center_offset(resized, crop) - center_offset(resized, cache)


PIL_PRECISION_BITS = 22  # PIL's fixed-point precision for 8-bit images (32 - 8 - 2)


@functools.lru_cache(maxsize=64)
def pil_bilinear_weights(in_size: int, out_size: int) -> Tensor:
    """(out_size, in_size) int64 fixed-point weights of PIL's bilinear ``Image.resize`` along one axis.

    PIL's convolution resampling: output pixel i is centred at (i + 0.5) * scale in the input; the
    triangle filter is stretched by the scale when shrinking (antialiasing) and not when enlarging; the
    taps are those within the support, rounded to the nearest pixel edge; weights are normalised to sum
    1 and then rounded to multiples of 2**-22."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale  # the bilinear (triangle) filter's support is 1
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        taps = torch.arange(first, last, dtype=torch.float64)
        row = (1.0 - ((taps - center + 0.5) / filter_scale).abs()).clamp(min=0.0)
        if row.sum() != 0.0:
            row = row / row.sum()
        weights[i, first:last] = row
    return torch.floor(weights * (1 << PIL_PRECISION_BITS) + 0.5).long()


def pil_resize(images: Tensor, size: int) -> Tensor:
    """PIL's bilinear ``Image.resize`` of 8-bit (N, C, H, W) images (uint8 or integer-valued floats) to
    size x size, bit-exact: its horizontal pass, rounded to uint8, then its vertical pass, rounded. This
    is torchvision's ``Resize`` on a PIL image. Float64 internally: the fixed-point sums stay exact."""
    height, width = images.shape[-2:]
    out = images.double()
    half, one = float(1 << (PIL_PRECISION_BITS - 1)), float(1 << PIL_PRECISION_BITS)
    if width != size:
        horizontal = pil_bilinear_weights(width, size).to(out.device, torch.float64)
        out = torch.floor((out @ horizontal.T + half) / one).clamp_(0, 255)
    if height != size:
        vertical = pil_bilinear_weights(height, size).to(out.device, torch.float64)
        out = torch.floor((vertical @ out + half) / one).clamp_(0, 255)
    return out.float()


def ablation_view(
    images_uint8: Tensor, crop: int, out: int = 224, resized: Tensor | None = None, *, pil: bool = True
) -> Tensor:
    """Normalised float model input from cached uint8 (N, 3, S, S) images: the authors' PIL pipeline
    ``Resize(256)`` (the cache), ``CenterCrop(crop)``, ``Resize(out)``, ``ToTensor``, ``Normalize``.

    ``resized`` (N, 2): each image's (height, width) after ``Resize(256)``, so the crop lands where the
    authors' direct crop did (:func:`crop_offsets`); without it, the center of the cache (up to 1 px off
    along an odd long side). ``pil``: round each resize pass to uint8 as PIL does; off: one float resize.
    """
    images = images_uint8.float()
    side = images.shape[-1]
    if resized is None or crop == side:
        cropped = center_crop(images, crop)
    else:
        offsets = crop_offsets(resized.cpu(), crop, side)
        if (offsets < 0).any() or (offsets + crop > side).any():
            raise ValueError(f"a {crop} px crop at the direct-crop offsets leaves the {side} px cache")
        cropped = images.new_empty(images.shape[0], images.shape[1], crop, crop)
        pairs, groups = torch.unique(offsets, dim=0, return_inverse=True)
        for g, (top, left) in enumerate(pairs.tolist()):
            members = (groups == g).nonzero().squeeze(1).to(images.device)
            cropped[members] = images[members, :, top : top + crop, left : left + crop]
    scaled = pil_resize(cropped, out) if pil else resize(cropped, out)
    return normalize(scaled.div_(255.0))
