"""The outputs of ``rsi natural-criteria`` (``criteria.natural_images``, ours): per block
``outputs/natural_criteria/<layerL_K>.npz`` (:class:`NaturalCriteriaBlock`), ``passing.json`` (the channels
passing the natural test, and passing it and the FZ criteria, per block), ``settings.json`` and
``metrics/criteria_natural.json`` (per block the counts of :data:`OVERLAP_KEYS`; ``{}`` when the stage is
off, and then the folder holds a README.txt and a passing.json with no block, no settings.json).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsi.artifacts import METRICS, OUTPUTS, block_of_key, load_json, require_file, require_keys
from rsi.artifacts.criteria import COUNT_KEYS
from rsi.artifacts.passing import Passing, passing_of
from rsi.runtime import save_npz, write_json
from rsi.taps import block_key

STAGE = "natural-criteria"
METRICS_FILE = METRICS / "criteria_natural.json"
OVERLAP_KEYS: tuple[str, ...] = (
    *COUNT_KEYS,
    "fz_probed",
    "fz_passing",
    "natural_passing_probed",
    "both",
    "jaccard",
)


def natural_criteria_dir(root: Path = OUTPUTS) -> Path:
    return root / "natural_criteria"


def natural_criteria_file(block: str, root: Path = OUTPUTS) -> Path:
    return natural_criteria_dir(root) / f"{block_key(block)}.npz"


@dataclass(frozen=True)
class NaturalCriteriaBlock:
    """One block, every channel: the responses (C, k) over the top-k images and the verdicts (C,)."""

    channels: np.ndarray
    pre_of_in_top: np.ndarray
    pre_of_scaled_in_top: np.ndarray
    post_of_in_top: np.ndarray
    post_of_pre_top: np.ndarray
    eq1: np.ndarray
    eq2: np.ndarray
    eq2_ratio: np.ndarray
    passes: np.ndarray


def write_natural_criteria_block(block: str, record: NaturalCriteriaBlock, root: Path = OUTPUTS) -> None:
    arrays = {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
    save_npz(natural_criteria_file(block, root), **arrays)


def read_natural_criteria_block(block: str, root: Path = OUTPUTS) -> NaturalCriteriaBlock:
    path = require_file(natural_criteria_file(block, root), STAGE)
    names = [field.name for field in dataclasses.fields(NaturalCriteriaBlock)]
    with np.load(path, allow_pickle=False) as data:
        require_keys(path, data.files, names, STAGE)
        return NaturalCriteriaBlock(**{name: data[name] for name in names})


@dataclass(frozen=True)
class NaturalPassing:
    """``passing.json``: the channels passing the natural-image test, and those passing it and the FZ
    criteria (``both``), per block ``"2.1"`` (the file keys them ``layerL_K``)."""

    natural: Passing
    both: Passing


def natural_passing_file(root: Path = OUTPUTS) -> Path:
    return natural_criteria_dir(root) / "passing.json"


def write_natural_passing(record: NaturalPassing, root: Path = OUTPUTS) -> None:
    write_json(
        natural_passing_file(root),
        {name: _keyed(getattr(record, name).blocks) for name in ("natural", "both")},
    )


def read_natural_passing(root: Path = OUTPUTS) -> NaturalPassing:
    path = natural_passing_file(root)
    data = load_json(path, STAGE)
    require_keys(path, data, ["natural", "both"], STAGE)
    lists = {
        name: passing_of({block_of_key(path, k, STAGE): v for k, v in data[name].items()}, path, STAGE, name)
        for name in ("natural", "both")
    }
    return NaturalPassing(**lists)


@dataclass(frozen=True)
class NaturalCriteriaSettings:
    """``settings.json``: the scale fraction of S, the TF32 flags in force and k (0 with no block)."""

    scale_fraction: float
    numerics: dict[str, bool]
    k: int


def write_natural_criteria_settings(settings: NaturalCriteriaSettings, root: Path = OUTPUTS) -> None:
    path = natural_criteria_dir(root) / "settings.json"
    write_json(path, {"scale_fraction": settings.scale_fraction, **settings.numerics, "k": settings.k})


@dataclass(frozen=True)
class NaturalCriteriaMetrics:
    """``metrics/criteria_natural.json``: per block ``"2.1"`` the counts of :data:`OVERLAP_KEYS` (no
    block when the stage is off)."""

    blocks: dict[str, dict[str, float]]


def write_natural_criteria_metrics(metrics: NaturalCriteriaMetrics, path: Path = METRICS_FILE) -> None:
    write_json(path, _keyed(metrics.blocks))


def read_natural_criteria_metrics(path: Path = METRICS_FILE) -> NaturalCriteriaMetrics:
    data = load_json(path, STAGE)
    blocks = {block_of_key(path, key, STAGE): entry for key, entry in data.items()}
    for entry in blocks.values():
        require_keys(path, entry, OVERLAP_KEYS, STAGE)
    return NaturalCriteriaMetrics(blocks)


def _keyed(blocks: dict[str, Any]) -> dict[str, Any]:
    return {block_key(block): value for block, value in blocks.items()}
