"""`rsi criteria`: the paper's scale-invariance test (section 3, Eq. 1 and Eq. 2) for every channel.

For block b and channel c, with X̂ the center-neuron FZs and S the scale transform (center-crop to half,
bilinear resize back), all activations center-neuron responses:

* Eq. 1: ReLU(Pre_c(X̂_In_c)) < Pre_c(S(X̂_In_c))  (the Pre channel grows, in the positive domain, when the
  In channel's preferred image is enlarged);
* Eq. 2: 2/3 < Post_c(X̂_In_c) / Post_c(X̂_Pre_c) < 3/2  (Post responds about equally to both summands' FZs).

A channel passes when both hold. ``criteria.eq1_reading`` picks how Eq. 1 is read: ``authors_code``
(default; what produced the paper's counts) divides the Eq. 1 difference by Pre_c(X̂_Pre_c) before the sign
test, as the authors' stream_inspect.py did; ``paper_text`` is the inequality above. They differ only where
Pre_c(X̂_Pre_c) <= 0 (see :func:`eq1_authors_code`). The science is in the pure functions :func:`eq1_scale_gain`,
:func:`eq2_post_ratio`, :func:`mirror_shrink_gain`, :func:`passing_channels` and :func:`jaccard`; the stage
reads ``outputs/activations/<layerL_K>.npz`` (see :mod:`rsi.artifacts`) and writes one CSV per block,
``outputs/criteria/passing.json``, ``outputs/criteria/stability.json``, ``outputs/criteria/settings.json``
and ``metrics/criteria.json`` (numbers only, DVC-safe keys, for ``dvc metrics diff``).

Criteria stability: FZs are stochastic ("results may vary", section 3). With ``criteria.seeds`` listing more
than one seed, the first is the main run (``outputs/``, the top-level ``seed``), and the activations of each
further seed k are read from ``criteria.seed_root`` with ``{seed}`` = k (default
``outputs/stability/seed{seed}``, made by the ``stability`` stage, ``rsi stability --seed k``); the main
run's lists and tables are the ones the later stages use, and the metrics gain a ``stability`` section
(passing count per seed and Jaccard overlap of the passing sets). With one seed (the default, as the
paper) everything lives under ``outputs``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from rsi import artifacts
from rsi.artifacts import FZ_IMAGES, OUTPUTS, ArtifactError
from rsi.artifacts.activations import Activations, read_activations
from rsi.artifacts.criteria import (
    METRICS_FILE,
    CriteriaMetrics,
    CriteriaTable,
    PassingCount,
    SeedPassing,
    passing_counts_file,
    stability_file,
    write_criteria_metrics,
    write_criteria_table,
    write_passing_counts,
    write_seed_passing,
)
from rsi.artifacts.passing import Passing, write_passing
from rsi.artifacts.rerun import Rerun, read_rerun, rerun_file
from rsi.config import (
    PROBED_BLOCKS,
    ParamsError,
    as_dict,
    check_probed_blocks,
    load_section,
    read_params,
)
from rsi.runtime import full_float32, write_json
from rsi.seeds import check_seed_root, check_seeds, seed_roots
from rsi.taps import TAP_KINDS, parse_block

# ----------------------------------------------------------------------------------------------- params


def parse_fraction(value: Any) -> float:
    """A positive number from a float, an int, or a string like ``"2/3"`` or ``"0.5"``."""
    if isinstance(value, bool):
        raise ValueError("expected a number or a fraction string like '2/3'")
    try:
        number = float(Fraction(str(value).strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError("expected a number or a fraction string like '2/3'") from error
    if not number > 0:
        raise ValueError("expected a positive bound (Eq. 2 compares a ratio of activations)")
    return number


@dataclass(frozen=True)
class CriteriaParams:
    """params.yaml ``criteria``."""

    blocks: tuple[str | float, ...] = field(
        default=PROBED_BLOCKS,
        metadata={"check": check_probed_blocks, "help": "blocks probed (paper: 1.1 to 4.1); 2.1 or layer2_1"},
    )
    eq2_low: float | str = field(
        default=2 / 3, metadata={"check": parse_fraction, "help": "Eq. 2 lower bound (paper: 2/3)"}
    )
    eq2_high: float | str = field(
        default=3 / 2, metadata={"check": parse_fraction, "help": "Eq. 2 upper bound (paper: 3/2)"}
    )
    strict: bool = field(default=True, metadata={"help": "strict inequalities, as Eq. 1 and Eq. 2"})
    mirror_criterion: bool = field(
        default=False, metadata={"help": "also require the authors' unreported mirror test"}
    )
    seeds: tuple[int, ...] = field(
        default=(0,), metadata={"check": check_seeds, "help": "FZ seeds compared for stability"}
    )
    compare_pre_readings: bool = field(
        default=False,
        metadata={
            "help": "also count passing channels with Pre FZs rendered as lucent read bn2 (stage pre-reading); "
            "params.yaml, the paper run, sets it: that count is the one comparable with the paper's"
        },
    )
    natural_images: bool = field(
        default=False,
        metadata={
            "help": "also judge every channel on its top-k natural images (ours, stage natural-criteria)"
        },
    )
    eq1_reading: Literal["authors_code", "paper_text"] = field(
        default="authors_code",
        metadata={
            "help": "authors_code: Eq. 1's difference divided by Pre_c(X̂_Pre_c) before the sign test, as "
            "the authors' stream_inspect.py; paper_text: the inequality as printed"
        },
    )
    rerun_fz: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "re-render a channel whose two Post responses are both <= 0 with seed + 1 … + this, as "
            "the authors re-rendered such channels (stage rerun-fz); 0 = off",
        },
    )
    seed_root: str = field(
        default=artifacts.SEED_ROOT,
        metadata={
            "check": check_seed_root,
            "help": "outputs root of each further seed, relative to the working directory",
        },
    )

    def __post_init__(self) -> None:
        low, high = parse_fraction(self.eq2_low), parse_fraction(self.eq2_high)
        object.__setattr__(self, "eq2_low", low)
        object.__setattr__(self, "eq2_high", high)
        object.__setattr__(self, "blocks", check_probed_blocks(tuple(self.blocks)))
        if not low < high:
            raise ParamsError(f"criteria.eq2_low = {low:g} must be below criteria.eq2_high = {high:g}")

    def roots(self, outputs: Path = OUTPUTS) -> dict[int, Path]:
        """The outputs root of every seed (rsi.seeds.seed_roots), the main seed's being ``outputs``."""
        return {**seed_roots(self.seeds, self.seed_root), self.seeds[0]: Path(outputs)}


