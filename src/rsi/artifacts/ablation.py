"""The ablate stage's outputs: the typed results of ``rsi ablate``, their one writer
(:func:`write_ablation`) and the one reader of ``metrics/ablation.json`` (:func:`read_ablation_metrics`).

* ``metrics/ablation.json`` (:class:`AblationMetrics`; numbers only, one line each in ``dvc metrics diff``):
  ``images``, ``random_weights``, ``generated_data`` and the TF32 flags (0 or 1), then per block
  ``layerL_K``: ``baseline_acc`` per scale key (absent when every set was skipped) and per channel set
  (``run``, ``published``) ``n_passing``, ``n_channels`` and, when ablated, ``trials``, ``attempts`` and per
  scale key ``passing_acc``, ``random_acc_mean``, ``ratio``, ``sem`` (null: undefined). Scale keys:
  ``no_scale``, ``scale_<percent>``.
* ``plots/ablation_ratio.csv``: one row per block, channel set and scale (:data:`PLOT_FIELDS`).
* ``outputs/ablation/trials.json``: ``settings`` (as given) and per block and channel set a
  :class:`SetResult`: every attempt and its screening outcome, every trial's accuracies per scale.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsi.artifacts import (
    METRICS,
    NUMERICS,
    OUTPUTS,
    ArtifactError,
    block_of_key,
    load_json,
    require_keys,
)
from rsi.runtime import atomic_path, write_json
from rsi.taps import block_key, block_order

STAGE = "ablate"
CHANNEL_SET_LABELS = {"run": "this run's channels", "published": "the authors' published channels"}
HEADER: tuple[str, ...] = ("images", "random_weights", "generated_data", *NUMERICS)
COUNTS: tuple[str, ...] = ("n_passing", "n_channels")
SCALE_FIELDS: tuple[str, ...] = ("passing_acc", "random_acc_mean", "ratio", "sem")
PLOT_FIELDS = ("block", "channel_set", "scale", "label", "ratio", "sem", "no_scale_ratio", "passing_acc")


ABLATION_METRICS = METRICS / "ablation.json"


def trials_file(root: Path = OUTPUTS) -> Path:
    return root / "ablation" / "trials.json"


def scale_key(percent: int) -> str:
    """``no_scale`` for 0 (no scale), else ``scale_<percent>``."""
    return "no_scale" if percent == 0 else f"scale_{percent}"


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScaleResult:
    """One scale of one block and channel set: top-1 % unablated, passing set ablated, each trial ablated."""

    crop: int
    baseline_acc: float
    passing_acc: float
    random_accs: tuple[float, ...]


@dataclass(frozen=True)
class RandomSet:
    """One attempt of the screening: a drawn random set, its no-scale top-1 % and whether it was accepted."""

    attempt: int
    channels: tuple[int, ...]
    no_scale_acc: float
    accepted: bool


def accepted_sets(attempts: Sequence[RandomSet]) -> tuple[RandomSet, ...]:
    """The accepted random sets of a screening (the trials), in attempt order."""
    return tuple(a for a in attempts if a.accepted)


@dataclass(frozen=True)
class SetResult:
    """One block and channel set as ``rsi ablate`` computed it. ``scales`` maps the scale percent (0 = no
    scale, first) to its result; a skipped set (``skipped`` says why) has no screening, scales or attempts.
    ``screening`` is (rule, tolerance); ``trial_means`` the accepted sets' Post means, in trial order."""

    block: str
    channel_set: str
    n_channels: int
    passing: tuple[int, ...]
    passing_means: tuple[float, ...]
    images: int
    skipped: str | None = None
    screening: tuple[str, float] | None = None
    scales: Mapping[int, ScaleResult] = field(default_factory=dict)
    attempts: tuple[RandomSet, ...] = ()
    trial_means: tuple[tuple[float, ...], ...] = ()

    @property
    def trials(self) -> tuple[RandomSet, ...]:
        """The accepted random sets, in attempt order."""
        return accepted_sets(self.attempts)

    def to_json(self) -> dict[str, Any]:
        """The entry of ``outputs/ablation/trials.json``."""
        entry: dict[str, Any] = {
            "block": self.block,
            "channel_set": self.channel_set,
            "n_channels": self.n_channels,
            "passing": list(self.passing),
            "passing_means": list(self.passing_means),
            "images": self.images,
        }
        if self.skipped is not None:
            return {**entry, "skipped": self.skipped}
        assert self.screening is not None
        rule, tolerance = self.screening
        entry["screening"] = {"rule": rule, "tolerance": tolerance}
        no_scale, *scaled = self.scales.items()
        entry["no_scale"] = _scale_json(no_scale[1])
        entry["scales"] = {str(percent): _scale_json(result) for percent, result in scaled}
        entry["attempts"] = [
            {"attempt": a.attempt, "channels": list(a.channels), "no_scale_acc": a.no_scale_acc,
             "accepted": a.accepted}
            for a in self.attempts
        ]  # fmt: skip
        entry["trials"] = [
            {"attempt": t.attempt, "channels": list(t.channels), "no_scale_acc": t.no_scale_acc,
             "means": list(means)}
            for t, means in zip(self.trials, self.trial_means, strict=True)
        ]  # fmt: skip
        return entry


