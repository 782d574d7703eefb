"""The file of stage rerun-fz, ``outputs/rerun/<layerL_K>.npz`` (:class:`Rerun`), with its one writer and one
reader: which channels the authors' loop would have stopped at, and the re-rendered activations that
replace some of them in stage criteria (:mod:`rsi.rerun`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsi.artifacts import FZ_IMAGES, OUTPUTS, ArtifactError, require_file, require_keys
from rsi.runtime import save_npz
from rsi.taps import TAP_KINDS, block_key

STAGE = "rerun-fz"
ARRAYS = ("hits", "channels", "seeds", "acts", "in_images", "pre_images", "tries")


def rerun_file(block: str, root: Path = OUTPUTS) -> Path:
    return root / "rerun" / f"{block_key(block)}.npz"


@dataclass(frozen=True)
class Rerun:
    """One block: ``hits`` (int64), the channels whose Post_c(X̂_In_c) and Post_c(X̂_Pre_c) were both <= 0
    in stage activations; ``channels`` (int64, a subset of ``hits``), those a re-render replaced, with
    ``seeds`` (int64), the FZ seed of each replacement, and ``acts`` (len(FZ_IMAGES), 3, len(channels))
    float32, their activations as stage activations lays them out, and ``in_images`` / ``pre_images``
    (len(channels), 3, H, W), the re-rendered X̂_In and X̂_Pre as stage fz stores FZs (the figures draw these);
    ``tries``, criteria.rerun_fz (0: off, nothing replaced)."""

    hits: np.ndarray
    channels: np.ndarray
    seeds: np.ndarray
    acts: np.ndarray
    in_images: np.ndarray
    pre_images: np.ndarray
    tries: int


def _one_per_channel(record: Rerun) -> bool:
    """Whether ``acts`` (len(FZ_IMAGES), 3, R), ``seeds`` and both image stacks hold one entry per replaced
    channel, as :func:`write_rerun` writes them and :func:`read_rerun` requires."""
    count = len(record.channels)
    same = {len(record.seeds), len(record.in_images), len(record.pre_images)} == {count}
    return same and record.acts.shape == (len(FZ_IMAGES), len(TAP_KINDS), count)


def no_reruns(hits: np.ndarray, tries: int) -> Rerun:
    """The record of a block where nothing was replaced: ``hits`` listed, no channel, activation or image."""
    none = np.zeros(0, dtype=np.int64)
    images = np.zeros((0, 3, 0, 0), dtype=np.uint8)
    acts = np.zeros((len(FZ_IMAGES), len(TAP_KINDS), 0), dtype=np.float32)
    return Rerun(np.asarray(hits, dtype=np.int64), none, none, acts, images, images, tries)


def write_rerun(path: Path, record: Rerun) -> None:
    """Write ``record`` atomically (uncompressed npz, arrays in :data:`ARRAYS` order)."""
    if not _one_per_channel(record):  # a caller's bug
        raise ValueError(
            f"Rerun: acts {record.acts.shape}, seeds and images are not one per replaced channel"
        )
    save_npz(
        path,
        hits=np.asarray(record.hits, dtype=np.int64),
        channels=np.asarray(record.channels, dtype=np.int64),
        seeds=np.asarray(record.seeds, dtype=np.int64),
        acts=np.asarray(record.acts, dtype=np.float32),
        in_images=record.in_images,
        pre_images=record.pre_images,
        tries=np.int64(record.tries),
    )


def read_rerun(path: Path) -> Rerun:
    """The file at ``path`` (:func:`rerun_file`), checked for the arrays :func:`write_rerun` writes."""
    require_file(path, STAGE)
    with np.load(path, allow_pickle=False) as data:
        require_keys(path, data.files, ARRAYS, STAGE)
        record = Rerun(
            hits=data["hits"],
            channels=data["channels"],
            seeds=data["seeds"],
            acts=data["acts"],
            in_images=data["in_images"],
            pre_images=data["pre_images"],
            tries=int(data["tries"]),
        )
    if not _one_per_channel(record):
        raise ArtifactError(
            f"{path}: acts of shape {record.acts.shape} do not match its channels: run `rsi {STAGE}`"
        )
    return record