# ------------------------------------------------------------------------------------ the paper's tests


def _values(x: Any) -> np.ndarray:
    """Float64 values of an array, a list, a scalar or a (CPU or device) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def eq1_scale_gain(pre_of_in_fz: Any, pre_of_scaled_in_fz: Any, strict: bool = True) -> np.ndarray:
    """Eq. 1: ReLU(Pre_c(X̂_In_c)) < Pre_c(S(X̂_In_c)), elementwise; a boolean array.

    ``strict=False`` tests ReLU(Pre_c(X̂_In_c)) <= Pre_c(S(X̂_In_c)) instead.

    This is ``criteria.eq1_reading: paper_text``. The difference mean(clip(Pre(S(X̂_In)), 0)) -
    mean(clip(Pre(X̂_In), 0)) > 0 of the authors' code, over one image, is the same strict test: if
    clip(b, 0) > clip(a, 0) >= 0 then b = clip(b, 0) > ReLU(a), and conversely. Their code then divides
    that difference by Pre_c(X̂_Pre_c): :func:`eq1_authors_code`.
    """
    base = np.maximum(_values(pre_of_in_fz), 0.0)
    scaled = _values(pre_of_scaled_in_fz)
    return scaled > base if strict else scaled >= base


def eq1_authors_code(
    pre_of_in_fz: Any, pre_of_scaled_in_fz: Any, pre_of_pre_fz: Any, strict: bool = True
) -> np.ndarray:
    """Eq. 1 as the authors' code computed it (``criteria.eq1_reading: authors_code``); a boolean array.

    stream_inspect.py @ 6b74452, line 428 (``run_mode == 'invariance'``):
        ``scale_mid_measures.append(mid_act_delta / acts['mid_mid_acts'])``
    with ``mid_act_delta`` = mean(clip(Pre_c(S(X̂_In_c)), 0)) - mean(clip(Pre_c(X̂_In_c), 0)) (their
    ``invariance_delta``, line 171) and ``acts['mid_mid_acts']`` = Pre_c(X̂_Pre_c) (``stream_inspect``,
    line 236: the Pre channel's center neuron to its own FZ), both numpy float32 scalars; a channel
    passes Eq. 1 where that quotient is > 0 (their ``scale_mid_copy <= 0`` → -1e10, then ``> 0``). So:

    * Pre_c(X̂_Pre_c) > 0: the text's test (:func:`eq1_scale_gain`).
    * Pre_c(X̂_Pre_c) < 0: the test inverts: a channel passes where the Pre response *shrinks* with scale.
    * Pre_c(X̂_Pre_c) = 0: numpy float32 division gives +inf (passes), -inf (fails) or, for a zero
      difference, nan, which is neither <= 0 nor > 0: it fails here. (Their ``torch.topk`` ranks nan
      first, so such a channel could take the place of the weakest passing one in their list; it needs
      Pre_c(X̂_Pre_c) exactly 0 and both Pre responses <= 0, and is counted as failing here.)

    Computed in float32, as theirs, so an underflowing quotient gives the same verdict. ``strict=False``
    tests quotient >= 0.
    """
    base = np.maximum(_values(pre_of_in_fz).astype(np.float32), np.float32(0))
    scaled = np.maximum(_values(pre_of_scaled_in_fz).astype(np.float32), np.float32(0))
    denominator = _values(pre_of_pre_fz).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        quotient = (scaled - base) / denominator
        return quotient > 0 if strict else quotient >= 0


EQ1_READINGS: tuple[str, ...] = ("authors_code", "paper_text")


class Eq2Result(NamedTuple):
    """Eq. 2 per channel: ``passes`` (bool), ``ratio`` (Post_c(X̂_In_c) / Post_c(X̂_Pre_c), NaN where the
    denominator is <= 0) and ``nonpositive`` (bool: numerator or denominator <= 0, a failure)."""

    passes: np.ndarray
    ratio: np.ndarray
    nonpositive: np.ndarray


def eq2_post_ratio(
    post_of_in_fz: Any,
    post_of_pre_fz: Any,
    low: float = 2 / 3,
    high: float = 3 / 2,
    strict: bool = True,
) -> Eq2Result:
    """Eq. 2: low < Post_c(X̂_In_c) / Post_c(X̂_Pre_c) < high (``strict=False``: <= at both ends).

    A numerator or denominator <= 0 fails and is flagged in ``nonpositive``, as in the authors' code
    (a Post response <= 0 set their mix ratio to 0 or 10, outside the band). Post is post-ReLU here; the
    authors measured the pre-ReLU sum, which gives the same verdicts: a value <= 0 fails either way.
    The ratio is computed in float64, so exactly 2/3 or 3/2 sits on the boundary (the authors compared a
    float32 ratio with 1/1.5 and 1.5, so a verdict can differ within about one float32 step of an edge).
    """
    numerator, denominator = _values(post_of_in_fz), _values(post_of_pre_fz)
    low, high = parse_fraction(low), parse_fraction(high)
    nonpositive = (numerator <= 0) | (denominator <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)
    inside = (low < ratio) & (ratio < high) if strict else (low <= ratio) & (ratio <= high)
    return Eq2Result(passes=inside & ~nonpositive, ratio=ratio, nonpositive=nonpositive)


def mirror_shrink_gain(in_of_pre_fz: Any, in_of_shrunk_pre_fz: Any, strict: bool = True) -> np.ndarray:
    """The authors' unreported mirror test: ReLU(In_c(X̂_Pre_c)) < In_c(shrink(X̂_Pre_c)).

    shrink = resize to half and reflect-pad back (stream_inspect.py: Resize(112), Pad(56, 'reflect')):
    the In channel should prefer the Pre channel's feature at a smaller scale. Their code computes the
    difference mean(clip(In(shrink(X̂_Pre)), 0)) - mean(clip(In(X̂_Pre)), 0)), the same strict test as > 0
    (it also divides it by In_c(X̂_In_c), line 429, a quotient their selection never uses); the paper does
    not report it, so it is off by default (``criteria.mirror_criterion``).
    """
    return eq1_scale_gain(in_of_pre_fz, in_of_shrunk_pre_fz, strict=strict)


def authors_rerun_case(post_of_in_fz: Any, post_of_pre_fz: Any) -> np.ndarray:
    """Channels where both Post_c(X̂_In_c) and Post_c(X̂_Pre_c) are <= 0: where the authors' loop stopped
    (stream_inspect.py l. 424, ``assert mid_out_acts >= 0 or in_out_acts >= 0``, "Rerun FZ on neuron n")
    and they re-rendered the channel's FZs before counting; a boolean array. Such a channel fails Eq. 2
    either way. Post is post-ReLU here, so <= 0 is 0; their values were the pre-ReLU sums, tested < 0,
    which differs only where a pre-ReLU sum is exactly 0."""
    return (_values(post_of_in_fz) <= 0) & (_values(post_of_pre_fz) <= 0)


def rerun_hits(acts: np.ndarray, channels: Sequence[int] | np.ndarray) -> np.ndarray:
    """The ``channels`` (int64) of a block's ``acts`` (len(FZ_IMAGES), 3, C), laid out as stage activations
    stores them, where :func:`authors_rerun_case` holds."""
    hit = authors_rerun_case(_act(acts, "in_fz", "post"), _act(acts, "pre_fz", "post"))
    return np.asarray(channels, dtype=np.int64)[hit]


def with_reruns(
    acts: np.ndarray, channels: np.ndarray, rerun_channels: np.ndarray, rerun_acts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``acts`` (len(FZ_IMAGES), 3, C) of ``channels`` with the columns of ``rerun_channels`` replaced by
    ``rerun_acts`` (len(FZ_IMAGES), 3, R), the re-rendered channels' (stage rerun-fz); and the mask of
    replaced channels. A re-rendered channel the block does not hold is an error (another run's file)."""
    position = {int(c): i for i, c in enumerate(channels)}
    unknown = [int(c) for c in rerun_channels if int(c) not in position]
    if unknown:
        raise ValueError(f"re-rendered channels {unknown} are not among the block's {len(channels)} channels")
    replaced = np.zeros(len(channels), dtype=bool)
    out = np.array(acts, copy=True)
    for j, channel in enumerate(rerun_channels):
        out[:, :, position[int(channel)]] = rerun_acts[:, :, j]
        replaced[position[int(channel)]] = True
    return out, replaced


