"""`rsi ablate`: top-1 accuracy with a block's criteria-passing channels mean-ablated at Post, against
screened random non-passing channel sets of the same size, under the scale sweep (paper section 4, Eq. 3).

Channel sets (``ablate.channel_sets``), each ablated on its own with its own screened random controls:
``run``, this run's criteria-passing channels (``outputs/criteria/passing.json``), and ``published``, the
authors' published lists (``rsi.paper.PUBLISHED_PASSING``: 2.1 and 3.1). With the real weights and ImageNet
validation the published sets' accuracies are deterministic (no FZ, no random draw): the report checks them
against the authors' recorded values to the image.

Conditions, per block and channel set. *Passing*: every channel of the set. *Random trial i*: as many
channels not in the set, drawn uniformly without replacement from a keyed generator (seed, block, attempt;
the published set adds its name to the key). *Baseline*: nothing ablated (reported, not in Eq. 3). Mean ablation sets the whole
Post map of each chosen channel to that channel's own mean center-neuron Post activation over the evaluation
set (``outputs/natural/<layerL_K>.npz``, ``mean[2]``; the authors' pre-ReLU sum clamped at 0).

Scale sweep: no scale (center crop 224 of the 256 px cache = ``Resize(256)`` + ``CenterCrop(224)``) and
``percents`` (10 … 50): center crop ``transforms.ablation_crop(p, crop_rule)`` of the resized image (placed
in the 256 px cache where the authors' direct crop lies), then PIL's bilinear resize to 224, each pass
rounded to uint8 as PIL does (``transforms.ablation_view``). ``authors_code`` (default; what produced the
paper's numbers) crops 201, 179, 156, 134, 112 px; ``paper_text`` crops 231, 205, 180, 154, 128 px.

Screening (paper section 4 and the authors' ``scale_robust.py``): a random set is accepted by its no-scale
accuracy, compared with the passing set's, by the block's rule in ``screening``:

* ``no_higher``: random ≤ passing (default for 2.1: "more damage", ties accepted);
* ``within``:    random ≤ passing + tolerance (percentage points; 1.0 for 3.1, as the authors' code skips a
                 set more than 1 point above);
* ``lower``:     random < passing (the paper text's strict reading of "more accuracy damage").

Comparisons treat accuracies within 1e-9 points as equal. Attempts are made in attempt order until
``trials`` sets are accepted; after ``max_attempts`` an AblationError names the block, the accepted count
and what to change. Accepted sets are then run over the scales.

Speed: the images are decoded once (``rsi prepare-data``); each batch is read as uint8 and every scale's crop
and resize happen on the device; the network prefix up to the block's Post runs once per batch and scale
(``taps.forward_taps``) and every condition runs only the suffix (``taps.forward_from``) from that shared
Post. Screening needs only no-scale accuracy, so candidate sets are evaluated ``screen_batch`` at a time at
no scale, sharing the prefix; the outcome does not depend on ``screen_batch`` (surplus attempts past the
last needed acceptance are discarded). Under ``torchrun`` the evaluation set is sharded across ranks and the
correct counts are all-reduced, so every decision and number is that of one process.

Eq. 3: per scale, ratio_i = passing_acc / random_acc_i; the metric is the mean over the N trials and its
standard error (``scipy.stats.sem``, ddof = 1). A random accuracy of 0 makes a ratio undefined: written as
null. Outputs: ``metrics/ablation.json`` (numbers only, one line per number in ``dvc metrics diff``:
``layer2_1.baseline_acc.scale_10``, ``layer2_1.published.scale_10.passing_acc`` / ``.ratio`` / ``.sem`` …;
no paper values, those are the report's), ``plots/ablation_ratio.csv`` (one row per block, channel set and
scale; scale 0 is no scale; drawn by ``dvc plots``) and ``outputs/ablation/trials.json`` (settings, channel
sets, every attempt and its screening outcome, every trial's accuracies).

Numerics: convolutions and matmuls run in full float32 on CUDA (``ablate.tf32: false``, the default;
``true`` allows TF32, as the authors' torch 2.0 did by default for convolutions on Ampere or newer GPUs).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm import tqdm

from rsi import artifacts, distributed, paper
from rsi.config import (
    ParamsError,
    as_dict,
    check_blocks,
    check_distinct,
    load_section,
    params_arch,
    read_params,
)
from rsi.data import EvalSet, load_eval, top_level_seed
from rsi.model import describe_weights, is_random, load_model
from rsi.natural import NaturalParams
from rsi.runtime import (
    ModelParams,
    atomic_path,
    full_float32,
    keyed_generator,
    load_npz,
    read_json,
    resolve_device,
    write_json,
)
from rsi.taps import (
    DEFAULT_ARCH,
    TAP_KINDS,
    Tap,
    block_key,
    forward_from,
    forward_taps,
    num_channels,
    overwrite_channels,
    parse_block,
)
from rsi.transforms import ablation_crop, ablation_view

Rule = Literal["no_higher", "within", "lower"]
RULES: tuple[str, ...] = ("no_higher", "within", "lower")
TIE = 1e-9  # accuracies (percentage points) closer than this are equal in screening


class AblationError(ValueError):
    """The ablation cannot go on (e.g. too few random sets pass the screening); the message says why."""


# ----------------------------------------------------------------------------------------------- params


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


CHANNEL_SETS: tuple[str, ...] = ("run", "published")
CHANNEL_SET_LABELS = {"run": "this run's channels", "published": "the authors' published channels"}


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
        metadata={"help": "allow TF32 convolutions/matmuls on CUDA (the authors' torch 2.0 did)"},
    )

    def __post_init__(self) -> None:
        if "published" in self.channel_sets:
            if params_arch() != DEFAULT_ARCH:
                raise ParamsError(
                    f"ablate.channel_sets lists published, but the authors' lists are ResNet18's channels and "
                    f"model.arch is {params_arch()}: set ablate.channel_sets: [run]"
                )
            check_published([parse_block(b) for b in self.blocks])


# ----------------------------------------------------------------------------------------------- pure parts


def screen(random_acc: float, passing_acc: float, rule: str = "no_higher", tolerance: float = 0.0) -> bool:
    """Is a random set with no-scale accuracy ``random_acc`` an acceptable control (see module docstring)?"""
    if rule not in RULES:
        raise ValueError(f"unknown screening rule {rule!r}: choose one of {RULES}")
    if tolerance < 0 or (rule != "within" and tolerance != 0):
        raise ValueError(f"rule {rule!r} with tolerance {tolerance}: only 'within' takes a tolerance >= 0")
    if rule == "lower":
        return random_acc < passing_acc - TIE
    return random_acc <= passing_acc + tolerance + TIE


def eq3_ratio(passing_acc: float, random_accs: Sequence[float]) -> tuple[float, float]:
    """Eq. 3: the mean over trials of passing_acc / random_acc_i, and its standard error (ddof = 1).
    A zero random accuracy gives inf or nan (written as null in the metrics)."""
    randoms = np.asarray(random_accs, dtype=np.float64)
    if randoms.size == 0:
        raise ValueError("Eq. 3 needs at least one random trial")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.float64(passing_acc) / randoms
        mean = float(np.mean(ratios))
        sem = float(stats.sem(ratios)) if ratios.size > 1 else float("nan")
    return mean, sem


def draw_random_set(
    non_passing: Sequence[int], size: int, seed: int, block: str, attempt: int, channel_set: str = "run"
) -> list[int]:
    """Attempt ``attempt``'s random set: ``size`` channels of ``non_passing``, keyed by (seed, block,
    attempt), and by the channel set's name for any set but ``run``."""
    if size > len(non_passing):
        raise ValueError(f"cannot draw {size} channels from {len(non_passing)} non-passing channels")
    key = () if channel_set == "run" else (channel_set,)
    generator = keyed_generator(seed, "ablate", parse_block(block), *key, attempt)
    order = torch.randperm(len(non_passing), generator=generator)[:size]
    return sorted(int(non_passing[i]) for i in order)


