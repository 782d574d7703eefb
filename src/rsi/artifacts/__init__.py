"""The file contract between stages: where every stage output lives, its record, its one writer and its
one reader, and the error every reader raises.

Each output's record, writer and reader live in one submodule (``rsi.artifacts.<output>``), so a stage's DVC
deps name only the contracts it reads or writes. Readers check every key their writer always writes and fail
with one line naming the file, the stage that writes it and what is missing (:class:`ArtifactError`); they
never guess. Paths are relative to the repository root (the DVC working directory) unless a root is given;
every stage takes that root as ``--outputs``.

| output (under outputs/ unless said) | written by | submodule: record · writer · reader | read by |
| --- | --- | --- | --- |
| ``data_listing.json`` (digest of the images and labels to decode) | data-listing | data_listing: DataListing · write_data_listing · read_data_listing | prepare-data |
| ``eval/`` images, labels, resized, index.json | prepare-data | eval: EvalCache · write_eval · read_eval (eval_set.load_eval) | natural, natural-criteria, ablate, figures, report |
| ``metrics/data.json`` (image counts) | prepare-data | eval: DataMetrics · write_data_metrics | DVC metrics (no stage) |
| ``fz/<layerL_K>/<tap>.npz``, ``settings.json`` | fz | fz: FZFile, FZSettings · write_fz, write_fz_settings · read_fz, read_fz_settings | activations, pre-reading, figures, report |
| ``activations/<layerL_K>.npz`` | activations | activations: Activations · write_activations · read_activations | criteria, pre-reading |
| ``stability/seed<K>/`` (fz/, activations/ of seed K) | stability | as fz and activations | criteria, pre-reading (In, Post FZs) |
| ``criteria/<layerL_K>.csv`` | criteria | criteria: CriteriaTable · write_criteria_table · read_criteria_table | natural-criteria |
| ``criteria/passing.json`` | criteria | passing: Passing · write_passing · read_passing | natural-criteria, ablate, whole-channel, figures, report |
| ``metrics/criteria.json`` (counts; stability across seeds) | criteria | criteria: CriteriaMetrics · write_criteria_metrics · read_criteria_metrics | report |
| ``criteria/stability.json`` (passing lists per seed) | criteria | criteria: SeedPassing · write_seed_passing · read_seed_passing | people (no stage) |
| ``criteria/passing_counts.csv`` | criteria | criteria: PassingCount · write_passing_counts | DVC plots |
| ``reference/`` (fz/, activations/, criteria/passing.json, criteria/passing_counts.csv; ``stability/seed<K>/`` the same per further seed); ``metrics/criteria_lucent_reference.json`` | pre-reading | as above | report, DVC plots |
| ``natural/<layerL_K>.npz`` | natural | natural: NaturalStats · write_natural · read_natural | natural-criteria, ablate, figures |
| ``natural_criteria/``; ``metrics/criteria_natural.json`` | natural-criteria | natural_criteria: NaturalCriteriaBlock, NaturalPassing, NaturalCriteriaMetrics | figures (passing), report (metrics) |
| ``metrics/ablation.json``, ``plots/ablation_ratio.csv``, ``ablation/trials.json`` | ablate | ablation: AblationMetrics · write_ablation · read_ablation_metrics | figures, report |
| ``whole_channel/<layerL_K>.npz`` | whole-channel | whole_channel: WholeChannelFZs · write_whole_channel · read_whole_channel | figures |
| ``figures/*.png``; ``report.md`` | figures; report | (final outputs, read by people) | |

The array layouts are in each record's docstring.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from rsi.taps import Tap, block_key, parse_block


class ArtifactError(ValueError):
    """A stage output that is absent, or lacks something its writer always writes. The message is one
    line: the file, the stage that writes it, what is missing, and the command that remakes it."""


class MissingArtifactError(ArtifactError, FileNotFoundError):
    """A stage output that does not exist at all."""


def require_file(path: Path, stage: str) -> Path:
    """``path`` if it is a file, else MissingArtifactError naming ``rsi <stage>``, its writer."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(
            f"{path} is missing: it is written by `rsi {stage}` (DVC stage {stage!r}); "
            f"run `dvc repro` (or `rsi {stage}`) first"
        )
    return path


def require_keys(path: Path, present: Collection[str], keys: Iterable[str], stage: str) -> None:
    """ArtifactError naming the first keys of ``keys`` absent from ``present`` (the keys found in
    ``path``): the file was written by another version of ``rsi <stage>``, or by something else."""
    missing = [key for key in keys if key not in present]
    if missing:
        raise ArtifactError(
            f"{path}: no {', '.join(repr(key) for key in missing)}, which `rsi {stage}` always writes; "
            f"remake it with `dvc repro --force {stage}` (or `rsi {stage}`)"
        )


