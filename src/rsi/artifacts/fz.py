"""The files of stage fz: one tap's FZs (``outputs/fz/<layerL_K>/<tap>.npz``, :class:`FZFile`) and the
settings a block was rendered with (``outputs/fz/<layerL_K>/settings.json``, :class:`FZSettings`), each with
its one writer and one reader. Stages stability and pre-reading write the same files under their own roots.

The resume chunks of ``rsi fz`` (``outputs/.resume``) are FZ files too, with one more array
(``resume_key``: the settings and the FZ code that made it, rsi.fz.TapSpec.resume_key): rsi.fz writes
them with :func:`write_fz` and assembles them with :func:`read_fz`; whether a chunk can be reused (its
channels and resume key) is rsi.fz's private check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsi.artifacts import ArtifactError, load_json, require_file, require_keys
from rsi.runtime import save_npz, write_json
from rsi.taps import block_order, parse_block

STAGE = "fz"
ARRAYS = ("images", "channels", "objective", "initial_objective")
SETTINGS_KEYS = ("block", "weights", "weights_label", "seed", "channels", "device", "taps")


@dataclass(frozen=True)
class FZFile:
    """The FZs of some channels of one tap: ``images`` (C, 3, H, W) as stored (uint8, value·255
    truncated, or float32 in [0, 1]), ``channels`` (C,) int64, and the target center neuron of each
    image's channel at the end (``objective``) and the start (``initial_objective``) of optimisation."""

    images: np.ndarray
    channels: np.ndarray
    objective: np.ndarray
    initial_objective: np.ndarray


def write_fz(path: Path, fz: FZFile, **extra: np.ndarray) -> None:
    """Write ``fz`` atomically (uncompressed npz, arrays in :data:`ARRAYS` order, then ``extra``)."""
    save_npz(
        path,
        images=fz.images,
        channels=fz.channels.astype(np.int64),
        objective=fz.objective.astype(np.float32),
        initial_objective=fz.initial_objective.astype(np.float32),
        **extra,
    )


def read_fz(path: Path, *, stage: str = STAGE) -> FZFile:
    """The FZ file at ``path`` (``rsi.artifacts.fz_file``); ``stage``, the one that wrote this copy, is
    named when the file or one of :data:`ARRAYS` is missing or the shapes disagree."""
    require_file(path, stage)
    with np.load(path, allow_pickle=False) as data:
        require_keys(path, data.files, ARRAYS, stage)
        fz = FZFile(*(data[key] for key in ARRAYS))
    if fz.images.ndim != 4 or fz.images.shape[1] != 3 or len(fz.images) != len(fz.channels):
        raise ArtifactError(
            f"{path}: images of shape {fz.images.shape} for {len(fz.channels)} channels; `rsi {stage}` "
            "writes one (3, H, W) image per channel: remake it with `dvc repro --force` of that stage"
        )
    if fz.images.dtype != np.uint8 and fz.images.dtype != np.float32:
        raise ArtifactError(f"{path}: images are {fz.images.dtype}; `rsi {stage}` writes uint8 or float32")
    return fz


@dataclass(frozen=True)
class FZSettings:
    """What rendered a block's FZs: the block, the weights (as given and as described), the seed, the
    number of channels, the device that assembled them (rsi.runtime.describe_device), and per tap kind the
    full settings of rsi.fz.TapSpec.describe() with its hash."""

    block: str
    weights: str
    weights_label: str
    seed: int
    channels: int
    device: str
    taps: dict[str, dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SETTINGS_KEYS}


def write_fz_settings(path: Path, settings: FZSettings) -> None:
    write_json(path, settings.as_json())


def read_fz_settings(path: Path, *, stage: str = STAGE) -> FZSettings:
    """``settings.json`` of a block (``rsi.artifacts.fz_settings_file``)."""
    data = load_json(path, stage)
    require_keys(path, data, SETTINGS_KEYS, stage)
    return FZSettings(**{key: data[key] for key in SETTINGS_KEYS})


def rendered_blocks(root: Path) -> list[str]:
    """The blocks with a ``settings.json`` under ``root``/fz, in forward order."""
    found = []
    for path in (Path(root) / "fz").glob("layer*/settings.json"):
        try:
            found.append(parse_block(path.parent.name))
        except ValueError:
            continue
    return sorted(found, key=block_order)