@dataclass(frozen=True)
class Condition:
    """Channels of a block's Post to mean-ablate (none: the unablated baseline) and their values."""

    name: str
    channels: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    @classmethod
    def mean_ablation(
        cls, name: str, channels: Sequence[int], means: np.ndarray | Sequence[float]
    ) -> Condition:
        means = np.asarray(means, dtype=np.float64)
        return cls(name, tuple(int(c) for c in channels), tuple(float(means[c]) for c in channels))

    def apply(self, post: torch.Tensor) -> torch.Tensor:
        """Post with the chosen channels' whole maps overwritten (the input itself when none are chosen)."""
        if not self.channels:
            return post
        channels = torch.tensor(self.channels, dtype=torch.long, device=post.device)
        values = torch.tensor(self.values, dtype=post.dtype, device=post.device)
        return overwrite_channels(post, channels, values)


# ----------------------------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    eval_set: EvalSet,
    block: str,
    conditions: Sequence[Condition],
    crops: Sequence[int],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "ablate",
) -> tuple[np.ndarray, int]:
    """Correct top-1 counts (len(crops), len(conditions)) over the whole evaluation set, and its size.

    Per batch and crop the prefix runs once to the block's Post; each condition runs the suffix only.
    Sharded over torchrun ranks (counts all-reduced)."""
    device = torch.device(device)
    block = parse_block(block)
    tap = Tap(block, "post")
    world = distributed.world()[1]
    mine = distributed.shard_batches(len(eval_set), batch_size)  # whole batches: one process's floats
    indices = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    correct = torch.zeros(len(crops), len(conditions), dtype=torch.int64, device=device)
    bar = tqdm(total=len(eval_set), desc=desc, unit="img", disable=not (progress and distributed.is_main()))
    with torch.inference_mode():
        for index, images, labels in eval_set.batches(indices, batch_size, device):
            resized = eval_set.resized_of(index)
            for s, crop in enumerate(crops):
                view = ablation_view(images, crop, eval_set.view_size, resized)
                post = forward_taps(model, view, [tap], detach=True)[tap]
                for j, condition in enumerate(conditions):
                    logits = forward_from(model, block, condition.apply(post))
                    correct[s, j] += (logits.argmax(dim=1) == labels).sum()
            bar.update(len(labels) * world)
    bar.close()
    distributed.all_reduce_sum(correct)
    return correct.cpu().numpy(), len(eval_set)


