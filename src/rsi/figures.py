"""`rsi figures`: the paper's figures as PNG, drawn from the stage outputs; it renders nothing.

Owns the drawing (file contract: :mod:`rsi.artifacts`; which channels: :mod:`rsi.channel_plan`).

* Fig. 1 / 3 / 4: per channel a 3x3 grid. Columns: In, Pre, Post of the block. Rows: the center-neuron FZ
  (stage fz), the whole-channel FZ (stage whole-channel, ``figures.whole_channel``), and the top-9
  center-neuron natural images (stage natural, drawn from the evaluation cache of stage prepare-data).
  ``outputs/figures/fig1_<layerL_K>_c<ccc>.png`` for the channels shown one by one (the paper's exemplary
  channels, 3.1's 29, 113, 178, 80 and 215, when probed, titled "not criteria-passing" where they do not
  pass here; then the first passing ones), and ``outputs/figures/grids_<layerL_K>.png``, a
  contact sheet of all passing channels of a block (the paper's Fig. 3 and 4).
* Fig. 2: ``outputs/figures/fig2_ablation.png``, the ablation ratio per scale ("No Scale", 10 % … 50 %)
  with standard-error bars and a line at the no-scale ratio, one panel per ablated block.

Every figure made with random weights says RANDOM WEIGHTS in its title.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsi import artifacts
from rsi.artifacts.ablation import CHANNEL_SET_LABELS, AblationSeries, read_ablation_metrics
from rsi.artifacts.eval import read_eval
from rsi.artifacts.natural import read_natural
from rsi.artifacts.passing import read_passing
from rsi.artifacts.rerun import Rerun, read_rerun, rerun_file
from rsi.artifacts.whole_channel import WholeChannelFZs, read_whole_channel
from rsi.channel_plan import ChannelPlan, FiguresParams, column_tap, plan_channels, probed_of
from rsi.config import load_section, read_params
from rsi.labels import RunLabels, run_labels
from rsi.paper import EVAL_IMAGES
from rsi.runtime import atomic_path
from rsi.taps import DEFAULT_ARCH, TAP_KINDS, Tap, block_key

ABLATION_FIGURE = "fig2_ablation.png"
TOP_NATURAL = 9  # the paper's top-9 natural images per tap
ROW_LABELS = ("center-neuron FZ", "whole-channel FZ", "top-9 natural images")
COLUMN_LABELS = {"in": "In", "pre": "Pre", "post": "Post"}
# the Pre column says which Pre its FZ was optimised for (fz.pre_reading, from the block's settings.json):
# the paper's Pre FZs were lucent's, whose bn2 hook saw the block output (DESIGN)
PRE_READING_LABELS = {"exact": "Pre (exact)", "lucent_reference": "Pre (lucent's hook: Post)"}
# Fig. 2's y-axis in the authors' plot_utils.py; widened only where a bar or its error does not fit
AUTHORS_RATIO_AXIS = (0.9, 1.1)
PANEL = 224  # pixel side of a panel in contact sheets, and of the natural-image mosaics
TITLE_LINE = 0.3  # inches per line of a figure title
WARNING_LINE = 0.24  # inches per red warning line


# ------------------------------------------------------------------------------------------------------
# Inputs.


def to_hwc_uint8(image: Any) -> np.ndarray:
    """(3, H, W) or (H, W, 3), uint8 or float in [0, 1] (array or tensor) → (H, W, 3) uint8."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected one image of 3 dimensions, got shape {array.shape}")
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(array)