def passing_channels(channels: Sequence[int] | np.ndarray, *masks: Any) -> list[int]:
    """The channels where every mask holds, in the order given."""
    channels = np.asarray(channels)
    passes = np.ones(channels.shape, dtype=bool)
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != channels.shape:
            raise ValueError(f"mask of shape {mask.shape} does not match {channels.shape[0]} channels")
        passes &= mask
    return [int(c) for c in channels[passes]]


def jaccard(a: Sequence[int] | set[int], b: Sequence[int] | set[int]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets agree perfectly (1.0)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def stability(passing_by_seed: Mapping[int, Mapping[str, Sequence[int]]]) -> dict[str, dict[str, float]]:
    """Per block (``"2.1"`` keys): passing count per seed, pairwise Jaccard of the passing sets, their
    mean and minimum, and how many channels pass under every seed. Numbers only."""
    seeds = list(passing_by_seed)
    blocks: list[str] = []
    for lists in passing_by_seed.values():
        blocks += [b for b in lists if b not in blocks]
    out: dict[str, dict[str, float]] = {}
    for block in blocks:
        sets = {seed: set(passing_by_seed[seed].get(block, ())) for seed in seeds}
        entry: dict[str, float] = {f"passing_seed{seed}": len(sets[seed]) for seed in seeds}
        pairs = [(s, t, jaccard(sets[s], sets[t])) for s, t in itertools.combinations(seeds, 2)]
        for s, t, value in pairs:
            entry[f"jaccard_seed{s}_seed{t}"] = round(value, 6)
        if pairs:
            values = [value for _, _, value in pairs]
            entry["jaccard_mean"] = round(float(np.mean(values)), 6)
            entry["jaccard_min"] = round(min(values), 6)
        entry["passing_all_seeds"] = len(set.intersection(*sets.values())) if sets else 0
        out[parse_block(block)] = entry
    return out


# ----------------------------------------------------------------------------------------- per block


def _act(acts: np.ndarray, image: str, tap: str) -> np.ndarray:
    return acts[FZ_IMAGES.index(image), TAP_KINDS.index(tap)]


@dataclass(frozen=True)
class BlockCriteria:
    """Every channel's activations and verdicts for one block."""

    block: str
    channels: np.ndarray
    columns: dict[str, np.ndarray]  # activations, in CSV order
    ratio: np.ndarray
    eq1: np.ndarray
    eq2: np.ndarray
    eq2_nonpositive: np.ndarray
    mirror: np.ndarray
    passes: np.ndarray
    eq1_reading: str = "paper_text"
    eq1_other: np.ndarray | None = None  # Eq. 1 under the other reading (None: the same)
    passes_other: np.ndarray | None = None  # the whole verdict under the other Eq. 1 reading
    rerendered: np.ndarray | None = None  # channels whose activations came from stage rerun-fz (None: none)

    @property
    def passing(self) -> list[int]:
        return [int(c) for c in self.channels[self.passes]]

    def summary(self) -> dict[str, float]:
        """The metrics of the block: numbers only."""
        channels = int(self.channels.size)
        passing = int(self.passes.sum())
        replaced = 0 if self.rerendered is None else int(self.rerendered.sum())
        return {
            "channels": channels,
            "passing": passing,
            "percent": round(100.0 * passing / channels, 4) if channels else 0.0,
            "eq1_pass": int(self.eq1.sum()),
            "eq2_pass": int(self.eq2.sum()),
            "eq2_nonpositive": int(self.eq2_nonpositive.sum()),
            "mirror_pass": int(self.mirror.sum()),
            # hits of the first rendering: those still hit, and those a re-render replaced (each was a hit)
            "authors_rerun": int(
                authors_rerun_case(self.columns["post_of_in_fz"], self.columns["post_of_pre_fz"]).sum()
            )
            + replaced,
            "rerun_replaced": replaced,
            # Pre_c(X̂_Pre_c) <= 0: where the two readings of Eq. 1 can differ (eq1_authors_code)
            "pre_of_pre_fz_nonpositive": int((self.columns["pre_of_pre_fz"] <= 0).sum()),
            "eq1_readings_differ": int((self.eq1 != self._other(self.eq1_other, self.eq1)).sum()),
            "passing_readings_differ": int(
                (self.passes != self._other(self.passes_other, self.passes)).sum()
            ),
        }

    @staticmethod
    def _other(other: np.ndarray | None, same: np.ndarray) -> np.ndarray:
        return same if other is None else other


def evaluate_block(
    block: str,
    acts: np.ndarray,
    channels: Sequence[int] | np.ndarray,
    *,
    low: float = 2 / 3,
    high: float = 3 / 2,
    strict: bool = True,
    mirror_criterion: bool = False,
    eq1_reading: str = "authors_code",
) -> BlockCriteria:
    """Eq. 1 (read as ``eq1_reading``; the other reading is kept for comparison), Eq. 2 (and the
    optional mirror test) on one block's ``acts`` (len(FZ_IMAGES), 3, C)."""
    if eq1_reading not in EQ1_READINGS:
        raise ValueError(f"eq1_reading {eq1_reading!r}: choose one of {EQ1_READINGS}")
    acts = np.asarray(acts)
    channels = np.asarray(channels, dtype=np.int64)
    expected = (len(FZ_IMAGES), len(TAP_KINDS), channels.size)
    if acts.shape != expected:
        raise ValueError(f"block {block}: activations of shape {acts.shape}, expected {expected}")
    columns = {
        "pre_of_in_fz": _act(acts, "in_fz", "pre"),
        "pre_of_scaled_in_fz": _act(acts, "scaled_in_fz", "pre"),
        "post_of_in_fz": _act(acts, "in_fz", "post"),
        "post_of_pre_fz": _act(acts, "pre_fz", "post"),
        "pre_of_pre_fz": _act(acts, "pre_fz", "pre"),
        "in_of_pre_fz": _act(acts, "pre_fz", "in"),
        "in_of_shrunk_pre_fz": _act(acts, "shrunk_pre_fz", "in"),
    }
    readings = {
        "paper_text": eq1_scale_gain(columns["pre_of_in_fz"], columns["pre_of_scaled_in_fz"], strict=strict),
        "authors_code": eq1_authors_code(
            columns["pre_of_in_fz"], columns["pre_of_scaled_in_fz"], columns["pre_of_pre_fz"], strict=strict
        ),
    }
    eq1 = readings[eq1_reading]
    eq1_other = readings["paper_text" if eq1_reading == "authors_code" else "authors_code"]
    eq2 = eq2_post_ratio(columns["post_of_in_fz"], columns["post_of_pre_fz"], low, high, strict=strict)
    mirror = mirror_shrink_gain(columns["in_of_pre_fz"], columns["in_of_shrunk_pre_fz"], strict=strict)
    rest = eq2.passes & (mirror if mirror_criterion else True)
    passes = eq1 & rest
    return BlockCriteria(
        block=block,
        channels=channels,
        columns=columns,
        ratio=eq2.ratio,
        eq1=eq1,
        eq2=eq2.passes,
        eq2_nonpositive=eq2.nonpositive,
        mirror=mirror,
        passes=np.asarray(passes, dtype=bool),
        eq1_reading=eq1_reading,
        eq1_other=eq1_other,
        passes_other=np.asarray(eq1_other & rest, dtype=bool),
    )


def criteria_metrics(
    results: Sequence[BlockCriteria], stability: dict[str, dict[str, float]] | None = None
) -> CriteriaMetrics:
    """``metrics/criteria.json``: per block, their ``total`` and (several seeds) the ``stability``."""
    blocks = {result.block: result.summary() for result in results}
    total: dict[str, float] = {}
    for summary in blocks.values():
        for key, value in summary.items():
            if key != "percent":
                total[key] = total.get(key, 0) + value
    if total:
        total["percent"] = (
            round(100.0 * total["passing"] / total["channels"], 4) if total["channels"] else 0.0
        )
    return CriteriaMetrics(blocks, total, stability)


# ------------------------------------------------------------------------------------------------ I/O


def criteria_table(result: BlockCriteria) -> CriteriaTable:
    """One row per channel: the activations, the Eq. 2 ratio and the verdicts (also under the other
    reading of Eq. 1)."""
    header = ["channel", *result.columns, "eq2_ratio", "eq1", "eq2", "eq2_nonpositive", "mirror", "passes"]
    other = "paper_text" if result.eq1_reading == "authors_code" else "authors_code"
    header += [f"eq1_{other}", f"passes_{other}"]  # the verdicts under the other reading of Eq. 1
    eq1_other = result._other(result.eq1_other, result.eq1)
    passes_other = result._other(result.passes_other, result.passes)
    rows = []
    for i, channel in enumerate(result.channels):
        values = [f"{float(column[i]):.9g}" for column in result.columns.values()]
        flags = [
            result.eq1[i],
            result.eq2[i],
            result.eq2_nonpositive[i],
            result.mirror[i],
            result.passes[i],
            eq1_other[i],
            passes_other[i],
        ]
        rows.append(
            [str(int(channel)), *values, repr(float(result.ratio[i])), *(str(bool(f)) for f in flags)]
        )
    return CriteriaTable(header, rows)


def passing_counts(results: Sequence[BlockCriteria]) -> list[PassingCount]:
    """The bars of the DVC plot of passing channels per block, drawn beside the paper's counts
    (``paper/passing_counts.csv``) by dvc.yaml's top-level ``plots``."""
    summaries = [(result.block, result.summary()) for result in results]
    return [PassingCount(b, s["channels"], s["passing"], s["percent"]) for b, s in summaries]


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = "outputs root of the main seed: reads activations, writes criteria (default outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Eq. 1 and Eq. 2 of the paper per channel of each block in criteria.blocks, from "
        "<outputs>/activations; writes <outputs>/criteria/ and metrics/criteria.json."
    )


