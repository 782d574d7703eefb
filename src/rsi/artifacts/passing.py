"""``passing.json``: the criteria-passing channels of each block, ``{"2.1": [channels]}``.

Written by ``rsi criteria`` (``outputs/criteria/passing.json``) and, in the same format, by
``rsi pre-reading`` (``outputs/reference/criteria/passing.json``). Keys are blocks as ``rsi.taps.parse_block``
spells them (``"2.1"``), values the passing channels in channel order. ``rsi natural-criteria``'s own
``passing.json`` nests two of these records (:mod:`rsi.artifacts.natural_criteria`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsi.artifacts import ArtifactError, load_json
from rsi.runtime import write_json
from rsi.taps import parse_block


@dataclass(frozen=True)
class Passing:
    """Block ``"2.1"`` → its passing channels, in file order."""

    blocks: dict[str, list[int]]


def write_passing(passing: Passing, path: Path) -> None:
    write_json(path, passing.blocks)


def passing_of(data: object, path: Path, stage: str, where: str = "") -> Passing:
    """The record of a decoded ``{block: [channels]}`` mapping (``where``: its key path in the file)."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}{where}: not a {{block: [channels]}} mapping, which `rsi {stage}` writes")
    for block, channels in data.items():
        if _block_or_none(block) != block:
            raise ArtifactError(
                f"{path}{where}: key {block!r} is not a block as `rsi {stage}` writes it (e.g. '2.1')"
            )
        if not isinstance(channels, list) or not all(type(c) is int for c in channels):
            raise ArtifactError(f"{path}{where}: block {block}: {channels!r} is not a list of channels")
    return Passing({block: list(channels) for block, channels in data.items()})


def read_passing(path: Path, stage: str = "criteria") -> Passing:
    """The passing channels ``rsi <stage>`` wrote (``criteria`` or ``pre-reading``) at ``path``."""
    return passing_of(load_json(path, stage), path, stage)


def _block_or_none(key: str) -> str | None:
    try:
        return parse_block(key)
    except ValueError:
        return None
