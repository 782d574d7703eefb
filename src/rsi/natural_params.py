"""params.yaml ``natural``: the settings of the natural-image pass, checked.

Its own module, below rsi.natural, so the report (which prints these keys with their defaults) reads them
without importing the pass's model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rsi.config import PROBED_BLOCKS, check_blocks


@dataclass(frozen=True)
class NaturalParams:
    """params.yaml ``natural``."""

    blocks: tuple[str | float, ...] = field(default=PROBED_BLOCKS, metadata={"check": check_blocks})
    k: int = field(default=9, metadata={"min": 1})
    batch_size: int = field(default=256, metadata={"min": 1})
    tf32: bool = field(
        default=False,
        metadata={
            "help": "allow TF32 convolutions on CUDA for the means ablate writes in (the authors' torch 2.0 did)"
        },
    )