class FZStore:
    """Center-neuron FZs of stage fz, one file per tap, and stage rerun-fz's re-renders, loaded once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[Tap, tuple[np.ndarray, dict[int, int]]] = {}
        self._reruns: dict[str, Rerun] = {}

    def block_image(self, block: str, kind: str, channel: int) -> np.ndarray:
        """The FZ the criteria judged in column ``kind`` of ``block`` (HWC uint8): stage rerun-fz's re-render
        of X̂_In or X̂_Pre where it replaced the channel (criteria.rerun_fz), else stage fz's."""
        if kind in ("in", "pre"):
            if block not in self._reruns:
                self._reruns[block] = read_rerun(rerun_file(block, self.root))
            rerun = self._reruns[block]
            position = np.flatnonzero(rerun.channels == channel)
            if position.size:
                return to_hwc_uint8((rerun.in_images if kind == "in" else rerun.pre_images)[position[0]])
        return self.image(column_tap(block, kind), channel)

    def pre_reading(self, block: str) -> str | None:
        """The fz.pre_reading the block's Pre FZs were rendered with (its settings.json), or None."""
        from rsi.artifacts.fz import read_fz_settings

        taps = read_fz_settings(artifacts.fz_settings_file(block, self.root)).taps
        return taps.get("pre", {}).get("pre_reading")

    def _load(self, tap: Tap) -> tuple[np.ndarray, dict[int, int]]:
        if tap not in self._files:
            from rsi.artifacts.fz import read_fz

            fz = read_fz(artifacts.fz_file(tap, self.root))
            self._files[tap] = (fz.images, {int(c): i for i, c in enumerate(fz.channels)})
        return self._files[tap]

    def image(self, tap: Tap, channel: int) -> np.ndarray:
        images, index = self._load(tap)
        if channel not in index:
            raise artifacts.ArtifactError(
                f"{artifacts.fz_file(tap, self.root)} has no FZ of channel {channel} (it holds "
                f"{len(index)} channels): render it with `rsi fz` (stage fz) or choose other figures.channels"
            )
        return to_hwc_uint8(images[index[channel]])

    def require(self, taps: Sequence[Tap]) -> None:
        for tap in taps:
            self._load(tap)


class NaturalStore:
    """Top-k natural images per tap and channel (stage natural) and the evaluation cache's images (N, S, S, 3)
    uint8 they index."""

    def __init__(self, root: Path, images: np.ndarray) -> None:
        self.root = root
        self.images = images
        self._topk: dict[str, np.ndarray] = {}

    def require(self, blocks: Sequence[str]) -> None:
        for block in blocks:
            self._load(block)

    def _load(self, block: str) -> np.ndarray:
        """The block's top-k indices (tap, channel, rank): column c is channel c."""
        if block not in self._topk:
            # of this image set: its top-k indexes these images
            self._topk[block] = read_natural(block, self.root, count=len(self.images)).topk
        return self._topk[block]

    def check(self, block: str, channel: int) -> None:
        if not 0 <= channel < self._load(block).shape[1]:
            raise artifacts.ArtifactError(
                f"{artifacts.natural_file(block, self.root)} has no channel {channel}: re-run `rsi natural`"
            )

    def mosaic(self, block: str, kind: str, channel: int, side: int) -> np.ndarray:
        """A 3x3 mosaic (side x side) of the channel's top-9 images for one tap, best first."""
        self.check(block, channel)
        topk = self._load(block)
        indices = [int(i) for i in topk[TAP_KINDS.index(kind), channel, :TOP_NATURAL]]
        return natural_mosaic(self.images, indices, side)


