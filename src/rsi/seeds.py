"""The FZ seeds of criteria stability: ``criteria.seeds`` and ``criteria.seed_root``, and the outputs root
of each seed. Stage stability renders the further seeds and stage criteria compares them; both read the
keys here, so that stability does not import the criteria (editing Eq. 2 re-renders no seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsi.artifacts import OUTPUTS, SEED_ROOT, seed_root
from rsi.config import PROBED_BLOCKS, check_distinct, check_probed_blocks, load_keys


def check_seeds(seeds: tuple[int, ...]) -> tuple[int, ...]:
    return check_distinct(seeds, "seed", empty="list at least one seed")


def check_seed_root(template: str) -> str:
    if "{seed}" not in template:
        raise ValueError("the template must contain '{seed}', e.g. outputs/stability/seed{seed}")
    try:
        template.format(seed=0)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"only the placeholder '{{seed}}' may appear ({error!r})") from None
    return template


def seed_roots(seeds: tuple[int, ...], template: str) -> dict[int, Path]:
    """The outputs root of every seed: ``outputs`` for the first (the main run, whose FZs every later
    stage uses), ``template`` (criteria.seed_root) for each further seed (made by stage stability)."""
    return {seed: OUTPUTS if i == 0 else seed_root(seed, template) for i, seed in enumerate(seeds)}


@dataclass(frozen=True)
class SeedRuns:
    """The keys of params.yaml ``criteria`` that stage stability reads (rsi.criteria.CriteriaParams
    declares the same keys with the same checks)."""

    blocks: tuple[str | float, ...] = field(default=PROBED_BLOCKS, metadata={"check": check_probed_blocks})
    seeds: tuple[int, ...] = field(
        default=(0,), metadata={"check": check_seeds, "help": "FZ seeds compared for stability"}
    )
    seed_root: str = field(
        default=SEED_ROOT,
        metadata={"check": check_seed_root, "help": "outputs root of each seed when seeds > 1"},
    )


def load_seed_runs(raw: dict[str, Any], *, source: str = "params.yaml") -> SeedRuns:
    """criteria.blocks, criteria.seeds and criteria.seed_root of a params mapping, checked."""
    return load_keys(raw, "criteria", SeedRuns, source=source)