def _scale_json(result: ScaleResult) -> dict[str, Any]:
    return {
        "crop": result.crop,
        "baseline_acc": result.baseline_acc,
        "passing_acc": result.passing_acc,
        "random_accs": list(result.random_accs),
    }


# ----------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ScaleMetrics:
    """One scale of Eq. 3: the passing-set top-1 %, the random sets' mean top-1 %, the mean ratio and its
    standard error (None: undefined, a random accuracy of 0 or a single trial)."""

    passing_acc: float
    random_acc_mean: float
    ratio: float | None
    sem: float | None


@dataclass(frozen=True)
class SetMetrics:
    """One block and channel set of ``metrics/ablation.json``; ``scales`` (0 = no scale, first) is empty
    for a set the stage skipped (e.g. no passing channel). ``trials_below``: the trials whose every scaled
    ratio lies below their own no-scale ratio (rsi.ablate.trials_below_no_scale)."""

    n_passing: int
    n_channels: int
    trials: int = 0
    attempts: int = 0
    scales: Mapping[int, ScaleMetrics] = field(default_factory=dict)
    trials_below: int = 0

    @property
    def ablated(self) -> bool:
        return bool(self.scales)


@dataclass(frozen=True)
class BlockMetrics:
    """One block: the unablated top-1 % per scale percent (empty when every set was skipped) and its sets
    by name, in the order the stage ran them."""

    baseline_acc: Mapping[int, float]
    sets: Mapping[str, SetMetrics]


@dataclass(frozen=True)
class AblationSeries:
    """What the report and Fig. 2 draw of one ablated block and channel set, scales in increasing order
    (0 = no scale): Eq. 3's mean ratio and its standard error (NaN: undefined), the accuracies, the
    no-scale ratio (Fig. 2's line) and the counts."""

    # the set and its random controls: passing channels of how many, accepted trials of how many draws
    n_passing: int
    n_channels: int
    trials: int
    attempts: int
    trials_below: int  # trials whose every scaled ratio is below their own no-scale ratio
    no_scale_ratio: float
    # per scale
    scales: tuple[int, ...]
    ratio: tuple[float, ...]
    sem: tuple[float, ...]
    passing_acc: tuple[float, ...]
    random_acc: tuple[float, ...]
    baseline_acc: tuple[float, ...]


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


