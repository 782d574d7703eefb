"""params.yaml ``ablate``: the settings of the mean-ablation stage, checked.

Its own module, below rsi.ablate, so the report (which prints these keys with their defaults) and the
params validation of every stage read them without importing the ablation's model code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rsi import paper
from rsi.artifacts.ablation import CHANNEL_SET_LABELS
from rsi.config import ParamsError, check_blocks, check_distinct, params_arch
from rsi.taps import DEFAULT_ARCH, block_key, parse_block

Rule = Literal["no_higher", "within", "lower"]
RULES: tuple[str, ...] = ("no_higher", "within", "lower")


@dataclass(frozen=True)
class ScreenParams:
    """One block's screening of random sets (compared at no scale with the passing set)."""

    rule: Rule = "within"
    tolerance: float = field(default=0.0, metadata={"min": 0.0, "help": "percentage points (within)"})


def _check_screening(value: Mapping[str, ScreenParams]) -> dict[str, ScreenParams]:
    result: dict[str, ScreenParams] = {}
    for key, rule in value.items():
        block = parse_block(key, params_arch())
        if rule.rule != "within" and rule.tolerance != 0.0:
            raise ValueError(f"{key}: rule {rule.rule!r} takes no tolerance (use rule: within for a margin)")
        result[block] = rule
    return result


def _default_screening() -> dict[str, ScreenParams]:
    return {"2.1": ScreenParams("no_higher", 0.0), "3.1": ScreenParams("within", 1.0)}


def _check_percents(value: tuple[int, ...]) -> tuple[int, ...]:
    return check_distinct(value, "percent", empty="give at least one scale percent")


CHANNEL_SETS: tuple[str, ...] = tuple(CHANNEL_SET_LABELS)  # run, published


def _check_channel_sets(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [v for v in value if v not in CHANNEL_SETS]
    if unknown:
        raise ValueError(f"unknown channel set {unknown[0]!r}: choose from {list(CHANNEL_SETS)}")
    return check_distinct(value, "channel set", empty="list at least one of run, published")


def check_published(blocks: Sequence[str]) -> None:
    """Every block has a published list (``rsi.paper.PUBLISHED_PASSING``), else a one-line ParamsError."""
    missing = [b for b in blocks if b not in paper.PUBLISHED_PASSING]
    if missing:
        have = ", ".join(block_key(b) for b in paper.PUBLISHED_PASSING)
        raise ParamsError(
            f"ablate.channel_sets lists published, but the authors published no channel list for "
            f"{', '.join(block_key(b) for b in missing)} (only for {have}): remove "
            f"{', '.join(block_key(b) for b in missing)} from ablate.blocks or published from ablate.channel_sets"
        )


@dataclass(frozen=True)
class AblateParams:
    """params.yaml ``ablate`` (the top-level ``seed`` and ``model`` sections are read too)."""

    blocks: tuple[str | float, ...] = field(default=("2.1", "3.1"), metadata={"check": check_blocks})
    crop_rule: Literal["authors_code", "paper_text"] = "authors_code"
    percents: tuple[int, ...] = field(
        default=(10, 20, 30, 40, 50), metadata={"min": 1, "max": 99, "check": _check_percents}
    )
    trials: int = field(default=10, metadata={"min": 2})
    screening: dict[str, ScreenParams] = field(
        default_factory=_default_screening, metadata={"check": _check_screening}
    )
    max_attempts: int = field(default=200, metadata={"min": 1})
    on_screening_failure: Literal["skip", "error"] = field(
        default="skip",
        metadata={
            "help": "a set whose screening finds too few random sets: skip it (the others are kept, the "
            "report says why) or stop the stage"
        },
    )
    screen_batch: int = field(default=10, metadata={"min": 1})
    batch_size: int = field(default=1024, metadata={"min": 1})
    channel_sets: tuple[str, ...] = field(
        default=CHANNEL_SETS,
        metadata={
            "check": _check_channel_sets,
            "help": "run: this run's passing channels; published: the authors' lists (2.1 and 3.1)",
        },
    )
    tf32: bool = field(
        default=False,
        metadata={
            "help": "allow TF32 convolutions on CUDA, as the authors' torch 2.0 did (matmuls stay float32)"
        },
    )

    def __post_init__(self) -> None:
        if "published" in self.channel_sets:
            if params_arch() != DEFAULT_ARCH:
                raise ParamsError(
                    f"ablate.channel_sets lists published, but the authors' lists are ResNet18's channels and "
                    f"model.arch is {params_arch()}: set ablate.channel_sets: [run]"
                )
            check_published([parse_block(b) for b in self.blocks])
        unruled = [block for block in self.blocks if block not in self.screening]
        if unruled:
            key = block_key(unruled[0])
            raise ParamsError(
                f"ablate.screening has no entry for {key}, which ablate.blocks lists: add e.g. "
                f"{key}: {{rule: within, tolerance: 1.0}} (the paper's 3.1 rule) or remove it from ablate.blocks"
            )
