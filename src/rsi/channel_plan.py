"""Which channels the figures show: params.yaml ``figures`` and the plan made from it.

Owns :class:`FiguresParams`, :func:`select_channels` and :func:`plan_channels`. Both `rsi whole-channel`
(which renders the whole-channel FZs of the planned channels) and `rsi figures` (which draws them) import
this lower module, so they agree on the channels without the figures stage importing any FZ code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsi import artifacts, paper
from rsi.config import check_blocks, params_arch
from rsi.taps import Tap, block_order, num_channels, parse_block


def _check_channels(value: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for key, channels in value.items():
        block = parse_block(key, params_arch())
        width = num_channels(block, params_arch())
        bad = [c for c in channels if not 0 <= c < width]
        if bad:
            raise ValueError(f"block {block} has channels 0..{width - 1}; {bad} are out of range")
        out[block] = tuple(dict.fromkeys(channels))
    return out


@dataclass(frozen=True)
class FiguresParams:
    """params.yaml ``figures``."""

    blocks: tuple[str | float, ...] = field(
        default=(),
        metadata={
            "check": check_blocks,
            "help": "blocks to draw channel grids for; empty: every block with passing channels",
        },
    )
    channels: dict[str, tuple[int, ...]] = field(
        default_factory=dict,
        metadata={
            "check": _check_channels,
            "help": "per block (layer2_1: [13, 36]) the channels drawn one PNG each; a block not listed "
            "shows the paper's exemplary channels (labelled where they do not pass here), then the first "
            "passing ones",
        },
    )
    max_per_block: int = field(
        default=6, metadata={"min": 0, "max": 512, "help": "single-channel PNGs per block when not listed"}
    )
    sheet_max: int = field(
        default=64, metadata={"min": 0, "max": 512, "help": "channels on a block's contact sheet (0: none)"}
    )
    whole_channel: bool = field(
        default=True, metadata={"help": "render whole-channel FZs (row 2) for the channels shown"}
    )
    dpi: int = field(default=100, metadata={"min": 50, "max": 600})


def column_tap(block: str, kind: str) -> Tap:
    """The FZ shown in a column: In of an L.1 block is the previous block's Post (rendered once)."""
    return artifacts.in_fz_source(block) if kind == "in" else Tap(block, kind)


def probed_channels(block: str, max_channels: int, arch: str) -> int:
    """How many channels of ``block`` stage fz renders, the first ``fz.max_channels`` (0: all), as
    rsi.fz.tap_channels; the figures may draw any of them."""
    width = num_channels(block, arch)
    return min(width, max_channels) if max_channels else width


def probed_of(raw: Mapping[str, Any], blocks: Iterable[str], arch: str) -> dict[str, int]:
    """:func:`probed_channels` of each block under params.yaml's ``fz.max_channels`` (already checked)."""
    max_channels = int((raw.get("fz") or {}).get("max_channels") or 0)
    return {block: probed_channels(block, max_channels, arch) for block in blocks}


def select_channels(
    block: str,
    passing: Sequence[int],
    params: FiguresParams,
    exemplary: Mapping[str, Sequence[int]],
    probed: int,
) -> list[int]:
    """Channels drawn one PNG each: figures.channels if listed for the block, else the paper's exemplary
    channels among the ``probed`` first ones, whether they pass here or not (passing lists match the
    paper only statistically, and these are the channels its figures show; the figure says when one does
    not pass), then the first passing ones, up to figures.max_per_block."""
    if block in params.channels:
        return list(params.channels[block])
    first = [int(c) for c in exemplary.get(block, []) if int(c) < probed]
    rest = [c for c in sorted(set(passing)) if c not in first]
    return (first + rest)[: params.max_per_block]


@dataclass(frozen=True)
class ChannelPlan:
    """Per block (pipeline order): the channels drawn one PNG each (``shown``) and those on the block's
    contact sheet (``sheets``). Blocks with neither are listed in ``empty``."""

    shown: dict[str, list[int]]
    sheets: dict[str, list[int]]
    empty: tuple[str, ...] = ()

    @property
    def blocks(self) -> list[str]:
        """The blocks drawn."""
        return list(self.shown)

    def channels(self, block: str) -> list[int]:
        """Every channel of ``block`` that needs its panels: shown or on the sheet, ascending."""
        return sorted(set(self.shown[block]) | set(self.sheets[block]))


def plan_channels(
    params: FiguresParams, passing: Mapping[str, Sequence[int]], probed: Mapping[str, int]
) -> ChannelPlan:
    """The channels drawn, from ``figures`` and this run's passing channels (``{"2.1": [13, 30]}``):
    figures.blocks (default every block with passing channels) and the blocks of figures.channels."""
    exemplary = paper.EXEMPLARY_CHANNELS
    shows_exemplary = [b for b in passing if any(c < probed.get(b, 0) for c in exemplary.get(b, ()))]
    blocks = list(params.blocks) or [b for b in passing if passing.get(b) or b in shows_exemplary]
    blocks += [b for b in params.channels if b not in blocks]
    shown: dict[str, list[int]] = {}
    sheets: dict[str, list[int]] = {}
    empty = []
    for block in sorted(set(blocks), key=block_order):
        channels = list(passing.get(block, []))
        chosen = select_channels(block, channels, params, exemplary, probed.get(block, 0))
        sheet = channels[: params.sheet_max]
        if chosen or sheet:
            shown[block], sheets[block] = chosen, sheet
        else:
            empty.append(block)
    return ChannelPlan(shown, sheets, tuple(empty))
