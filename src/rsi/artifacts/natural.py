"""The natural-image statistics of ``rsi natural``: ``outputs/natural/<layerL_K>.npz`` per block.

Arrays, rows In, Pre, Post (``taps.TAP_KINDS``), of the center neuron of each channel: ``mean`` (3, C)
float32 over the evaluation set, ``topk`` (3, C, k) int64 evaluation indices of the largest activations,
largest first (a ReLU output ranked by its pre-ReLU sum, which is not stored, so images where it is 0
come in that sum's order: rsi.natural.ranking_values), ``topk_values`` (3, C, k) float32; and the
labels ``count`` (images), ``weights`` (what produced them), ``generated`` (the images are the synthetic offline set) and the TF32 flags in force
(:data:`NUMERICS`). Channel c is column c: the pass covers every channel of a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsi.artifacts import NUMERICS, OUTPUTS, ArtifactError, natural_file, require_file, require_keys
from rsi.runtime import save_npz

STAGE = "natural"
KEYS: tuple[str, ...] = ("mean", "topk", "topk_values", "count", "weights", "generated", *NUMERICS)


@dataclass(frozen=True)
class NaturalStats:
    """One block's file: the arrays, the image count, and what produced them."""

    mean: np.ndarray  # (3, C) float32
    topk: np.ndarray  # (3, C, k) int64
    topk_values: np.ndarray  # (3, C, k) float32
    count: int
    weights: str
    generated: bool
    numerics: dict[str, bool]  # NUMERICS → flag


def write_natural(block: str, stats: NaturalStats, root: Path = OUTPUTS) -> None:
    if set(stats.numerics) != set(NUMERICS):  # a caller's bug, not a file's: say what the record lacks
        raise ValueError(f"NaturalStats.numerics has {sorted(stats.numerics)}, expected {list(NUMERICS)}")
    save_npz(
        natural_file(block, root),
        mean=stats.mean,
        topk=stats.topk,
        topk_values=stats.topk_values,
        count=np.int64(stats.count),
        weights=np.str_(stats.weights),
        generated=np.bool_(stats.generated),
        **{key: np.bool_(stats.numerics[key]) for key in NUMERICS},
    )


def read_natural(
    block: str, root: Path = OUTPUTS, *, weights: str | None = None, count: int | None = None
) -> NaturalStats:
    """The block's file. Given ``weights`` (the run's model, as rsi.model.describe_weights labels it) and
    ``count`` (the evaluation cache's images), also checked to be of this run: a file made by other weights
    or on another image set fails, naming both, rather than feeding a stage stale statistics."""
    path = require_file(natural_file(block, root), STAGE)
    with np.load(path, allow_pickle=False) as data:
        require_keys(path, data.files, KEYS, STAGE)
        stats = NaturalStats(
            mean=data["mean"],
            topk=data["topk"],
            topk_values=data["topk_values"],
            count=int(data["count"]),
            weights=str(data["weights"]),
            generated=bool(data["generated"]),
            numerics={key: bool(data[key]) for key in NUMERICS},
        )
    if weights is not None and stats.weights != weights:
        raise ArtifactError(
            f"{path} was made with {stats.weights}, this run's model.weights is {weights}: re-run `rsi "
            f"{STAGE}` (`dvc repro` does)"
        )
    if count is not None and stats.count != count:
        raise ArtifactError(
            f"{path} was measured on {stats.count} images, the evaluation cache holds {count}: re-run `rsi "
            f"{STAGE}` (`dvc repro` does)"
        )
    return stats