def crop_of(percent: int, rule: str, eval_set: EvalSet) -> int:
    """The crop side for a scale percent from this cache (256 → 224: transforms.ablation_crop)."""
    return ablation_crop(percent, rule, source=eval_set.size, out=eval_set.view_size)  # type: ignore[arg-type]


def _accuracy(correct: np.ndarray, total: int) -> np.ndarray:
    return 100.0 * correct.astype(np.float64) / total


def _screen_random_sets(
    model: nn.Module,
    eval_set: EvalSet,
    block: str,
    non_passing: Sequence[int],
    post_means: np.ndarray,
    params: AblateParams,
    fixed: Sequence[Condition],
    no_scale: int,
    *,
    seed: int,
    channel_set: str,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float]:
    """Random sets drawn in attempt order and screened at no scale against the passing set (``fixed`` =
    baseline, passing: evaluated with the first group) until ``params.trials`` are accepted; returns every
    attempt, the accepted ones, and the baseline and passing accuracies at no scale."""
    rule = params.screening[block]
    size = len(fixed[1].channels)
    attempts: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    baseline_acc = passing_acc = math.nan
    attempt = 0
    first = True
    while len(accepted) < params.trials:
        if attempt >= params.max_attempts:
            best = min((a["no_scale_acc"] for a in attempts), default=math.nan)
            raise AblationError(
                f"ablate {block} ({channel_set} channels): only {len(accepted)} of {params.trials} random "
                f"channel sets passed the screening after {params.max_attempts} attempts (rule {rule.rule!r}, tolerance "
                f"{rule.tolerance} points; passing set {passing_acc:.3f} %, best random set {best:.3f} % "
                f"at no scale). Raise ablate.max_attempts, relax ablate.screening.{block_key(block)} "
                "(rule: within with a larger tolerance), or lower ablate.trials."
            )
        group = list(range(attempt, min(attempt + params.screen_batch, params.max_attempts)))
        sets = [draw_random_set(non_passing, size, seed, block, a, channel_set) for a in group]
        conditions = [
            Condition.mean_ablation(f"random_{a}", s, post_means) for a, s in zip(group, sets, strict=True)
        ]
        if first:
            conditions = [*fixed, *conditions]
        correct, total = evaluate(
            model,
            eval_set,
            block,
            conditions,
            [no_scale],
            desc=f"ablate {block} {channel_set}: screening",
            **kwargs,
        )
        accuracies = _accuracy(correct[0], total)
        if first:
            baseline_acc, passing_acc = float(accuracies[0]), float(accuracies[1])
            accuracies = accuracies[2:]
            first = False
        for a, drawn, accuracy in zip(group, sets, accuracies, strict=True):
            if len(accepted) == params.trials:
                break  # surplus of the last group: discarded, so results do not depend on screen_batch
            ok = screen(float(accuracy), passing_acc, rule.rule, rule.tolerance)
            attempts.append(
                {"attempt": a, "channels": drawn, "no_scale_acc": float(accuracy), "accepted": ok}
            )
            if ok:
                accepted.append({"attempt": a, "channels": drawn, "no_scale_acc": float(accuracy)})
        attempt = group[-1] + 1
    return attempts, accepted, baseline_acc, passing_acc