def evaluate_stored(
    block: str, data: Activations, params: CriteriaParams, rerun: Rerun | None = None
) -> BlockCriteria:
    """The criteria of one block's stored activations (``rsi.artifacts.activations``) under ``params``,
    with the channels stage rerun-fz re-rendered (``rerun``) in place of their first rendering."""
    acts, rerendered = data.acts, None
    if rerun is not None:
        acts, rerendered = with_reruns(data.acts, data.channels, rerun.channels, rerun.acts)
    result = evaluate_block(
        block,
        acts,
        data.channels,
        low=params.eq2_low,
        high=params.eq2_high,
        strict=params.strict,
        mirror_criterion=params.mirror_criterion,
        eq1_reading=params.eq1_reading,
    )
    return replace(result, rerendered=rerendered)


def checked_rerun(path: Path, data: Activations, params: CriteriaParams) -> Rerun:
    """Stage rerun-fz's record at ``path`` for the block of ``data``, checked to be of this run: made with
    this criteria.rerun_fz, for these activations' hits, replacing only channels they hold."""
    record = read_rerun(path)
    hits = rerun_hits(data.acts, data.channels)
    stale = None
    if record.tries != params.rerun_fz:
        stale = f"was made with criteria.rerun_fz = {record.tries}, not {params.rerun_fz}"
    elif set(record.hits.tolist()) != set(hits.tolist()) or not set(record.channels.tolist()) <= set(
        hits.tolist()
    ):
        stale = f"lists the hits {record.hits.tolist()}, the activations have {hits.tolist()}"
    if stale:
        raise ArtifactError(
            f"{path} {stale}: it belongs to another run; run `rsi rerun-fz` (`dvc repro` does)"
        )
    return record


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "criteria", CriteriaParams, source=args.params)
    numerics = full_float32()  # numpy only here; recorded like every result stage
    outputs = Path(args.outputs)
    roots = params.roots(outputs)
    primary = params.seeds[0]
    results: dict[int, list[BlockCriteria]] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for seed, root in roots.items():
        results[seed] = []
        for block in params.blocks:
            # the main seed's activations are stage activations', a further seed's stage stability's
            stage = "activations" if seed == primary else "stability"
            data = read_activations(artifacts.activations_file(block, root), stage=stage)
            # the authors' re-render (stage rerun-fz; nothing replaced while criteria.rerun_fz is 0) is of
            # the main seed's channels only
            rerun = checked_rerun(rerun_file(block, outputs), data, params) if seed == primary else None
            results[seed].append(evaluate_stored(block, data, params, rerun))
            provenance.setdefault(f"seed{seed}", {})[block] = {
                "root": str(root),
                "weights": data.weights,
                "extractor": data.extractor,
                "scale_fraction": data.scale_fraction,
            }
    for result in results[primary]:
        write_criteria_table(criteria_table(result), artifacts.criteria_table(result.block, outputs))
    passing_by_seed = {seed: {r.block: r.passing for r in blocks} for seed, blocks in results.items()}
    write_passing(Passing(passing_by_seed[primary]), artifacts.passing_file(outputs))
    write_passing_counts(passing_counts(results[primary]), passing_counts_file(outputs))
    seeds_stability = stability(passing_by_seed) if len(roots) > 1 else None
    write_criteria_metrics(criteria_metrics(results[primary], seeds_stability), METRICS_FILE)
    write_seed_passing(SeedPassing(list(params.seeds), passing_by_seed), stability_file(outputs))
    write_json(
        artifacts.passing_file(outputs).parent / "settings.json",
        {
            "criteria": as_dict(params),
            "primary_seed": primary,
            "activations": provenance,
            "numerics": numerics,
        },
    )
    for result in results[primary]:
        summary = result.summary()
        print(
            f"block {result.block}: {summary['passing']}/{summary['channels']} channels pass "
            f"({summary['percent']:.1f} %; Eq. 1 {summary['eq1_pass']}, Eq. 2 {summary['eq2_pass']}, "
            f"Post <= 0 {summary['eq2_nonpositive']}; Eq. 1 read as {params.eq1_reading}, "
            f"under the other reading {summary['passing_readings_differ']} passing and "
            f"{summary['eq1_readings_differ']} Eq. 1 verdicts differ; {summary['authors_rerun']} channels with both "
            f"Post <= 0, {summary['rerun_replaced']} re-rendered)"
        )
    print(f"wrote {METRICS_FILE} and {artifacts.passing_file(outputs)}")
