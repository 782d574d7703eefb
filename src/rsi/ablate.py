"""`rsi ablate`: top-1 accuracy with a block's criteria-passing channels mean-ablated at Post, against
screened random non-passing channel sets of the same size, under the scale sweep (paper section 4, Eq. 3).

Owns the ``ablate`` params, the screening of random sets (:func:`screen_random_sets`), the scale sweep
(:func:`scale_sweep`), their composition per block and channel set (:func:`ablate_block`, a typed
:class:`~rsi.artifacts.ablation.SetResult`) and Eq. 3 (:func:`eq3_ratio`, :func:`ablation_metrics`). The
files it writes and their one writer and reader: :mod:`rsi.artifacts.ablation`. Channel sets, conditions,
crops, screening rules, speed and numerics are derived in ``docs/ablate.md``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm import tqdm

from rsi import artifacts, distributed, paper
from rsi.ablate_params import RULES, AblateParams
from rsi.artifacts.ablation import (
    ABLATION_METRICS,
    CHANNEL_SET_LABELS,
    AblationMetrics,
    BlockMetrics,
    RandomSet,
    ScaleMetrics,
    ScaleResult,
    SetMetrics,
    SetResult,
    accepted_sets,
    trials_file,
    write_ablation,
)
from rsi.artifacts.natural import read_natural
from rsi.artifacts.passing import read_passing
from rsi.config import (
    ParamsError,
    as_dict,
    load_section,
    load_seed,
    natural_blocks,
    read_params,
)
from rsi.eval_set import EvalSet, load_eval
from rsi.model import describe_weights, is_random, load_model
from rsi.params_check import check_ablated_measured
from rsi.runtime import (
    ModelParams,
    describe_device,
    full_float32,
    keyed_generator,
    resolve_device,
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

TIE = 1e-9  # accuracies (percentage points) closer than this are equal in screening


class AblationError(ValueError):
    """The ablation cannot go on (e.g. too few random sets pass the screening); the message says why."""


# ----------------------------------------------------------------------------------------------- pure parts


def screen(random_acc: float, passing_acc: float, rule: str = "no_higher", tolerance: float = 0.0) -> bool:
    """Is a random set with no-scale accuracy ``random_acc`` an acceptable control (docs/ablate.md)?
    ``no_higher``: random <= passing; ``within``: random <= passing + tolerance; ``lower``: random < passing
    (accuracies within TIE points count as equal)."""
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


def trials_below_no_scale(scales: Mapping[int, ScaleResult]) -> int:
    """The trials whose every scaled ratio passing_acc_p / random_acc_(t,p) lies below the same trial's
    no-scale ratio (percent 0): the paper's "consistent across scale percentages and different random
    channel samples" (§4), trial by trial. A ratio with a zero random accuracy is inf or nan: a trial
    with such a ratio, at any scale or at none, does not count."""
    no_scale, scaled = scales[0], [scales[p] for p in sorted(scales) if p != 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        base = np.float64(no_scale.passing_acc) / np.asarray(no_scale.random_accs, dtype=np.float64)
        below = np.isfinite(base)  # an undefined no-scale ratio (a random accuracy of 0) is no claim
        for scale in scaled:
            below &= np.float64(scale.passing_acc) / np.asarray(scale.random_accs, dtype=np.float64) < base
    return int(below.sum())


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


@dataclass(frozen=True)
class Screening:
    """The screening of one block and channel set: every attempt in attempt order (accepted or not) and
    the no-scale top-1 % of the unablated model and of the passing set, which each attempt was compared with."""

    attempts: tuple[RandomSet, ...]
    baseline_acc: float
    passing_acc: float


def screen_random_sets(
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
) -> Screening:
    """Random sets drawn in attempt order and screened at no scale against the passing set (``fixed`` =
    baseline, passing: evaluated with the first group) until ``params.trials`` are accepted; an
    AblationError after ``params.max_attempts``. Attempts past the last acceptance are discarded."""
    rule = params.screening[block]
    size = len(fixed[1].channels)
    attempts: list[RandomSet] = []
    accepted = 0
    baseline_acc = passing_acc = math.nan
    attempt = 0
    while accepted < params.trials:
        if attempt >= params.max_attempts:
            best = min((a.no_scale_acc for a in attempts), default=math.nan)
            raise AblationError(
                f"ablate {block} ({channel_set} channels): only {accepted} of {params.trials} random "
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
        first = attempt == 0
        correct, total = evaluate(
            model,
            eval_set,
            block,
            [*fixed, *conditions] if first else conditions,
            [no_scale],
            desc=f"ablate {block} {channel_set}: screening",
            **kwargs,
        )
        accuracies = _accuracy(correct[0], total)
        if first:
            baseline_acc, passing_acc = float(accuracies[0]), float(accuracies[1])
            accuracies = accuracies[2:]
        for a, drawn, accuracy in zip(group, sets, accuracies, strict=True):
            if accepted == params.trials:
                break  # surplus of the last group: discarded, so results do not depend on screen_batch
            ok = screen(float(accuracy), passing_acc, rule.rule, rule.tolerance)
            attempts.append(RandomSet(a, tuple(drawn), float(accuracy), ok))
            accepted += ok
        attempt = group[-1] + 1
    return Screening(tuple(attempts), baseline_acc, passing_acc)


def scale_sweep(
    model: nn.Module,
    eval_set: EvalSet,
    block: str,
    conditions: Sequence[Condition],
    crops: Mapping[int, int],
    **kwargs: Any,
) -> dict[int, ScaleResult]:
    """Top-1 % per scale percent (its crop in ``crops``) of ``conditions`` = baseline, passing set, then
    the trials' random sets, all in one pass over the evaluation set that shares the prefix."""
    correct, total = evaluate(model, eval_set, block, conditions, list(crops.values()), **kwargs)
    accuracies = _accuracy(correct, total)
    return {
        percent: ScaleResult(
            crop=crop,
            baseline_acc=float(accuracies[s, 0]),
            passing_acc=float(accuracies[s, 1]),
            random_accs=tuple(float(a) for a in accuracies[s, 2:]),
        )
        for s, (percent, crop) in enumerate(crops.items())
    }