def ablate_block(
    model: nn.Module,
    eval_set: EvalSet,
    block: str,
    passing: Sequence[int],
    post_means: np.ndarray,
    params: AblateParams,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    arch: str = DEFAULT_ARCH,
    channel_set: str = "run",
) -> dict[str, Any]:
    """Screening and the sweep for one block of ``model`` (a torchvision ``arch``) and one channel set
    (``passing``: that set's channels); a JSON-able record (see :func:`block_metrics`)."""
    block = parse_block(block, arch)
    channels = num_channels(block, arch)
    passing = sorted({int(c) for c in passing})
    post_means = np.asarray(post_means, dtype=np.float64)
    if post_means.shape != (channels,):
        raise AblationError(
            f"block {block}: Post means have shape {post_means.shape}, expected ({channels},): "
            f"{artifacts.natural_file(block)} was made for another model.arch; re-run `rsi natural`"
        )
    if passing and not 0 <= passing[0] <= passing[-1] < channels:
        raise AblationError(f"block {block}: passing channels must be in 0..{channels - 1}, got {passing}")
    non_passing = [c for c in range(channels) if c not in set(passing)]
    record: dict[str, Any] = {
        "block": block,
        "channel_set": channel_set,
        "n_channels": channels,
        "passing": passing,
        "passing_means": [float(post_means[c]) for c in passing],
        "images": len(eval_set),
    }
    if not passing or len(non_passing) < len(passing):
        record["skipped"] = (
            "no passing channels" if not passing else f"only {len(non_passing)} non-passing channels"
        )
        return record
    if block not in params.screening:
        raise ParamsError(
            f"ablate.screening has no entry for {block_key(block)}: add e.g. "
            f"{block_key(block)}: {{rule: within, tolerance: 1.0}}"
        )
    rule = params.screening[block]
    record["screening"] = {"rule": rule.rule, "tolerance": rule.tolerance}
    kwargs = {"batch_size": params.batch_size, "device": device, "progress": progress}
    no_scale = crop_of(0, params.crop_rule, eval_set)
    baseline = Condition("baseline")
    passing_condition = Condition.mean_ablation("passing", passing, post_means)
    attempts, accepted, baseline_acc, passing_acc = _screen_random_sets(
        model, eval_set, block, non_passing, post_means, params,
        [baseline, passing_condition], no_scale, seed=seed, channel_set=channel_set, **kwargs,
    )  # fmt: skip

    crops = [crop_of(p, params.crop_rule, eval_set) for p in params.percents]
    trial_conditions = [
        Condition.mean_ablation(f"random_{t['attempt']}", t["channels"], post_means) for t in accepted
    ]
    correct, total = evaluate(
        model,
        eval_set,
        block,
        [baseline, passing_condition, *trial_conditions],
        crops,
        desc=f"ablate {block} {channel_set}: {len(crops)} scales x {2 + len(accepted)} conditions",
        **kwargs,
    )
    accuracies = _accuracy(correct, total)
    record["no_scale"] = {
        "crop": no_scale,
        "baseline_acc": baseline_acc,
        "passing_acc": passing_acc,
        "random_accs": [t["no_scale_acc"] for t in accepted],
    }
    record["scales"] = {
        str(percent): {
            "crop": crop,
            "baseline_acc": float(accuracies[s, 0]),
            "passing_acc": float(accuracies[s, 1]),
            "random_accs": [float(a) for a in accuracies[s, 2:]],
        }
        for s, (percent, crop) in enumerate(zip(params.percents, crops, strict=True))
    }
    record["attempts"] = attempts
    record["trials"] = [{**t, "means": [float(post_means[c]) for c in t["channels"]]} for t in accepted]
    return record


# ----------------------------------------------------------------------------------------------- outputs