def natural_mosaic(images: np.ndarray, indices: Sequence[int], side: int, gap: int = 2) -> np.ndarray:
    """Images (N, S, S, 3) uint8 at ``indices``, center-cropped as the network saw them (224 of 256),
    tiled 3x3 into a side x side uint8 image; missing tiles are grey."""
    from PIL import Image

    tile = max(1, (side - 2 * gap) // 3)
    mosaic = np.full((side, side, 3), 255, dtype=np.uint8)
    for position in range(9):
        row, col = divmod(position, 3)
        y, x = row * (tile + gap), col * (tile + gap)
        if position < len(indices) and 0 <= indices[position] < len(images):
            image = np.asarray(images[indices[position]])
            height, width = image.shape[:2]
            crop = max(1, round(min(height, width) * 224 / 256))
            top, left = (height - crop) // 2, (width - crop) // 2
            image = image[top : top + crop, left : left + crop]
            cell = np.asarray(Image.fromarray(image).resize((tile, tile), Image.Resampling.LANCZOS))
        else:
            cell = np.full((tile, tile, 3), 200, dtype=np.uint8)
        mosaic[y : y + tile, x : x + tile] = cell
    return mosaic


# ------------------------------------------------------------------------------------------------------
# Drawing.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title_lines(labels: RunLabels) -> list[str]:
    lines = []
    if labels.random_weights:
        lines.append("RANDOM WEIGHTS (not the paper's model)")
    if labels.generated_data:
        lines.append("GENERATED DATA (not ImageNet)")
    elif labels.images is not None and labels.images < EVAL_IMAGES:
        lines.append(f"SUBSET: {labels.images:,} of the {EVAL_IMAGES:,} ImageNet validation images")
    return lines


def _network(labels: RunLabels) -> str:
    """A title's prefix naming the network when it is not the paper's ResNet18."""
    return "" if labels.arch == DEFAULT_ARCH else f"{labels.network}: "


def _save(fig: Any, path: Path, dpi: int) -> None:
    plt = _pyplot()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def _warning(fig: Any, labels: RunLabels, top_in: float) -> float:
    """Red warning lines (random weights, generated data) ``top_in`` inches below the top of ``fig``;
    returns the height in inches they take."""
    lines = _title_lines(labels)
    if lines:
        y = 1 - top_in / fig.get_figheight()
        text = "\n".join(lines)
        fig.text(
            0.5, y, text, ha="center", va="top", color="red", fontsize=10, weight="bold", linespacing=1.3
        )
    return WARNING_LINE * len(lines)


def _header(labels: RunLabels, lines: int) -> float:
    """Inches above the axes: ``lines`` title lines, the warnings, and room for axes titles."""
    return TITLE_LINE * lines + WARNING_LINE * len(_title_lines(labels)) + 0.15


Panels = list[list[np.ndarray | None]]  # [row][column]


def channel_status(channel: int, passing: Sequence[int] | None) -> str:
    """What a grid's title adds after the channel: nothing for a criteria-passing channel."""
    if passing is None:
        return " (block not probed: criteria.blocks)"
    return "" if channel in passing else " (not criteria-passing)"


def draw_channel_grid(
    block: str,
    channel: int,
    panels: Panels,
    labels: RunLabels,
    path: Path,
    dpi: int,
    captions: tuple[str, str | None],
) -> None:
    """One channel's 3x3 grid (Fig. 1 style); ``captions``: the title's status (:func:`channel_status`)
    and the Pre FZs' fz.pre_reading."""
    plt = _pyplot()
    header = _header(labels, 1) + 0.45  # column titles: tap and module name
    height = 3 * 2.2 + header + 0.1
    fig, axes = plt.subplots(3, 3, figsize=(7.0, height))
    fig.subplots_adjust(
        left=0.08, right=0.99, bottom=0.1 / height, top=1 - header / height, wspace=0.04, hspace=0.04
    )
    for row in range(3):
        for col, kind in enumerate(TAP_KINDS):
            ax = axes[row][col]
            image = panels[row][col]
            if image is None:
                ax.set_facecolor("0.9")
                ax.text(
                    0.5,
                    0.5,
                    "not rendered\n(figures.whole_channel: false)",
                    ha="center",
                    va="center",
                    fontsize=8,
                    transform=ax.transAxes,
                )
            else:
                ax.imshow(image, interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                module = column_tap(block, kind).module_of(labels.arch)
                label = (
                    PRE_READING_LABELS.get(captions[1] or "", "Pre") if kind == "pre" else COLUMN_LABELS[kind]
                )
                ax.set_title(f"{label}\n{module}", fontsize=9)
            if col == 0:
                ax.set_ylabel(ROW_LABELS[row], fontsize=9)
    title = f"{_network(labels)}Block {block}, channel {channel}{captions[0]}"
    fig.suptitle(title, y=1 - 0.08 / height, va="top", fontsize=13)
    _warning(fig, labels, 0.08 + TITLE_LINE)
    _save(fig, path, dpi)


def composite(panels: Panels, side: int = PANEL, gap: int = 6) -> np.ndarray:
    """The 3x3 panels as one uint8 image (white gaps; grey where a panel is missing)."""
    from PIL import Image

    size = 3 * side + 2 * gap
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    for row in range(3):
        for col in range(3):
            image = panels[row][col]
            if image is None:
                cell = np.full((side, side, 3), 225, dtype=np.uint8)
            elif image.shape[:2] != (side, side):
                cell = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS))
            else:
                cell = image
            y, x = row * (side + gap), col * (side + gap)
            out[y : y + side, x : x + side] = cell
    return out