def _check_block(block: str, passing: Sequence[int], post_means: np.ndarray, channels: int) -> None:
    """Post means for every channel of the block, and passing channels that exist."""
    if post_means.shape != (channels,):
        raise AblationError(
            f"block {block}: Post means have shape {post_means.shape}, expected ({channels},): "
            f"{artifacts.natural_file(block)} was made for another model.arch; re-run `rsi natural`"
        )
    if passing and not 0 <= passing[0] <= passing[-1] < channels:
        raise AblationError(f"block {block}: passing channels must be in 0..{channels - 1}, got {passing}")


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
) -> SetResult:
    """Screening (:func:`screen_random_sets`) and the sweep (:func:`scale_sweep`) for one block of
    ``model`` (a torchvision ``arch``) and one channel set (``passing``: that set's channels)."""
    block = parse_block(block, arch)
    channels = num_channels(block, arch)
    passing = sorted({int(c) for c in passing})
    post_means = np.asarray(post_means, dtype=np.float64)
    _check_block(block, passing, post_means, channels)
    non_passing = [c for c in range(channels) if c not in set(passing)]
    about = SetResult(
        block=block,
        channel_set=channel_set,
        n_channels=channels,
        passing=tuple(passing),
        passing_means=tuple(float(post_means[c]) for c in passing),
        images=len(eval_set),
    )
    if not passing or len(non_passing) < len(passing):
        why = "no passing channels" if not passing else f"only {len(non_passing)} non-passing channels"
        return replace(about, skipped=why)
    if block not in params.screening:
        raise ParamsError(
            f"ablate.screening has no entry for {block_key(block)}: add e.g. "
            f"{block_key(block)}: {{rule: within, tolerance: 1.0}}"
        )
    rule = params.screening[block]
    kwargs = {"batch_size": params.batch_size, "device": device, "progress": progress}
    no_scale = crop_of(0, params.crop_rule, eval_set)
    baseline = Condition("baseline")
    passing_condition = Condition.mean_ablation("passing", passing, post_means)
    try:
        screening = screen_random_sets(
            model, eval_set, block, non_passing, post_means, params,
            [baseline, passing_condition], no_scale, seed=seed, channel_set=channel_set, **kwargs,
        )  # fmt: skip
    except AblationError as error:
        if params.on_screening_failure == "error":
            raise
        # every rank screened the same sets (the accuracies are all-reduced), so every rank skips
        return replace(about, skipped=f"screening failed: {error}")
    trials = accepted_sets(screening.attempts)
    crops = {p: crop_of(p, params.crop_rule, eval_set) for p in params.percents}
    scales = scale_sweep(
        model,
        eval_set,
        block,
        [baseline, passing_condition]
        + [Condition.mean_ablation(f"random_{t.attempt}", t.channels, post_means) for t in trials],
        crops,
        desc=f"ablate {block} {channel_set}: {len(crops)} scales x {2 + len(trials)} conditions",
        **kwargs,
    )
    unscaled = ScaleResult(
        no_scale, screening.baseline_acc, screening.passing_acc, tuple(t.no_scale_acc for t in trials)
    )
    return replace(
        about,
        screening=(rule.rule, rule.tolerance),
        scales={0: unscaled, **scales},
        attempts=screening.attempts,
        trial_means=tuple(tuple(float(post_means[c]) for c in t.channels) for t in trials),
    )


# ----------------------------------------------------------------------------------------------- outputs