def _number(value: float) -> float | None:
    """JSON-safe: non-finite (a zero random accuracy) → null."""
    return float(value) if math.isfinite(value) else None


def _scale_metrics(entry: Mapping[str, Any]) -> dict[str, Any]:
    ratio, sem = eq3_ratio(entry["passing_acc"], entry["random_accs"])
    return {
        "passing_acc": entry["passing_acc"],
        "random_acc_mean": float(np.mean(entry["random_accs"])),
        "ratio": _number(ratio),
        "sem": _number(sem),
    }


def _scale_entries(record: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{"no_scale": entry, "scale_10": entry, …}`` of an ablated record."""
    return {"no_scale": record["no_scale"], **{f"scale_{p}": e for p, e in record["scales"].items()}}


def block_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metrics/ablation.json`` entry of one block and channel set (numbers only; per scale the
    passing-set accuracy, the random sets' mean accuracy, the Eq. 3 ratio and its SEM)."""
    metrics: dict[str, Any] = {"n_passing": len(record["passing"]), "n_channels": record["n_channels"]}
    if "skipped" in record:
        return metrics
    metrics["trials"] = len(record["trials"])
    metrics["attempts"] = len(record["attempts"])
    for key, entry in _scale_entries(record).items():
        metrics[key] = _scale_metrics(entry)
    return metrics


PLOT_FIELDS = ("block", "channel_set", "scale", "label", "ratio", "sem", "no_scale_ratio", "passing_acc")


def plot_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``plots/ablation_ratio.csv`` for one block and channel set: scale (0 = no scale), the Eq. 3
    ratio, its SEM, the no-scale ratio, the passing-set accuracy, and a label ``2.1 published · 10 %``
    (no scale: ``00 % (no scale)``, so a sorted axis keeps the scales in order)."""
    if "skipped" in record:
        return []
    no_scale = _scale_metrics(record["no_scale"])
    rows = []
    for key, entry in _scale_entries(record).items():
        percent = 0 if key == "no_scale" else int(key.removeprefix("scale_"))
        metrics = _scale_metrics(entry)
        scale = "00 % (no scale)" if percent == 0 else f"{percent:02d} %"
        rows.append(
            {
                "block": record["block"],
                "channel_set": record["channel_set"],
                "scale": percent,
                "label": f"{record['block']} {record['channel_set']} · {scale}",
                "ratio": metrics["ratio"],
                "sem": metrics["sem"],
                "no_scale_ratio": no_scale["ratio"],
                "passing_acc": metrics["passing_acc"],
            }
        )
    return rows


def _baseline(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The unablated accuracy per scale (the same for every channel set of a block)."""
    for record in records:
        if "skipped" not in record:
            return {key: entry["baseline_acc"] for key, entry in _scale_entries(record).items()}
    return {}


def write_outputs(
    records: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    metrics_path: str | Path,
    plots_path: str | Path,
    trials_path: str | Path,
) -> dict[str, Any]:
    """metrics/ablation.json, plots/ablation_ratio.csv and outputs/ablation/trials.json."""
    metrics: dict[str, Any] = {
        "images": settings["images"],
        "random_weights": int(settings["random_weights"]),
        "generated_data": int(settings["generated_data"]),
        **{key: int(value) for key, value in settings.get("numerics", {}).items()},
    }
    by_block: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_block.setdefault(block_key(record["block"]), []).append(record)
    for key, block_records in by_block.items():
        entry: dict[str, Any] = {}
        baseline = _baseline(block_records)
        if baseline:
            entry["baseline_acc"] = baseline
        for record in block_records:
            entry[record.get("channel_set", "run")] = block_metrics(record)
        metrics[key] = entry
    with atomic_path(plots_path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(PLOT_FIELDS))
        writer.writeheader()
        for record in records:
            for row in plot_rows(record):
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_json(metrics_path, metrics)
    trials = {
        key: {r.get("channel_set", "run"): r for r in block_records}
        for key, block_records in by_block.items()
    }
    write_json(trials_path, {"settings": dict(settings), "blocks": trials})
    return metrics


# ----------------------------------------------------------------------------------------------- stage


def read_passing(path: str | Path) -> dict[str, list[int]]:
    """passing.json ({"2.1": [...]}, keys in any block spelling) as {"2.1": [...]}."""
    raw = read_json(path)
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: expected a mapping of block to channel list")
    return {parse_block(k): [int(c) for c in v] for k, v in raw.items()}


def post_means_of(block: str, root: str | Path) -> np.ndarray:
    data = load_npz(artifacts.natural_file(block, Path(root)))
    return data["mean"][TAP_KINDS.index("post")].astype(np.float64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outputs",
        default=str(artifacts.OUTPUTS),
        help="outputs root: reads eval/, natural/, criteria/passing.json, writes ablation/ (default outputs)",
    )
    parser.add_argument("--metrics", default=str(artifacts.METRICS / "ablation.json"))
    parser.add_argument(
        "--plots", default=str(artifacts.ABLATION_PLOT), help="the Eq. 3 ratio CSV for dvc plots"
    )


def channel_sets_of(
    params: AblateParams, passing: Mapping[str, Sequence[int]]
) -> dict[tuple[str, str], list[int]]:
    """``{(block, channel set): channels}`` in params order: ``run`` from passing.json, ``published`` from
    rsi.paper.PUBLISHED_PASSING."""
    sets = {}
    for block in params.blocks:
        for name in params.channel_sets:
            sets[block, name] = list(passing[block] if name == "run" else paper.PUBLISHED_PASSING[block])
    return sets


def _check_inputs(
    raw: Mapping[str, Any], params: AblateParams, source: str, outputs: Path
) -> dict[str, list[int]]:
    """Every block has a screening rule, passing channels (for the run set) and mean activations."""
    missing = [b for b in params.blocks if b not in params.screening]
    if missing:
        raise ParamsError(
            f"{source}: ablate.screening has no entry for {block_key(missing[0])} "
            f"(add {block_key(missing[0])}: {{rule: within, tolerance: 1.0}})"
        )
    passing = read_passing(artifacts.passing_file(outputs))
    unprobed = [block for block in params.blocks if block not in passing]
    if unprobed and "run" in params.channel_sets:
        raise AblationError(
            f"ablate.blocks lists {', '.join(unprobed)}, which {artifacts.passing_file(outputs)} does not "
            f"cover (probed: {', '.join(passing) or 'none'}): add them to criteria.blocks and run "
            "`dvc repro` (or `rsi criteria`), or remove them from ablate.blocks"
        )
    natural_blocks = load_section(raw, "natural", NaturalParams, source=source).blocks
    unmeasured = [b for b in params.blocks if b not in natural_blocks]
    if unmeasured:
        raise AblationError(
            f"ablate.blocks lists {', '.join(unmeasured)}, whose mean activations the natural stage does not "
            f"measure (natural.blocks: {', '.join(natural_blocks)}): add them to natural.blocks"
        )
    return passing


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "ablate", AblateParams, source=args.params)
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    seed = top_level_seed(raw, args.params)
    outputs = Path(args.outputs)
    sets = channel_sets_of(params, _check_inputs(raw, params, args.params, outputs))
    means = {block: post_means_of(block, outputs) for block in params.blocks}
    device = resolve_device(model_params.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    numerics = full_float32(params.tf32)
    distributed.init()
    eval_set = load_eval(artifacts.eval_dir(outputs))
    model = load_model(model_params.weights, model_params.arch).to(device)
    records = []
    for (block, name), channels in sets.items():
        record = ablate_block(
            model,
            eval_set,
            block,
            channels,
            means[block],
            params,
            seed=seed,
            device=device,
            arch=model_params.arch,
            channel_set=name,
        )
        if "skipped" in record and distributed.is_main():
            print(f"ablate {block} ({CHANNEL_SET_LABELS[name]}): skipped ({record['skipped']})")
        records.append(record)
    if distributed.is_main():
        settings = {
            **as_dict(params),
            "crops": {str(p): crop_of(p, params.crop_rule, eval_set) for p in (0, *params.percents)},
            "seed": seed,
            "weights": describe_weights(model_params.weights, model_params.arch),
            "random_weights": is_random(model_params.weights),
            "generated_data": eval_set.generated,
            "images": len(eval_set),
            "numerics": numerics,
        }
        write_outputs(
            records,
            settings,
            metrics_path=args.metrics,
            plots_path=args.plots,
            trials_path=outputs / "ablation" / "trials.json",
        )
        print(
            f"ablate: {', '.join(params.blocks)} ({', '.join(params.channel_sets)}) on {len(eval_set)} images → {args.metrics}"
        )
    distributed.barrier()
