"""``outputs/whole_channel/`` (stage whole-channel): the whole-channel FZs (paper Fig. 1, row 2) of the
channels the figures show.

One ``<layerL_K>.npz`` per block: ``images`` (3, n, 3, H, W) uint8, taps in the order In, Pre, Post;
``channels`` (n,) int64. ``settings.json`` beside them records the numerics they were rendered under (and
is the stage's only file when ``figures.whole_channel`` is false).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsi.artifacts import OUTPUTS, ArtifactError, require_file, require_keys
from rsi.runtime import save_npz
from rsi.taps import block_key

STAGE = "whole-channel"
KEYS = ("images", "channels")


def whole_channel_dir(root: Path = OUTPUTS) -> Path:
    """The folder of stage whole-channel: one file per block, and settings.json."""
    return root / "whole_channel"


@dataclass(frozen=True)
class WholeChannelFZs:
    """One block's whole-channel FZs: ``images[t, i]`` (3, H, W) uint8 is tap TAP_KINDS[t] of
    ``channels[i]``; ``path``: the file it was read from."""

    block: str
    channels: tuple[int, ...]
    images: np.ndarray
    path: Path | None = None

    def image(self, tap_index: int, channel: int) -> np.ndarray:
        """The (H, W, 3) uint8 image of ``channel`` at tap ``tap_index``; ArtifactError if not rendered."""
        if channel not in self.channels:
            raise ArtifactError(
                f"{self.path or whole_channel_file(self.block)} has no whole-channel FZ of channel {channel}: "
                f"remake it with `dvc repro {STAGE}` (or `rsi {STAGE}`)"
            )
        return np.ascontiguousarray(self.images[tap_index, self.channels.index(channel)].transpose(1, 2, 0))


def whole_channel_file(block: str, root: Path = OUTPUTS) -> Path:
    return whole_channel_dir(root) / f"{block_key(block)}.npz"


def write_whole_channel(record: WholeChannelFZs, root: Path = OUTPUTS) -> Path:
    """``record`` to its block's file under ``root`` (atomic); returns the path."""
    path = whole_channel_file(record.block, root)
    save_npz(path, images=record.images, channels=np.asarray(record.channels, dtype=np.int64))
    return path


def read_whole_channel(block: str, root: Path = OUTPUTS) -> WholeChannelFZs:
    """``block``'s whole-channel FZs under ``root``."""
    path = require_file(whole_channel_file(block, root), STAGE)
    with np.load(path, allow_pickle=False) as data:
        require_keys(path, data.files, KEYS, STAGE)
        return WholeChannelFZs(block, tuple(int(c) for c in data["channels"]), data["images"], path)
