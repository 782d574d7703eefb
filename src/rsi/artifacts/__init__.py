"""The file contract between stages: where every stage output lives, and the error its reader raises.

Each output's typed record, its one writer and its one reader live in a submodule of this package
(``rsi.artifacts.<output>``), so a stage's DVC deps name only the contracts it reads or writes. All paths are relative to the repository root (the DVC working directory) unless ``root`` is given.

* fz        ``outputs/fz/<layerL_K>/<tap>.npz``: ``images`` (C, 3, H, W) uint8 (value·255 truncated) or
            float32 in [0, 1]; ``channels`` (C,) int64; ``objective`` and ``initial_objective`` (C,)
            float32, the target center-neuron activation at the end and the start of optimisation.
            ``outputs/fz/<layerL_K>/settings.json``: the exact settings used. Record, writer and reader:
            rsi.artifacts.fz.
* eval      ``outputs/eval/images.npy`` (N, 256, 256, 3) uint8, ``labels.npy`` (N,) int64,
            ``resized.npy`` (N, 2) int32 (height, width after ``Resize(256)``), ``index.json`` (files,
            class ids, skipped files).
* activations ``outputs/activations/<layerL_K>.npz``: ``acts`` (len(FZ_IMAGES), 3, C) float32 with
            acts[i, t, c] = center neuron of tap TAP_KINDS[t], channel c, to image FZ_IMAGES[i] of c;
            ``channels`` (C,) and how they were measured (rsi.artifacts.activations).
* stability ``outputs/stability/seed<K>/``: fz/ and activations/ of FZ seed K, as above.
* pre-reading ``outputs/reference/``: fz/, activations/ and criteria/passing.json of the lucent reading.
* criteria  ``outputs/criteria/<layerL_K>.csv`` (one row per channel), ``outputs/criteria/passing.json``
            ({block: [channels]}), ``outputs/criteria/passing_counts.csv`` (the DVC plot: count per
            block), ``metrics/criteria.json`` (counts and percentages).
* natural   ``outputs/natural/<layerL_K>.npz``: ``mean`` (3, C), ``topk`` (3, C, k) eval indices,
            ``topk_values`` (3, C, k).
* ablate    ``metrics/ablation.json``, ``plots/ablation_ratio.csv``, ``outputs/ablation/trials.json``.
* figures   ``outputs/figures/*.png``;  report ``outputs/report.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

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


OUTPUTS = Path("outputs")
METRICS = Path("metrics")
PLOTS = Path("plots")
ABLATION_PLOT = PLOTS / "ablation_ratio.csv"

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
