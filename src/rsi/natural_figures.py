"""The figure of ``criteria.natural_images`` (ours, not the paper's), drawn by `rsi figures`: per block,
the channels that pass both the FZ criteria and the natural-image criteria (:mod:`rsi.natural_criteria`),
one row each: X̂_In and X̂_Pre (the FZs of Eq. 1 and 2) beside the top-9 natural images of the In and Pre
taps (the images of their natural-image versions). ``outputs/figures/natural_both_<layerL_K>.png``.
Reads stage outputs only; computes nothing on a GPU.
"""

from __future__ import annotations

from pathlib import Path

from rsi.artifacts.natural_criteria import read_natural_passing
from rsi.figures import (
    PANEL,
    TITLE_LINE,
    FZStore,
    NaturalStore,
    _header,
    _pyplot,
    _save,
    _warning,
)
from rsi.labels import RunLabels
from rsi.taps import block_key, block_order

PATTERN = "natural_both_{}.png"
MAX_ROWS = 16  # channels per block drawn (the first, by channel number)
COLUMNS = (
    ("FZ", "in", "X̂_In (FZ)"),
    ("FZ", "pre", "X̂_Pre (FZ)"),
    ("top", "in", "top-9 natural of In"),
    ("top", "pre", "top-9 natural of Pre"),
)


def passing_both(root: Path) -> dict[str, list[int]]:
    """``{"2.1": [channels]}`` passing both verdicts, from ``outputs/natural_criteria/passing.json``
    (empty when ``criteria.natural_images`` is off: the stage then writes no block)."""
    return {block: channels for block, channels in read_natural_passing(root).both.blocks.items() if channels}


def draw_block(
    block: str,
    channels: list[int],
    total: int,
    stores: tuple[FZStore, NaturalStore],
    labels: RunLabels,
    path: Path,
    dpi: int,
) -> None:
    """One block's sheet: a row per channel, the columns of :data:`COLUMNS`."""
    plt = _pyplot()
    fzs, natural = stores
    header = _header(labels, 2) + 0.3
    height = 1.8 * len(channels) + header
    fig, axes = plt.subplots(len(channels), len(COLUMNS), figsize=(7.6, height), squeeze=False)
    for row, channel in enumerate(channels):
        for col, (what, kind, title) in enumerate(COLUMNS):
            if what == "FZ":
                image = fzs.block_image(block, kind, channel)
            else:
                image = natural.mosaic(block, kind, channel, PANEL)
            ax = axes[row][col]
            ax.imshow(image, interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"channel {channel}", fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.05 / height, top=1 - header / height, wspace=0.04)
    shown = f"{len(channels)} of {total}" if len(channels) < total else f"all {total}"
    fig.suptitle(
        f"Block {block}: {shown} channels passing the FZ and the natural-image criteria\n"
        "(natural-image criteria: ours, not the paper's)",
        y=1 - 0.08 / height,
        va="top",
        fontsize=10,
    )
    _warning(fig, labels, 0.08 + 2 * TITLE_LINE)
    _save(fig, path, dpi)


def draw_natural_both(fzs: FZStore, natural: NaturalStore, labels: RunLabels, dpi: int) -> list[Path]:
    """Every block's sheet of channels passing both verdicts, from the stage outputs the stores read (under
    the same root); the PNG paths written (none when the natural-image criteria are off). Earlier sheets
    are removed first."""
    root = fzs.root
    out_dir = root / "figures"
    for stale in out_dir.glob(PATTERN.format("*")):
        stale.unlink()
    both = passing_both(root)
    written = []
    for block in sorted(both, key=block_order):
        path = out_dir / PATTERN.format(block_key(block))
        draw_block(block, both[block][:MAX_ROWS], len(both[block]), (fzs, natural), labels, path, dpi)
        written.append(path)
    if both:
        print(f"natural-image criteria: {len(written)} sheets of channels passing both → {out_dir}")
    return written


__all__ = ["draw_natural_both", "passing_both"]
