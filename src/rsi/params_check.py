"""Checks across params sections, run with each section's own checks before a stage that DVC runs computes
anything (rsi.cli; a stage run by hand needs only its own sections to agree).

A combination the pipeline cannot satisfy (a probed block whose FZs ``fz.blocks`` never renders, a first stability
seed that is not the run's seed, an ablated block the criteria never probe) fails in seconds with one line
naming the keys and the fix, not after the stages before the one that needs it have run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rsi.artifacts import in_fz_source
from rsi.config import ParamsError
from rsi.taps import Tap, block_key, block_order


def _fz_sources(block: str) -> list[tuple[str, Tap]]:
    """The FZs stage activations measures for a probed block: X̂_In, X̂_Pre and X̂_Post."""
    return [("X̂_In", in_fz_source(block)), ("X̂_Pre", Tap(block, "pre")), ("X̂_Post", Tap(block, "post"))]


def check_ablated_measured(ablated: Sequence[str], measured: Sequence[str], source: str) -> None:
    """A ParamsError when an ablated block's mean activations (the values a mean ablation writes) are not
    among stage natural's blocks; stage ablate checks it too, for a run by hand."""
    unmeasured = [block for block in ablated if block not in measured]
    if unmeasured:
        raise ParamsError(
            f"{source}: ablate.blocks lists {', '.join(unmeasured)}, whose mean activations the natural stage "
            f"does not measure (natural.blocks: {', '.join(measured)}): add them to natural.blocks"
        )


def check_across(sections: Mapping[str, Any], source: str = "params.yaml") -> None:
    """A ParamsError naming the file, the keys and the fix for the first inconsistency between the loaded
    ``sections`` (name → what rsi.cli.SECTIONS loads: the seed, the sections' dataclasses)."""
    seed, fz, criteria = sections["seed"], sections["fz"], sections["criteria"]
    if criteria.seeds[0] != seed:
        raise ParamsError(
            f"{source}: criteria.seeds[0] = {criteria.seeds[0]} must be the main run's seed (seed: {seed}); "
            "list the main seed first"
        )
    for block in criteria.blocks:
        for role, tap in _fz_sources(block):
            settings = fz.blocks.get(block_key(tap.block))
            if settings is None or tap.kind not in settings.taps:
                raise ParamsError(
                    f"{source}: criteria.blocks lists {block}, whose {role} is the FZ of {tap}, which fz.blocks "
                    f"does not render: add {tap.kind} to fz.blocks.{block_key(tap.block)}.taps, or remove "
                    f"{block} from criteria.blocks"
                )
    if criteria.compare_pre_readings and fz.pre_reading == "lucent_reference":
        raise ParamsError(
            f"{source}: criteria.compare_pre_readings re-renders the Pre FZs as lucent read bn2 beside the exact "
            "ones, but fz.pre_reading is already lucent_reference: set fz.pre_reading: exact, or "
            "criteria.compare_pre_readings: false"
        )
    ablate, natural, figures = sections["ablate"], sections["natural"], sections["figures"]
    if "run" in ablate.channel_sets:
        unprobed = [block for block in ablate.blocks if block not in criteria.blocks]
        if unprobed:
            raise ParamsError(
                f"{source}: ablate.blocks lists {', '.join(unprobed)}, which criteria.blocks does not probe, so "
                "it has no passing channels to ablate (ablate.channel_sets has run): add them to "
                "criteria.blocks, or remove them from ablate.blocks"
            )
    check_ablated_measured(ablate.blocks, natural.blocks, source)
    drawn = [*(figures.blocks or criteria.blocks), *figures.channels]
    unprobed_figures = [block for block in drawn if block not in criteria.blocks]
    if unprobed_figures:
        raise ParamsError(
            f"{source}: figures draws {', '.join(unprobed_figures)} (figures.blocks / figures.channels), which "
            "criteria.blocks does not probe: add them to criteria.blocks, or remove them from figures"
        )
    needed = {*drawn, *(criteria.blocks if criteria.natural_images else ())}
    unmeasured_natural = sorted((b for b in needed if b not in natural.blocks), key=block_order)
    if unmeasured_natural:
        raise ParamsError(
            f"{source}: natural.blocks lacks {', '.join(unmeasured_natural)}, whose top natural images the figures "
            "(or criteria.natural_images) need: add them to natural.blocks"
        )