def draw_contact_sheet(
    block: str, grids: Mapping[int, np.ndarray], total: int, labels: RunLabels, path: Path, dpi: int
) -> None:
    """All passing channels of a block (Fig. 3 / Fig. 4 style)."""
    plt = _pyplot()
    count = len(grids)
    ncols = min(4, count)
    nrows = math.ceil(count / ncols)
    header = _header(labels, 2) + 0.1
    fig = plt.figure(figsize=(max(2.4 * ncols + 0.2, 7.0), 2.55 * nrows + header))
    height = fig.get_figheight()
    for i, (channel, image) in enumerate(grids.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(image, interpolation="antialiased")
        ax.set_title(f"channel {channel}", fontsize=9)
        ax.axis("off")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - header / height, wspace=0.05, hspace=0.15)
    if total == 1:
        shown = "the one criteria-passing channel"
    elif count == total:
        shown = f"all {total} criteria-passing channels"
    else:
        shown = f"first {count} of {total} criteria-passing channels"
    fig.suptitle(
        f"{_network(labels)}Block {block}: {shown}\n"
        "columns In, Pre, Post; rows: center-neuron FZ, whole-channel FZ, top-9 natural images",
        y=1 - 0.08 / height,
        fontsize=10,
        va="top",
    )
    _warning(fig, labels, 0.08 + 2 * TITLE_LINE)
    _save(fig, path, dpi)


def draw_ablation(
    series: Mapping[str, Mapping[str, AblationSeries]], labels: RunLabels, path: Path, dpi: int
) -> None:
    """Fig. 2: ratio bars per scale with standard-error bars and the no-scale line, one panel per block and
    channel set ("this run's channels", "the authors' published channels")."""
    plt = _pyplot()
    panels = [(block, name, data) for block, sets in series.items() for name, data in sets.items()]
    count = len(panels)
    header = _header(labels, 1) + 0.5  # two-line axes titles
    height = 3.9 + header
    width = max(4.4 * count, 6.4)  # one panel still has room for the title and the axis label
    fig, axes = plt.subplots(1, count, figsize=(width, height), squeeze=False)
    for ax, (block, name, data) in zip(axes[0], panels, strict=True):
        x = np.arange(len(data.scales))
        ratio = np.asarray(data.ratio, dtype=float)
        sem = np.nan_to_num(np.asarray(data.sem, dtype=float))  # unknown (one trial): no error bar
        color = "#8c8cb4" if name == "run" else "#c9a66b"
        ax.bar(x, ratio, width=0.7, color=color, yerr=sem, ecolor="black", capsize=4, zorder=2)
        ax.axhline(data.no_scale_ratio, color="tab:blue", linewidth=1.6, label="no-scale ratio", zorder=3)
        ax.set_xticks(x, ["No Scale" if p == 0 else f"{p} %" for p in data.scales])
        ax.set_xlabel("scale transform")
        ax.set_ylabel("top-1 ratio: passing / random ablation")
        ax.set_title(f"Block {block}\n{CHANNEL_SET_LABELS[name]}", fontsize=11)
        finite = np.isfinite(ratio)
        if finite.any():
            low = float(np.min((ratio - sem)[finite]))
            high = float(np.max((ratio + sem)[finite]))
            if math.isfinite(data.no_scale_ratio):
                low, high = min(low, data.no_scale_ratio), max(high, data.no_scale_ratio)
            pad = max(0.25 * (high - low), 0.002)
            ax.set_ylim(min(AUTHORS_RATIO_AXIS[0], low - pad), max(AUTHORS_RATIO_AXIS[1], high + pad))
        else:  # every random-set accuracy 0 (e.g. random weights): Eq. 3 is undefined, say so
            note = "no ratio defined:\nthe random-ablated top-1 is 0 %"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=10)
        ax.grid(axis="y", alpha=0.3, zorder=0)
        ax.legend(loc="lower left", fontsize=8)
    fig.subplots_adjust(
        left=0.95 / width, right=1 - 0.15 / width, bottom=0.6 / height, top=1 - header / height, wspace=0.3
    )
    title = f"{_network(labels)}Ablation of criteria-passing vs random channels under scaling"
    fig.suptitle(title, y=1 - 0.08 / height, va="top", fontsize=12)
    _warning(fig, labels, 0.08 + TITLE_LINE)
    _save(fig, path, dpi)


# ------------------------------------------------------------------------------------------------------
# The stage.


def _clean(out_dir: Path) -> None:
    """Remove this stage's earlier files so the folder shows only this run's figures."""
    for pattern in ("fig1_*.png", "grids_*.png", ABLATION_FIGURE):
        for stale in out_dir.glob(pattern):
            stale.unlink()


