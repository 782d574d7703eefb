"""The outputs of ``rsi criteria`` besides ``passing.json`` (:mod:`rsi.artifacts.passing`): the per-block
tables ``outputs/criteria/<layerL_K>.csv``, the metrics ``metrics/criteria.json``, the passing lists per
FZ seed ``outputs/criteria/stability.json`` and the DVC plot ``outputs/criteria/passing_counts.csv``.

``rsi pre-reading`` writes its metrics (``metrics/criteria_lucent_reference.json``) in the format of
``metrics/criteria.json``, with the TF32 flags beside the blocks, and ``{}`` when it is off.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsi.artifacts import (
    METRICS,
    NUMERICS,
    OUTPUTS,
    ArtifactError,
    block_of_key,
    load_json,
    require_file,
    require_keys,
)
from rsi.runtime import atomic_path, write_json
from rsi.taps import block_key

METRICS_FILE = METRICS / "criteria.json"
# stage pre-reading's counts (the authors' reading of Pre), in this format; ``{}`` when it is off
REFERENCE_METRICS = METRICS / "criteria_lucent_reference.json"
STAGE = "criteria"

# the columns of a criteria table the verdicts need (the writer adds the activations and the verdicts
# under the other reading of Eq. 1, eq1_<reading> and passes_<reading>)
TABLE_COLUMNS: tuple[str, ...] = ("channel", "eq2_ratio", "eq1", "eq2", "eq2_nonpositive", "mirror", "passes")
# the counts of a block's verdicts, FZ (here) and natural (rsi.artifacts.natural_criteria)
COUNT_KEYS: tuple[str, ...] = ("channels", "passing", "percent", "eq1_pass", "eq2_pass", "eq2_nonpositive")
# the counts of one block in metrics/criteria.json (rsi.criteria.BlockCriteria.summary)
SUMMARY_KEYS: tuple[str, ...] = (
    *COUNT_KEYS,
    "mirror_pass",
    "authors_rerun",
    "rerun_replaced",
    "pre_of_pre_fz_nonpositive",
    "eq1_readings_differ",
    "passing_readings_differ",
)


def stability_file(root: Path = OUTPUTS) -> Path:
    return root / "criteria" / "stability.json"


def passing_counts_file(root: Path = OUTPUTS) -> Path:
    return root / "criteria" / "passing_counts.csv"


# ------------------------------------------------------------------------------------------ the tables


@dataclass(frozen=True)
class CriteriaTable:
    """One block's table: the column names in order and one row of text cells per channel."""

    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        position = self.header.index(name)
        return [row[position] for row in self.rows]

    @property
    def channels(self) -> list[int]:
        return [int(cell) for cell in self.column("channel")]

    @property
    def passing(self) -> list[int]:
        return [c for c, passes in zip(self.channels, self.column("passes"), strict=True) if passes == "True"]


def write_criteria_table(table: CriteriaTable, path: Path) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.header)
        writer.writerows(table.rows)


def read_criteria_table(path: Path) -> CriteriaTable:
    with open(require_file(path, STAGE), newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0] if rows else []
    require_keys(path, header, TABLE_COLUMNS, STAGE)
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ArtifactError(f"{path}: line {number} has {len(row)} cells, the header {len(header)}")
    return CriteriaTable(header, rows[1:])


# ----------------------------------------------------------------------------------------- the metrics


@dataclass(frozen=True)
class CriteriaMetrics:
    """``metrics/criteria.json``: per block ``"2.1"`` the counts of :data:`SUMMARY_KEYS`, their ``total``,
    with several FZ seeds the ``stability`` per block, and (``rsi pre-reading`` only) the TF32 flags."""

    blocks: dict[str, dict[str, float]]
    total: dict[str, float]
    stability: dict[str, dict[str, float]] | None = None
    numerics: dict[str, int] | None = None


def write_criteria_metrics(metrics: CriteriaMetrics, path: Path = METRICS_FILE) -> None:
    """The metrics file; a record with nothing in it (stage pre-reading switched off) is written ``{}``."""
    if metrics == CriteriaMetrics({}, {}):
        write_json(path, {})
        return
    out: dict[str, Any] = {block_key(block): entry for block, entry in metrics.blocks.items()}
    out["total"] = metrics.total
    if metrics.stability is not None:
        out["stability"] = {block_key(block): entry for block, entry in metrics.stability.items()}
    out.update(metrics.numerics or {})
    write_json(path, out)


def read_criteria_metrics(path: Path = METRICS_FILE, stage: str = STAGE) -> CriteriaMetrics:
    """The metrics ``rsi <stage>`` wrote (``criteria``, or ``pre-reading``, whose ``{}`` means it was off
    and reads as no blocks)."""
    data = load_json(path, stage)
    if data == {} and stage == "pre-reading":
        return CriteriaMetrics({}, {})
    require_keys(path, data, ["total"], stage)
    blocks: dict[str, dict[str, float]] = {}
    for key, entry in data.items():
        if key not in ("total", "stability", *NUMERICS):
            blocks[block_of_key(path, key, stage)] = entry
            require_keys(path, entry, SUMMARY_KEYS, stage)
    stability = None
    if "stability" in data:
        stability = {block_of_key(path, key, stage): entry for key, entry in data["stability"].items()}
    numerics = {key: data[key] for key in NUMERICS if key in data} or None
    return CriteriaMetrics(blocks, data["total"], stability, numerics)


# ---------------------------------------------------------------------------- stability and the plot


@dataclass(frozen=True)
class SeedPassing:
    """``outputs/criteria/stability.json``: the FZ seeds and, per seed, the passing channels per block."""

    seeds: list[int]
    passing: dict[int, dict[str, list[int]]]


def write_seed_passing(record: SeedPassing, path: Path) -> None:
    write_json(path, {"seeds": record.seeds, "passing": {f"seed{s}": p for s, p in record.passing.items()}})


def read_seed_passing(path: Path) -> SeedPassing:
    data = load_json(path, STAGE)
    require_keys(path, data, ["seeds", "passing"], STAGE)
    require_keys(path, data["passing"], [f"seed{seed}" for seed in data["seeds"]], STAGE)
    return SeedPassing(list(data["seeds"]), {seed: data["passing"][f"seed{seed}"] for seed in data["seeds"]})


@dataclass(frozen=True)
class PassingCount:
    """One bar of the DVC plot ``passing_counts``: a block's probed and passing channels."""

    block: str
    channels: int
    passing: int
    percent: float


def write_passing_counts(counts: list[PassingCount], path: Path) -> None:
    """The plot's table (``block``, ``channels``, ``passing``, ``percent``), read by DVC only."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["block", "channels", "passing", "percent"])
        writer.writerows([c.block, c.channels, c.passing, c.percent] for c in counts)
