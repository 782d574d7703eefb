"""The file of stage activations, ``outputs/activations/<layerL_K>.npz`` (:class:`Activations`), with its one
writer and one reader. Stages stability and pre-reading write the same file under their own roots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsi.artifacts import NUMERICS, require_file, require_keys
from rsi.runtime import save_npz

STAGE = "activations"
ARRAYS = (
    "acts",
    "channels",
    "fz_images",
    "taps",
    "weights",
    "extractor",
    "scale_fraction",
    "shrink_fraction",
    *NUMERICS,
)


@dataclass(frozen=True)
class Activations:
    """One block's center-neuron responses to its FZs: ``acts`` (len(fz_images), len(taps), C) float32,
    acts[i, t, j] the center neuron of tap ``taps[t]``, channel ``channels[j]``, to image ``fz_images[i]``
    of that channel; then how they were measured: the weights (described), the extractor, the fractions
    of S and of the mirror test, and the TF32 flags (:data:`NUMERICS`)."""

    acts: np.ndarray
    channels: np.ndarray
    fz_images: tuple[str, ...]
    taps: tuple[str, ...]
    weights: str
    extractor: str
    scale_fraction: float
    shrink_fraction: float
    numerics: dict[str, bool]


def write_activations(path: Path, data: Activations) -> None:
    """Write ``data`` atomically (uncompressed npz, arrays in :data:`ARRAYS` order)."""
    save_npz(
        path,
        acts=data.acts,
        channels=data.channels,
        fz_images=np.asarray(data.fz_images),
        taps=np.asarray(data.taps),
        weights=np.asarray(data.weights),
        extractor=np.asarray(data.extractor),
        scale_fraction=np.asarray(data.scale_fraction),
        shrink_fraction=np.asarray(data.shrink_fraction),
        **{key: np.asarray(data.numerics[key]) for key in NUMERICS},
    )


def read_activations(path: Path, *, stage: str = STAGE) -> Activations:
    """The activations file at ``path`` (``rsi.artifacts.activations_file``); ``stage``, the one that
    wrote this copy, is named when the file or one of :data:`ARRAYS` is missing."""
    require_file(path, stage)
    with np.load(path, allow_pickle=False) as data:
        require_keys(path, data.files, ARRAYS, stage)
        return Activations(
            acts=data["acts"],
            channels=data["channels"],
            fz_images=tuple(str(name) for name in data["fz_images"]),
            taps=tuple(str(name) for name in data["taps"]),
            weights=str(data["weights"]),
            extractor=str(data["extractor"]),
            scale_fraction=float(data["scale_fraction"]),
            shrink_fraction=float(data["shrink_fraction"]),
            numerics={key: bool(data[key]) for key in NUMERICS},
        )