def load_json(path: Path, stage: str) -> dict[str, Any]:
    """The JSON mapping ``rsi <stage>`` wrote at ``path``: MissingArtifactError if there is none,
    ArtifactError (one line: the file, the stage, what is wrong) if it is not JSON or not a mapping."""
    path = require_file(path, stage)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(
            f"{path}: not JSON ({error}); remake it with `dvc repro --force {stage}` (or `rsi {stage}`)"
        ) from None
    if not isinstance(data, dict):
        raise ArtifactError(
            f"{path}: a JSON {type(data).__name__}, but `rsi {stage}` writes a mapping; remake it with "
            f"`dvc repro --force {stage}` (or `rsi {stage}`)"
        )
    return data


def block_of_key(path: Path, key: str, stage: str) -> str:
    """The block ``"2.1"`` of a ``layerL_K`` key in a file ``rsi <stage>`` wrote; ArtifactError else."""
    try:
        block = parse_block(key)
    except ValueError:
        block = None
    if block is None or block_key(block) != key:
        raise ArtifactError(f"{path}: key {key!r} is not a block key as `rsi {stage}` writes it (layerL_K)")
    return block


OUTPUTS = Path("outputs")
METRICS = Path("metrics")
PLOTS = Path("plots")
ABLATION_PLOT = PLOTS / "ablation_ratio.csv"

# The TF32 flags in force while a result was computed (the keys of rsi.runtime.tf32_flags), recorded in
# every result file (activations, natural, criteria, ablation)
NUMERICS: tuple[str, ...] = ("cudnn_allow_tf32", "matmul_allow_tf32")

# The images whose responses `rsi activations` records, per channel c of a block:
#   in_fz: X̂_In_c; scaled_in_fz: S(X̂_In_c); pre_fz: X̂_Pre_c; shrunk_pre_fz: X̂_Pre_c resized to half
#   and reflect-padded (the authors' optional mirror test); post_fz: X̂_Post_c.
FZ_IMAGES: tuple[str, ...] = ("in_fz", "scaled_in_fz", "pre_fz", "shrunk_pre_fz", "post_fz")


def fz_dir(block: str, root: Path = OUTPUTS) -> Path:
    return root / "fz" / block_key(block)


def fz_file(tap: Tap, root: Path = OUTPUTS) -> Path:
    return fz_dir(tap.block, root) / f"{tap.kind}.npz"


def fz_settings_file(block: str, root: Path = OUTPUTS) -> Path:
    return fz_dir(block, root) / "settings.json"


def in_fz_source(block: str) -> Tap:
    """The FZ that serves as X̂_In of a block: its own In for an L.0 block (a downsample, or maxpool for
    a BasicBlock 1.0), else block L.(K−1)'s Post FZ (the same activation, rendered once). The same in
    every architecture of rsi.taps.ARCHS."""
    layer, index = parse_block(block).split(".")
    if index == "0":
        return Tap(block, "in")
    return Tap(f"{layer}.{int(index) - 1}", "post")


def eval_dir(root: Path = OUTPUTS) -> Path:
    return root / "eval"


def activations_file(block: str, root: Path = OUTPUTS) -> Path:
    return root / "activations" / f"{block_key(block)}.npz"


def criteria_table(block: str, root: Path = OUTPUTS) -> Path:
    return root / "criteria" / f"{block_key(block)}.csv"


def passing_file(root: Path = OUTPUTS) -> Path:
    return root / "criteria" / "passing.json"


def natural_file(block: str, root: Path = OUTPUTS) -> Path:
    return root / "natural" / f"{block_key(block)}.npz"


# criteria.seed_root's default: the outputs root of each further FZ seed (stage stability), the main
# seed's being OUTPUTS itself
SEED_ROOT = "outputs/stability/seed{seed}"


def seed_root(seed: int, template: str = SEED_ROOT) -> Path:
    """The outputs root of FZ seed ``seed`` rendered by stage stability (``template``: criteria.seed_root)."""
    return Path(template.format(seed=seed))


def reference_root(root: Path = OUTPUTS) -> Path:
    """The outputs root of stage pre-reading: its run with lucent's reading of Pre (fz/, activations/,
    criteria/passing.json), beside the main run."""
    return root / "reference"