def _number(value: float) -> float | None:
    """JSON-safe: non-finite (a zero random accuracy) → null."""
    return float(value) if math.isfinite(value) else None


def _scale_metrics(result: ScaleResult) -> ScaleMetrics:
    ratio, sem = eq3_ratio(result.passing_acc, result.random_accs)
    return ScaleMetrics(result.passing_acc, float(np.mean(result.random_accs)), _number(ratio), _number(sem))


def set_metrics(result: SetResult) -> SetMetrics:
    """The ``metrics/ablation.json`` entry of one block and channel set: per scale the passing-set
    accuracy, the random sets' mean accuracy, the Eq. 3 ratio and its SEM (a skipped set: the counts)."""
    if result.skipped is not None:
        return SetMetrics(len(result.passing), result.n_channels)
    return SetMetrics(
        len(result.passing),
        result.n_channels,
        trials=len(result.trials),
        attempts=len(result.attempts),
        trials_below=trials_below_no_scale(result.scales),
        scales={percent: _scale_metrics(scale) for percent, scale in result.scales.items()},
    )


def ablation_metrics(results: Sequence[SetResult], settings: Mapping[str, Any]) -> AblationMetrics:
    """Eq. 3 per block, channel set and scale, and the run's labels from ``settings`` (images,
    random_weights, generated_data, numerics). The baseline is the same for every set of a block: taken
    from its first ablated one."""
    by_block: dict[str, list[SetResult]] = {}
    for result in results:
        by_block.setdefault(result.block, []).append(result)
    blocks = {}
    for block, block_results in by_block.items():
        ablated = [r for r in block_results if r.skipped is None]
        baseline = {p: s.baseline_acc for p, s in ablated[0].scales.items()} if ablated else {}
        blocks[block] = BlockMetrics(baseline, {r.channel_set: set_metrics(r) for r in block_results})
    return AblationMetrics(
        images=int(settings["images"]),
        random_weights=bool(settings["random_weights"]),
        generated_data=bool(settings["generated_data"]),
        numerics={key: bool(value) for key, value in settings["numerics"].items()},
        blocks=blocks,
    )


# ----------------------------------------------------------------------------------------------- stage


def post_means_of(block: str, root: Path, weights: str, count: int) -> np.ndarray:
    """The mean Post activation per channel of ``block`` over the evaluation set (stage natural): the
    value a mean ablation writes into a channel. The file must be of this run's ``weights`` (as
    rsi.model.describe_weights labels them) and its ``count`` images."""
    stats = read_natural(block, root, weights=weights, count=count)
    return stats.mean[TAP_KINDS.index("post")].astype(np.float64)


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = (
    "outputs root: reads eval/, natural/, criteria/passing.json, writes ablation/ (default outputs)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        default=str(ABLATION_METRICS),
        help=f"the accuracies and Eq. 3 ratios (default {ABLATION_METRICS})",
    )
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
    """Every block has passing channels (for the run set) and mean activations (a screening rule:
    AblateParams checks it)."""
    passing = read_passing(artifacts.passing_file(outputs)).blocks
    unprobed = [block for block in params.blocks if block not in passing]
    if unprobed and "run" in params.channel_sets:
        raise AblationError(
            f"ablate.blocks lists {', '.join(unprobed)}, which {artifacts.passing_file(outputs)} does not "
            f"cover (probed: {', '.join(passing) or 'none'}): add them to criteria.blocks and run "
            "`dvc repro` (or `rsi criteria`), or remove them from ablate.blocks"
        )
    check_ablated_measured(params.blocks, natural_blocks(raw, source=source), source)
    return passing


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "ablate", AblateParams, source=args.params)
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    seed = load_seed(raw, source=args.params)
    outputs = Path(args.outputs)
    sets = channel_sets_of(params, _check_inputs(raw, params, args.params, outputs))
    eval_set = load_eval(artifacts.eval_dir(outputs))
    weights = describe_weights(model_params.weights, model_params.arch)
    means = {block: post_means_of(block, outputs, weights, len(eval_set)) for block in params.blocks}
    device = resolve_device(model_params.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    numerics = full_float32(params.tf32)
    distributed.init()
    model = load_model(model_params.weights, model_params.arch).to(device)
    results = []
    for (block, name), channels in sets.items():
        result = ablate_block(
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
        if result.skipped is not None and distributed.is_main():
            print(f"ablate {block} ({CHANNEL_SET_LABELS[name]}): skipped ({result.skipped})")
        results.append(result)
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
            "device": describe_device(device),
        }
        write_ablation(
            ablation_metrics(results, settings),
            results,
            settings,
            metrics_path=Path(args.metrics),
            plots_path=Path(args.plots),
            trials_path=trials_file(outputs),
        )
        print(
            f"ablate: {', '.join(params.blocks)} ({', '.join(params.channel_sets)}) on {len(eval_set)} images → {args.metrics}"
        )
    distributed.barrier()
