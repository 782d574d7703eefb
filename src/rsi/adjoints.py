"""Deterministic backward passes for the FZ transforms: reflect pad, bilinear resize (``align_corners=True``)
and bilinear ``grid_sample`` (zero padding, ``align_corners=False``).

On CUDA, torch's backward of each of these adds every output pixel's weighted gradient into the input with
floating-point atomic adds, in an order that changes from run to run (``torch.use_deterministic_algorithms``
lists all three as having no deterministic CUDA implementation), and 2,560 steps grow a last-bit
difference into a different FZ. Here the forward is torch's own call (the same bytes); the backward is:

* reflect pad: the borders folded back onto the image with slices and flips (no atomics);
* the two bilinear ops: each output pixel's four contributions, each the float32 product of its gradient
  and its bilinear weight (the weights from torch's kernel formulas; CUDA may fuse the grid's
  unnormalisation into one FMA, which moves a sample point by up to one float32 step), summed per input
  pixel in 64-bit fixed point, per image. Integer atomic adds are associative, so the sum does not depend
  on their order. A contribution within 2^-25 of the image's largest converts exactly, so each input
  gradient is the exact sum of its float32 contributions, rounded once to float32 (smaller ones are
  within 2^-49 of the largest), and no image depends on the others in its batch.

The same bytes in any order, on any device (tests/test_adjoints.py); other bytes than torch's backward,
which rounds after every add. rsi.fz uses these on CUDA unless ``fz.cuda_backward`` is ``native``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# |gradient| scaled to < 2**48: while the weights landing on one input pixel total under 32, every sum
# stays below 2**53, exact in float64
_FIXED_POINT_BITS = 48


def _corners(x: Tensor, y: Tensor, width: int, height: int) -> tuple[list[Tensor], list[Tensor]]:
    """The four bilinear corners of sampling points (x, y) (float32, input pixel units) as torch's
    bilinear grid_sample forms them: flat input indices (invalid corners sent to 0) and weights (invalid
    corners 0), in the order nw, ne, sw, se."""
    x0, y0 = torch.floor(x), torch.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    weights = [(x1 - x) * (y1 - y), (x - x0) * (y1 - y), (x1 - x) * (y - y0), (x - x0) * (y - y0)]
    indices = []
    for i, (cx, cy) in enumerate([(x0, y0), (x1, y0), (x0, y1), (x1, y1)]):
        valid = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
        weights[i] = torch.where(valid, weights[i], torch.zeros_like(weights[i]))
        flat_index = cy.long() * width + cx.long()  # in int64: exact for any image size
        indices.append(torch.where(valid, flat_index, torch.zeros_like(flat_index)))
    return indices, weights


def _power_of_two(exponent: Tensor) -> Tensor:
    """2**exponent as float32 (exponent in [-126, 127]), built from its bits: exactly a power of two on
    every device (pow and ldexp go through a math library), so scaling a float32 by it is exact."""
    return ((exponent.to(torch.int32) + 127) << 23).view(torch.float32)


def scatter_corners(
    grad: Tensor, indices: list[Tensor], weights: list[Tensor], shape: tuple[int, int]
) -> Tensor:
    """The input gradient (B, C, H, W) of a bilinear op from its output gradient ``grad`` (B, C, h, w) and,
    per output pixel, its corners: flat input ``indices`` and ``weights`` in [0, 1], each (B or 1, h, w).

    Each contribution is the float32 product weight·gradient. Per image, they are summed per input pixel
    in 64-bit fixed point scaled to that image's largest |gradient| (< 2**e): integer adds in any order
    give the same total, contributions over 2**(e - 25) convert exactly, and the total is rounded once to
    float32. Sums stay exact in float64 while the weights landing on one input pixel total under 32 (at
    most ~1.4 for these transforms). An image whose gradient holds a NaN or an infinity gets NaN, as
    torch's backward would give it, and no other image is touched."""
    batch, channels = grad.shape[:2]
    flat = grad.reshape(batch, channels, -1)
    peak = flat.detach().abs().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1): one scale per image
    _, exponent = torch.frexp(peak)  # every |contribution| of the image < 2**exponent
    scale = _power_of_two(_FIXED_POINT_BITS - exponent.clamp(min=-79, max=128))
    total = torch.zeros(batch, channels, shape[0] * shape[1], dtype=torch.int64, device=grad.device)
    for index, weight in zip(indices, weights, strict=True):
        fixed = (weight.reshape(weight.shape[0], 1, -1) * flat).mul_(scale).round_().long()
        total.scatter_add_(2, index.reshape(index.shape[0], 1, -1).expand(batch, channels, -1), fixed)
    result = total.double().div_(scale.double()).float()
    result += flat.sum(dim=(1, 2), keepdim=True) * 0  # NaN for an image with a NaN or an infinity, else 0
    return result.reshape(batch, channels, *shape)


