"""The evaluation cache of ``rsi prepare-data``, ``outputs/eval/``: ``images.npy`` (N, S, S, 3) uint8
(S = 256 in the pipeline; opened memory-mapped), ``labels.npy`` (N,) int64, ``resized.npy`` (N, 2) int32
(each image's height and width after ``Resize(256)``, before the crop to S) and ``index.json`` (the keys of
:data:`INDEX_KEYS`: source, JPEG decoder, file list, class map, skipped and ignored files). See :mod:`rsi.data`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsi.artifacts import METRICS, ArtifactError, eval_dir, load_json, require_file, require_keys
from rsi.runtime import atomic_path, write_json

STAGE = "prepare-data"
INDEX_KEYS: tuple[str, ...] = (
    "source",
    "generated",
    "decoder",
    "root",
    "count",
    "size",
    "classes",
    "files",
    "skipped_count",
    "skipped",
    "ignored_count",
    "ignored",
)


@dataclass(frozen=True)
class EvalCache:
    """The cache: ``images`` memory-mapped, ``index`` the decoded index.json (keys :data:`INDEX_KEYS`)."""

    images: np.ndarray
    labels: np.ndarray
    resized: np.ndarray
    index: dict[str, Any]


def images_file(directory: Path | None = None) -> Path:
    return (eval_dir() if directory is None else Path(directory)) / "images.npy"


def write_eval(
    directory: Path, images: Path, labels: np.ndarray, resized: np.ndarray, index: dict[str, Any]
) -> None:
    """Complete the cache in ``directory``: labels.npy, resized.npy and index.json, then ``images``, the
    finished images .npy that the decoder streamed to a temporary file in ``directory`` (decoding is
    long, so the images are not held in memory), renamed onto images.npy."""
    for name, array in (("labels", labels), ("resized", resized)):
        with atomic_path(directory / f"{name}.npy") as temporary, open(temporary, "wb") as handle:
            np.save(handle, array)
    write_json(directory / "index.json", index)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(images, 0o666 & ~umask)
    os.replace(images, images_file(directory))


def read_eval(directory: Path | None = None) -> EvalCache:
    """The cache in ``directory`` (default ``outputs/eval``), images memory-mapped, checked for the files,
    the index keys and array shapes :func:`write_eval` always writes."""
    directory = eval_dir() if directory is None else Path(directory)
    for name in ("images.npy", "labels.npy", "resized.npy", "index.json"):
        require_file(directory / name, STAGE)
    images = np.load(images_file(directory), mmap_mode="r")
    labels = np.load(directory / "labels.npy")
    resized = np.load(directory / "resized.npy")
    index = load_json(directory / "index.json", STAGE)
    require_keys(directory / "index.json", index, INDEX_KEYS, STAGE)
    square = images.ndim == 4 and images.shape[1] == images.shape[2] and images.shape[3] == 3
    if not square or images.shape[1] % 8 or not len(images) == len(labels) == len(resized):
        raise ArtifactError(
            f"{directory}: images {images.shape}, labels {labels.shape} and resized {resized.shape} do not "
            f"match the cache format (N, S, S, 3) with S a multiple of 8 / (N,) / (N, 2); run "
            f"`rsi {STAGE}` again"
        )
    return EvalCache(images, labels, resized, index)


@dataclass(frozen=True)
class DataMetrics:
    """``metrics/data.json``: the cache's image count, skipped and ignored files, classes present and 1 if
    generated. For ``dvc metrics`` and people only: no stage reads it, so it has a writer and no reader."""

    images: int
    skipped: int
    ignored: int
    classes: int
    generated: int


def write_data_metrics(metrics: DataMetrics, path: Path = METRICS / "data.json") -> None:
    write_json(path, dataclasses.asdict(metrics))
