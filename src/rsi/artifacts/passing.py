"""``outputs/criteria/passing.json`` (stage criteria): this run's criteria-passing channels per block.

PLACEHOLDER with the agreed API only (helper "stagedata" writes the real module; keep theirs at merge).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rsi.artifacts import require_file
from rsi.taps import parse_block


@dataclass(frozen=True)
class Passing:
    """``blocks``: block ("2.1") → its passing channels, ascending."""

    blocks: dict[str, list[int]]


def read_passing(path: Path, stage: str = "criteria") -> Passing:
    """The passing channels in ``path``, written by ``rsi <stage>``."""
    data = json.loads(require_file(path, stage).read_text())
    return Passing({parse_block(key): sorted(int(c) for c in value) for key, value in data.items()})