@dataclass(frozen=True)
class AblationMetrics:
    """``metrics/ablation.json``: the run's labels and, per block (``2.1``, in the order the stage ran
    them), its :class:`BlockMetrics`."""

    images: int
    random_weights: bool
    generated_data: bool
    numerics: Mapping[str, bool]
    blocks: Mapping[str, BlockMetrics]

    def __post_init__(self) -> None:
        if tuple(self.numerics) != NUMERICS:
            raise ValueError(f"ablation numerics {list(self.numerics)}: expected exactly {list(NUMERICS)}")

    def series(self) -> dict[str, dict[str, AblationSeries]]:
        """``{"2.1": {"run": AblationSeries, "published": …}}`` of the ablated sets, blocks in pipeline
        order, channel sets in the order the stage ran them."""
        out: dict[str, dict[str, AblationSeries]] = {}
        for block in sorted(self.blocks, key=block_order):
            entry = self.blocks[block]
            for name, metrics in entry.sets.items():
                if metrics.ablated:
                    out.setdefault(block, {})[name] = _series(metrics, entry.baseline_acc)
        return out

    def listed(self) -> list[tuple[str, str]]:
        """Every (block, channel set) the file lists, ablated or skipped, in file order."""
        return [(block, name) for block, entry in self.blocks.items() for name in entry.sets]

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics/ablation.json``."""
        out: dict[str, Any] = {
            "images": self.images,
            "random_weights": int(self.random_weights),
            "generated_data": int(self.generated_data),
            **{key: int(value) for key, value in self.numerics.items()},
        }
        for block, entry in self.blocks.items():
            value: dict[str, Any] = {}
            if entry.baseline_acc:
                value["baseline_acc"] = {scale_key(p): acc for p, acc in entry.baseline_acc.items()}
            for name, metrics in entry.sets.items():
                value[name] = _set_json(metrics)
            out[block_key(block)] = value
        return out


def _series(metrics: SetMetrics, baseline: Mapping[int, float]) -> AblationSeries:
    scales = tuple(sorted(metrics.scales))
    rows = [metrics.scales[p] for p in scales]
    return AblationSeries(
        scales=scales,
        ratio=tuple(_nan(row.ratio) for row in rows),
        sem=tuple(_nan(row.sem) for row in rows),
        passing_acc=tuple(row.passing_acc for row in rows),
        random_acc=tuple(row.random_acc_mean for row in rows),
        baseline_acc=tuple(baseline[p] for p in scales),
        no_scale_ratio=_nan(metrics.scales[0].ratio),
        n_passing=metrics.n_passing,
        n_channels=metrics.n_channels,
        trials=metrics.trials,
        attempts=metrics.attempts,
        trials_below=metrics.trials_below,
    )


def _set_json(metrics: SetMetrics) -> dict[str, Any]:
    out: dict[str, Any] = {"n_passing": metrics.n_passing, "n_channels": metrics.n_channels}
    if not metrics.ablated:
        return out
    out["trials"], out["attempts"] = metrics.trials, metrics.attempts
    out["trials_below"] = metrics.trials_below
    for percent, scale in metrics.scales.items():
        out[scale_key(percent)] = {name: getattr(scale, name) for name in SCALE_FIELDS}
    return out


def plot_rows(metrics: AblationMetrics) -> list[dict[str, Any]]:
    """Rows of ``plots/ablation_ratio.csv``, per ablated block and channel set and scale (0 = no scale):
    the Eq. 3 ratio, its SEM, the no-scale ratio, the passing-set accuracy, and a label
    ``2.1 published · 10 %`` (no scale: ``00 % (no scale)``, so a sorted axis keeps the scales in order)."""
    rows = []
    for block, entry in metrics.blocks.items():
        for name, set_metrics in entry.sets.items():
            for percent, scale in set_metrics.scales.items():
                label = "00 % (no scale)" if percent == 0 else f"{percent:02d} %"
                rows.append(
                    {
                        "block": block,
                        "channel_set": name,
                        "scale": percent,
                        "label": f"{block} {name} · {label}",
                        "ratio": scale.ratio,
                        "sem": scale.sem,
                        "no_scale_ratio": set_metrics.scales[0].ratio,
                        "passing_acc": scale.passing_acc,
                    }
                )
    return rows


# ----------------------------------------------------------------------------------------------- I/O


def write_ablation(
    metrics: AblationMetrics,
    results: Sequence[SetResult],
    settings: Mapping[str, Any],
    *,
    metrics_path: Path,
    plots_path: Path,
    trials_path: Path,
) -> None:
    """The stage's three files, each atomically: ``metrics`` (computed from ``results``) to
    metrics/ablation.json and the plot CSV, ``settings`` and ``results`` to outputs/ablation/trials.json."""
    with atomic_path(plots_path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(PLOT_FIELDS))
        writer.writeheader()
        for row in plot_rows(metrics):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_json(metrics_path, metrics.to_json())
    blocks: dict[str, dict[str, Any]] = {}
    for result in results:
        blocks.setdefault(block_key(result.block), {})[result.channel_set] = result.to_json()
    write_json(trials_path, {"settings": dict(settings), "blocks": blocks})


def _mapping(path: Path, value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ArtifactError(
            f"{path}: {where or 'the file'} is not a JSON object, which `rsi {STAGE}` always writes; "
            f"remake it with `dvc repro --force {STAGE}` (or `rsi {STAGE}`)"
        )
    return value


def _require(path: Path, value: Any, keys: Sequence[str], where: str = "") -> Mapping[str, Any]:
    """``value`` as a mapping holding ``keys``; the error names the missing key by its dotted path."""
    value = _mapping(path, value, where)
    prefix = f"{where}." if where else ""
    require_keys(path, [prefix + k for k in value], [prefix + k for k in keys], STAGE)
    return value


def _unexpected(path: Path, key: str, what: str) -> ArtifactError:
    return ArtifactError(
        f"{path}: unexpected key {key!r} ({what}), which `rsi {STAGE}` never writes; "
        f"remake it with `dvc repro --force {STAGE}` (or `rsi {STAGE}`)"
    )


def _percent(path: Path, key: str, where: str) -> int:
    """The scale percent of a scale key (``no_scale`` → 0, ``scale_10`` → 10)."""
    if key == "no_scale":
        return 0
    digits = key.removeprefix("scale_")
    if key == digits or not digits.isdigit() or int(digits) == 0 or scale_key(int(digits)) != key:
        raise _unexpected(path, f"{where}.{key}", "not a count, no_scale or scale_<percent>")
    return int(digits)


def _read_set(path: Path, value: Any, where: str) -> SetMetrics:
    value = _require(path, value, COUNTS, where)
    counts = {key: int(value[key]) for key in COUNTS}
    if set(value) == set(COUNTS):  # skipped: the counts only
        return SetMetrics(**counts)
    value = _require(path, value, ("trials", "attempts", "trials_below", "no_scale"), where)
    scales = {}
    for key, entry in value.items():
        if key not in (*COUNTS, "trials", "attempts", "trials_below"):
            percent = _percent(path, key, where)
            entry = _require(path, entry, SCALE_FIELDS, f"{where}.{key}")
            scales[percent] = ScaleMetrics(
                passing_acc=float(entry["passing_acc"]),
                random_acc_mean=float(entry["random_acc_mean"]),
                ratio=None if entry["ratio"] is None else float(entry["ratio"]),
                sem=None if entry["sem"] is None else float(entry["sem"]),
            )
    scales = {0: scales.pop(0), **scales}
    return SetMetrics(
        **counts,
        trials=int(value["trials"]),
        attempts=int(value["attempts"]),
        trials_below=int(value["trials_below"]),
        scales=scales,
    )


def _read_block(path: Path, value: Any, where: str) -> BlockMetrics:
    value = _mapping(path, value, where)
    sets = {}
    for name, entry in value.items():
        if name != "baseline_acc":
            if name not in CHANNEL_SET_LABELS:
                raise _unexpected(
                    path,
                    f"{where}.{name}",
                    f"not baseline_acc or a channel set of {list(CHANNEL_SET_LABELS)}",
                )
            sets[name] = _read_set(path, entry, f"{where}.{name}")
    ablated = [metrics for metrics in sets.values() if metrics.ablated]
    if not ablated:
        return BlockMetrics({}, sets)
    keys = [scale_key(p) for p in ablated[0].scales]
    _require(path, value, ["baseline_acc"], where)
    baseline = _require(path, value["baseline_acc"], keys, f"{where}.baseline_acc")
    return BlockMetrics({p: float(baseline[scale_key(p)]) for p in ablated[0].scales}, sets)


def read_ablation_metrics(path: Path = ABLATION_METRICS) -> AblationMetrics:
    """``metrics/ablation.json`` as written by :func:`write_ablation`; an :class:`ArtifactError` (one line:
    the file, ``rsi ablate``, the missing key by its dotted path) for anything else."""
    path = Path(path)
    data = _require(path, load_json(path, STAGE), HEADER)
    blocks = {}
    for key, value in data.items():
        if key in HEADER:
            continue
        try:
            block = block_of_key(path, key, STAGE)
        except ArtifactError:
            raise _unexpected(path, key, "not a run label or a block layerL_K") from None
        blocks[block] = _read_block(path, value, key)
    return AblationMetrics(
        images=int(data["images"]),
        random_weights=bool(data["random_weights"]),
        generated_data=bool(data["generated_data"]),
        numerics={key: bool(data[key]) for key in NUMERICS},
        blocks=blocks,
    )


@dataclass(frozen=True)
class AblationRun:
    """What outputs/ablation/trials.json says of the run beyond the metrics, for the report: the device
    (rsi.runtime.describe_device) and why each set not ablated was skipped, by (block ``"2.1"``, set)."""

    device: str
    skipped: dict[tuple[str, str], str]


def read_ablation_run(path: Path) -> AblationRun:
    """The :class:`AblationRun` of outputs/ablation/trials.json, as :func:`write_ablation` wrote it."""
    path = Path(path)
    data = _require(path, load_json(path, STAGE), ["settings", "blocks"])
    device = str(_require(path, data["settings"], ["device"], "settings")["device"])
    skipped = {}
    for key, sets in _mapping(path, data["blocks"], "blocks").items():
        block = block_of_key(path, key, STAGE)
        for name, entry in _mapping(path, sets, f"blocks.{key}").items():
            entry = _mapping(path, entry, f"blocks.{key}.{name}")
            if "skipped" in entry:
                skipped[block, name] = str(entry["skipped"])
    return AblationRun(device, skipped)