def check_inputs(
    plan: ChannelPlan, fzs: FZStore, natural: NaturalStore, whole_channel: bool
) -> tuple[FZStore, NaturalStore, dict[str, WholeChannelFZs]]:
    """Every input the plan draws from, loaded and checked before anything is drawn: the center-neuron
    FZs, the natural images and, with ``whole_channel``, the whole-channel FZs of every planned channel."""
    root = fzs.root
    fzs.require([column_tap(b, kind) for b in plan.blocks for kind in TAP_KINDS])
    if plan.blocks:
        natural.require(plan.blocks)
    whole = {block: read_whole_channel(block, root) for block in plan.blocks} if whole_channel else {}
    for block in plan.blocks:
        for channel in plan.channels(block):
            for t, kind in enumerate(TAP_KINDS):
                fzs.block_image(block, kind, channel)
                if block in whole:
                    whole[block].image(t, channel)
            natural.check(block, channel)
    return fzs, natural, whole


def draw_block(
    block: str,
    plan: ChannelPlan,
    passing: Sequence[int] | None,
    inputs: tuple[FZStore, NaturalStore, dict[str, WholeChannelFZs]],
    labels: RunLabels,
    out_dir: Path,
    dpi: int,
) -> list[Path]:
    """One block's single-channel grids and contact sheet (``passing``: None for a block not probed); the
    PNG paths written."""
    fzs, natural, whole = inputs
    pre_reading = fzs.pre_reading(block)
    written = []
    grids: dict[int, np.ndarray] = {}
    for channel in plan.channels(block):
        panels: Panels = [
            [fzs.block_image(block, kind, channel) for kind in TAP_KINDS],
            [whole[block].image(t, channel) if block in whole else None for t in range(len(TAP_KINDS))],
            [natural.mosaic(block, kind, channel, PANEL) for kind in TAP_KINDS],
        ]
        if channel in plan.shown[block]:
            path = out_dir / f"fig1_{block_key(block)}_c{channel:03d}.png"
            captions = (channel_status(channel, passing), pre_reading)
            draw_channel_grid(block, channel, panels, labels, path, dpi, captions)
            written.append(path)
        if channel in plan.sheets[block]:
            grids[channel] = composite(panels)
    if grids:
        path = out_dir / f"grids_{block_key(block)}.png"
        draw_contact_sheet(block, grids, len(set(passing or [])), labels, path, dpi)
        written.append(path)
    print(f"block {block}: {len(plan.shown[block])} channel grids, contact sheet of {len(grids)} channels")
    return written


def make_figures(
    raw: Mapping[str, Any],
    params: FiguresParams,
    root: Path = artifacts.OUTPUTS,
    metrics: Path = artifacts.METRICS,
) -> list[Path]:
    """Every figure from the stage outputs under ``root`` and ``metrics``; returns the PNG paths written."""
    out_dir = root / "figures"
    passing = read_passing(artifacts.passing_file(root)).blocks
    ablation = read_ablation_metrics(metrics / "ablation.json").series()
    eval_cache = read_eval(artifacts.eval_dir(root))
    labels = run_labels(raw, eval_cache.index)
    fzs, natural = FZStore(root), NaturalStore(root, eval_cache.images)
    plan = plan_channels(params, passing, probed_of(raw, passing, labels.arch))
    for block in plan.empty:
        why = "no criteria-passing channels" if block in passing else "not probed (criteria.blocks)"
        print(f"block {block}: {why}, no grid drawn")
    inputs = check_inputs(plan, fzs, natural, params.whole_channel)

    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir)
    written = []
    for block in plan.blocks:
        written += draw_block(block, plan, passing.get(block), inputs, labels, out_dir, params.dpi)
    if ablation:
        path = out_dir / ABLATION_FIGURE
        draw_ablation(ablation, labels, path, params.dpi)
        written.append(path)
    else:
        print(f"{metrics / 'ablation.json'} holds no ablated block: Fig. 2 not drawn")
    from rsi.natural_figures import draw_natural_both  # criteria.natural_images (ours), when on

    written += draw_natural_both(fzs, natural, labels, params.dpi)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`rsi figures` reads params.yaml (section figures) and the stage outputs under ``--outputs``."""


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "figures", FiguresParams, source=str(args.params))
    root = Path(args.outputs)
    written = make_figures(raw, params, root)
    print(f"wrote {len(written)} figures under {root / 'figures'}")
