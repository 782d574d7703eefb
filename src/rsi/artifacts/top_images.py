"""``metrics/top_images.json``, written by ``rsi report``: per block, the paper's §3 reading of the
passing channels' top natural images (:func:`rsi.report.top_image_overlap`), so that ``dvc metrics diff``
shows it beside the counts. Keys are blocks ``layerL_K``; each entry holds :data:`KEYS`. A block without
passing channels or without a natural file has no entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rsi.artifacts import METRICS, ArtifactError, block_of_key, load_json, require_keys
from rsi.runtime import write_json
from rsi.taps import block_key

METRICS_FILE = METRICS / "top_images.json"
STAGE = "report"
KEYS: tuple[str, ...] = ("k", "channels", "in_pre_shared_mean", "in_pre_disjoint", "post_from_in_or_pre_mean")


@dataclass(frozen=True)
class TopImageOverlap:
    """One block, over its passing channels' top ``k`` images: the channels, the mean number of images
    In and Pre share, the channels where they share none, and the mean number of Post's that are In's or
    Pre's (the rest of Post's ``k`` are novel)."""

    k: int
    channels: int
    in_pre_shared_mean: float
    in_pre_disjoint: int
    post_from_in_or_pre_mean: float


def write_top_images(blocks: dict[str, TopImageOverlap], path: Path = METRICS_FILE) -> None:
    """Blocks ``"2.1"`` → their overlap, as ``{"layer2_1": {…}}`` (means rounded to 6 places)."""
    data = {}
    for block, overlap in blocks.items():
        entry = asdict(overlap)
        for key in ("in_pre_shared_mean", "post_from_in_or_pre_mean"):
            entry[key] = round(entry[key], 6)
        data[block_key(block)] = entry
    write_json(path, data)


def read_top_images(path: Path = METRICS_FILE) -> dict[str, TopImageOverlap]:
    """The blocks ``"2.1"`` and their overlap, as ``rsi report`` wrote them."""
    data = load_json(path, STAGE)
    blocks = {}
    for key, entry in data.items():
        block = block_of_key(path, key, STAGE)
        if not isinstance(entry, dict):
            raise ArtifactError(f"{path}: {key}: {entry!r} is not a mapping of {', '.join(KEYS)}")
        require_keys(path, entry, KEYS, STAGE)
        blocks[block] = TopImageOverlap(**{name: entry[name] for name in KEYS})
    return blocks