class _GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(grid)
        ctx.shape = tuple(images.shape[2:])
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (grid,) = ctx.saved_tensors
        height, width = ctx.shape
        # grid_sampler_compute_source_index, align_corners=False, zeros: ((coord + 1) * size - 1) / 2
        x = ((grid[..., 0] + 1) * width - 1) / 2
        y = ((grid[..., 1] + 1) * height - 1) / 2
        indices, weights = _corners(x, y, width, height)
        return scatter_corners(grad, indices, weights, (height, width)), None


def grid_sample(images: Tensor, grid: Tensor) -> Tensor:
    """``F.grid_sample(images, grid)`` (bilinear, zeros, ``align_corners=False``) with the deterministic
    backward; no gradient for ``grid`` (the FZ warps' grids are constants)."""
    if grid.requires_grad:
        raise ValueError("rsi.adjoints.grid_sample differentiates the images only, not the grid")
    return _GridSample.apply(images, grid)


@functools.lru_cache(maxsize=256)
def _aligned_axis(source: int, target: int, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """upsample_bilinear2d's source taps along one axis, ``align_corners=True``: for each target index,
    (index0, index1, lambda0, lambda1) as its kernel computes them in float32. Made once per size and
    device (no copy from the host at every step)."""
    # area_pixel_compute_scale: (input_size - 1) / (output_size - 1) divided in float32
    scale = torch.tensor(float(source - 1), dtype=torch.float32) / max(target - 1, 1)
    real = scale.to(device) * torch.arange(target, dtype=torch.float32, device=device)
    index0 = real.long()  # truncation, as the kernel's (int) cast of a non-negative value
    index1 = index0 + (index0 < source - 1).long()
    lambda1 = real - index0.float()
    return index0, index1, 1 - lambda1, lambda1


class _ResizeAligned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images: Tensor, size: tuple[int, int]) -> Tensor:
        ctx.shape = tuple(images.shape[2:])
        return F.interpolate(images, size=size, mode="bilinear", align_corners=True)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        height, width = ctx.shape
        rows0, rows1, row_l0, row_l1 = _aligned_axis(height, grad.shape[2], str(grad.device))
        cols0, cols1, col_l0, col_l1 = _aligned_axis(width, grad.shape[3], str(grad.device))
        indices, weights = [], []
        for rows, row_l in ((rows0, row_l0), (rows1, row_l1)):
            for cols, col_l in ((cols0, col_l0), (cols1, col_l1)):
                indices.append((rows[:, None] * width + cols[None, :])[None])
                weights.append((row_l[:, None] * col_l[None, :])[None])
        return scatter_corners(grad, indices, weights, (height, width)), None


def resize_aligned(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(images, size, mode="bilinear", align_corners=True)`` with the deterministic backward."""
    return _ResizeAligned.apply(images, tuple(size))


def _fold(grad: Tensor, pad: int, dim: int) -> Tensor:
    """The adjoint of a reflect pad of ``pad`` along ``dim``: output index j < pad came from input index
    pad - j, output index pad + n + k from input n - 2 - k."""
    n = grad.shape[dim] - 2 * pad
    folded = grad.narrow(dim, pad, n).clone()
    folded.narrow(dim, 1, pad).add_(grad.narrow(dim, 0, pad).flip(dim))
    folded.narrow(dim, n - 1 - pad, pad).add_(grad.narrow(dim, pad + n, pad).flip(dim))
    return folded


class _ReflectPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images: Tensor, pad: int) -> Tensor:
        ctx.pad = pad
        return F.pad(images, [pad] * 4, mode="reflect")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _fold(_fold(grad, ctx.pad, 3), ctx.pad, 2), None


def reflect_pad(images: Tensor, pad: int) -> Tensor:
    """``F.pad(images, [pad] * 4, mode="reflect")`` with a backward of slices (columns, then rows)."""
    if not 0 < pad < min(images.shape[2:]):
        raise ValueError(f"reflect pad {pad} needs an image side over {pad}, got {tuple(images.shape[2:])}")
    return _ReflectPad.apply(images, pad)
