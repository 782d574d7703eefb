"""The FZ image parameterisation: torch-lucent 0.1.8's ``param.image(size, decorrelate=True)`` (FFT
spectrum scaled by 1/frequency, decorrelated colour, sigmoid), for a whole batch, with each image's
initial spectrum drawn from its own keyed generator.

lucent's ``fft_image`` makes the spectrum parameter and the spectrum-to-pixels function (we call it, with
its module ``device`` pointed at the run device). The colour step is lucent's ``_linear_decorrelate_color``
and ``to_valid_rgb`` written out here, with the same matrix and operations, because lucent's version puts
its matrix on ``cuda:0`` whenever CUDA exists, which fails on a torchrun rank using another GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from rsi.fz_transforms import lucent_device
from rsi.runtime import keyed_generator

INIT_SD = 0.01  # lucent's fft_image default sd


def spectrum_shape(size: int) -> tuple[int, int, int, int]:
    """Shape of one image's spectrum parameter in lucent's fft_image: (3, h, w//2 + 1 (+1 if odd), 2)."""
    return (3, size, size // 2 + 1 + (size % 2), 2)


def initial_spectrum(seed: int, block: str, kind: str, channel: int, size: int, stream: str = "") -> Tensor:
    """One image's initial spectrum (lucent: randn * 0.01), from generator (seed, block, tap, channel); a
    ``stream`` other than "" keys another, independent draw of the same channel."""
    generator = keyed_generator(seed, block, kind, channel, "init", *([stream] if stream else []))
    return torch.randn(spectrum_shape(size), generator=generator) * INIT_SD


def _color_matrix(device: torch.device | str) -> Tensor:
    from lucent.optvis.param.color import color_correlation_normalized

    return torch.tensor(color_correlation_normalized.T).to(device)


def _decorrelate_color(image: Tensor, matrix: Tensor) -> Tensor:
    return torch.matmul(image.permute(0, 2, 3, 1), matrix).permute(0, 3, 1, 2)


def image_batch(spectra: Tensor, size: int, device: torch.device) -> tuple[Tensor, Callable[[], Tensor]]:
    """(spectrum parameter (B, 3, h, wf, 2), image function → (B, 3, size, size) in (0, 1)).

    ``spectra`` are the initial spectra, one per image (see :func:`initial_spectrum`).
    """
    from lucent.optvis.param.spatial import fft_image

    batch = spectra.shape[0]
    if tuple(spectra.shape[1:]) != spectrum_shape(size):
        raise ValueError(f"spectra of shape {tuple(spectra.shape)} do not fit {size} px images")
    # fft_image draws its own initial spectrum from the global RNG: fork it so that the caller's stream
    # is untouched, then overwrite the draw with ours.
    with torch.random.fork_rng(devices=[]), lucent_device(device):
        params, spectrum_to_image = fft_image((batch, 3, size, size), sd=INIT_SD)
    spectrum = params[0]
    with torch.no_grad():
        spectrum.copy_(spectra.to(spectrum.device))

    matrix = _color_matrix(spectrum.device)  # once, not a host copy per step as in lucent

    def image() -> Tensor:
        return torch.sigmoid(_decorrelate_color(spectrum_to_image(), matrix))

    return spectrum, image


def to_storage(images: np.ndarray, storage: str) -> np.ndarray:
    """Images in [0, 1] as stored: ``uint8`` is value·255 truncated (as the authors' PNGs, made with
    ``(img * 255).astype(np.uint8)`` from float32), ``float32`` unchanged."""
    images = np.asarray(images, dtype=np.float32)
    if storage == "uint8":
        return (images * np.float32(255)).astype(np.uint8)
    if storage == "float32":
        return images
    raise ValueError(f"unknown storage {storage!r}: choose 'uint8' or 'float32'")
