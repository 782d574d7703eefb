"""`rsi natural-criteria`: a second scale-invariance verdict per channel, from natural images.

Ours, not the paper's (``criteria.natural_images``): Eq. 1 and Eq. 2 with each channel's top-k natural
images in place of its FZs, derived in docs/natural_criteria.md. The verdicts are
:func:`natural_eq1_scale_gain` and :func:`natural_eq2_post_ratio` (pure functions); :func:`block_responses`
computes the responses (one forward per distinct top-k image, full float32).

Outputs (written and read only through :mod:`rsi.artifacts.natural_criteria`): per block the responses
and verdicts, ``passing.json`` (channels passing the natural test, and ``both``: it and the FZ criteria),
``settings.json`` and ``metrics/criteria_natural.json`` (per block: counts, and the overlap with the FZ
verdicts over the channels the FZ criteria probed: ``both`` and ``jaccard``). Off (the default) it writes
``{}`` metrics and a note, and computes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsi import artifacts
from rsi.artifacts.criteria import read_criteria_table
from rsi.artifacts.natural import read_natural
from rsi.artifacts.natural_criteria import (
    NaturalCriteriaBlock,
    NaturalCriteriaMetrics,
    NaturalCriteriaSettings,
    NaturalPassing,
    natural_criteria_dir,
    write_natural_criteria_block,
    write_natural_criteria_metrics,
    write_natural_criteria_settings,
    write_natural_passing,
)
from rsi.artifacts.passing import Passing
from rsi.config import SCALE_FRACTION, load_scale_fraction, load_section, read_params
from rsi.criteria import CriteriaParams, Eq2Result, eq2_post_ratio, jaccard
from rsi.eval_set import EvalSet, load_eval
from rsi.model import describe_weights, load_model
from rsi.natural import center_values
from rsi.natural_params import NaturalParams
from rsi.runtime import ModelParams, full_float32, resolve_device
from rsi.taps import TAP_KINDS, Tap, forward_taps
from rsi.transforms import ablation_view, scale_crop

RESPONSES: tuple[str, ...] = ("pre_of_in_top", "pre_of_scaled_in_top", "post_of_in_top", "post_of_pre_top")


# ------------------------------------------------------------------------------------- the verdicts


def _values(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def natural_eq1_scale_gain(pre_of_in_top: Any, pre_of_scaled_in_top: Any, strict: bool = True) -> np.ndarray:
    """Eq. 1 (natural, ours): mean_k ReLU(Pre_c(X)) < mean_k Pre_c(S(X)) over the In tap's top-k images X.

    Inputs (..., k): the last axis runs over the k images. ReLU applies per image, before the mean (a
    negative response to one image cannot offset a positive one). ``strict=False``: <= instead.
    """
    base = np.maximum(_values(pre_of_in_top), 0.0).mean(axis=-1)
    scaled = _values(pre_of_scaled_in_top).mean(axis=-1)
    return scaled > base if strict else scaled >= base


def natural_eq2_post_ratio(
    post_of_in_top: Any, post_of_pre_top: Any, low: float = 2 / 3, high: float = 3 / 2, strict: bool = True
) -> Eq2Result:
    """Eq. 2 (natural, ours): low < mean_k Post_c(In top-k) / mean_k Post_c(Pre top-k) < high.

    Inputs (..., k). The means go through the FZ Eq. 2's rule (:func:`rsi.criteria.eq2_post_ratio`): a
    mean <= 0 fails and is flagged ``nonpositive``; the ratio is NaN where the denominator is <= 0.
    """
    numerator = _values(post_of_in_top).mean(axis=-1)
    denominator = _values(post_of_pre_top).mean(axis=-1)
    return eq2_post_ratio(numerator, denominator, low, high, strict=strict)


@dataclass(frozen=True)
class NaturalVerdicts:
    """One block's natural-image verdicts, every channel."""

    block: str
    channels: np.ndarray
    eq1: np.ndarray
    eq2: Eq2Result
    passes: np.ndarray

    @property
    def passing(self) -> list[int]:
        return [int(c) for c in self.channels[self.passes]]


def natural_verdicts(
    block: str, responses: dict[str, np.ndarray], channels: np.ndarray, params: CriteriaParams
) -> NaturalVerdicts:
    """Both natural tests on a block's responses (keys :data:`RESPONSES`, (C, k) each)."""
    eq1 = natural_eq1_scale_gain(
        responses["pre_of_in_top"], responses["pre_of_scaled_in_top"], strict=params.strict
    )
    eq2 = natural_eq2_post_ratio(
        responses["post_of_in_top"],
        responses["post_of_pre_top"],
        params.eq2_low,
        params.eq2_high,
        strict=params.strict,
    )
    return NaturalVerdicts(block, np.asarray(channels), eq1, eq2, eq1 & eq2.passes)


def overlap(
    natural: NaturalVerdicts, fz_probed: Sequence[int], fz_passing: Sequence[int]
) -> dict[str, float]:
    """The metrics of a block: natural counts over every channel, and the overlap with the FZ verdicts
    over the channels the FZ criteria probed (``fz_max_channels`` may have left some out)."""
    channels = int(natural.channels.size)
    passing = int(natural.passes.sum())
    probed = set(int(c) for c in fz_probed)
    natural_probed = set(natural.passing) & probed
    fz_set = set(int(c) for c in fz_passing)
    return {
        "channels": channels,
        "passing": passing,
        "percent": round(100.0 * passing / channels, 4) if channels else 0.0,
        "eq1_pass": int(natural.eq1.sum()),
        "eq2_pass": int(natural.eq2.passes.sum()),
        "eq2_nonpositive": int(natural.eq2.nonpositive.sum()),
        "fz_probed": len(probed),
        "fz_passing": len(fz_set),
        "natural_passing_probed": len(natural_probed),
        "both": len(natural_probed & fz_set),
        "jaccard": round(jaccard(natural_probed, fz_set), 6),
    }


# ------------------------------------------------------------------------------------- the responses


def center_responses(
    model: nn.Module,
    eval_set: EvalSet,
    indices: np.ndarray,
    taps: Sequence[Tap],
    *,
    scale_fraction: float | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[Tap, np.ndarray]:
    """(len(indices), C) center neurons of ``taps`` for the evaluation images at ``indices``, seen as in
    stage natural (224 center crop of the cache, normalised), then S with ``scale_fraction`` if given."""
    chunks: dict[Tap, list[np.ndarray]] = {tap: [] for tap in taps}
    with torch.inference_mode():
        for index, images, _ in eval_set.batches(indices, batch_size, device):
            view = ablation_view(images, eval_set.view_size, eval_set.view_size, eval_set.resized_of(index))
            if scale_fraction is not None:
                view = scale_crop(view, scale_fraction)
            values = forward_taps(model, view, list(taps), detach=True)
            for tap in taps:
                chunks[tap].append(center_values(values, tap).float().cpu().numpy())
    return {tap: np.concatenate(parts) for tap, parts in chunks.items()}


def block_responses(
    model: nn.Module,
    eval_set: EvalSet,
    block: str,
    topk: np.ndarray,
    *,
    scale_fraction: float = SCALE_FRACTION,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """The responses (C, k) of :data:`RESPONSES` from stage natural's ``topk`` (3, C, k) of ``block``:
    Pre_c and Post_c to the In tap's top-k, Pre_c to their S, Post_c to the Pre tap's top-k."""
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 3 or topk.shape[0] != len(TAP_KINDS):
        raise ValueError(
            f"block {block}: top-k of shape {topk.shape}, expected (3, C, k): "
            f"{artifacts.natural_file(block)} is not stage natural's; re-run `rsi natural`"
        )
    if topk.min() < 0 or topk.max() >= len(eval_set):
        raise ValueError(
            f"block {block}: top-k indices outside the {len(eval_set)} cached images: re-run `rsi natural`"
        )
    in_top, pre_top = topk[TAP_KINDS.index("in")], topk[TAP_KINDS.index("pre")]
    pre, post = Tap(block, "pre"), Tap(block, "post")
    shown = np.unique(np.concatenate([in_top.ravel(), pre_top.ravel()]))
    enlarged = np.unique(in_top)
    kwargs = {"batch_size": batch_size, "device": device}
    plain = center_responses(model, eval_set, shown, [pre, post], **kwargs)
    scaled = center_responses(model, eval_set, enlarged, [pre], scale_fraction=scale_fraction, **kwargs)[pre]
    channel = np.arange(topk.shape[1])[:, None]
    return {
        "pre_of_in_top": plain[pre][np.searchsorted(shown, in_top), channel],
        "pre_of_scaled_in_top": scaled[np.searchsorted(enlarged, in_top), channel],
        "post_of_in_top": plain[post][np.searchsorted(shown, in_top), channel],
        "post_of_pre_top": plain[post][np.searchsorted(shown, pre_top), channel],
    }


# ------------------------------------------------------------------------------------------- the stage


def fz_verdicts(block: str, root: Path) -> tuple[list[int], list[int]]:
    """(probed, passing) channels of the FZ criteria of a block, from ``outputs/criteria/<layerL_K>.csv``."""
    table = read_criteria_table(artifacts.criteria_table(block, root))
    return table.channels, table.passing


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = (
    "outputs root: reads eval, natural and criteria, writes natural_criteria (default outputs); "
    "the metrics go to metrics/criteria_natural.json"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the flags every stage has: --params and --outputs (rsi.cli)."""


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    criteria = load_section(raw, "criteria", CriteriaParams, source=args.params)
    root = Path(args.outputs)
    out_dir = natural_criteria_dir(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.npz"), *out_dir.glob("*.json"), *out_dir.glob("README.txt")]:
        stale.unlink()  # outside DVC (which empties outs first) an earlier run's verdicts would linger
    if not criteria.natural_images:
        (out_dir / "README.txt").write_text("criteria.natural_images is false: nothing computed\n")
        write_natural_passing(NaturalPassing(Passing({}), Passing({})), root)  # readers need no guess
        write_natural_criteria_metrics(NaturalCriteriaMetrics({}))
        print("criteria.natural_images is false: no natural-image criteria")
        return
    scale_fraction = load_scale_fraction(raw, source=args.params)  # S as stage activations applies it
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    batch_size = load_section(
        raw, "natural", NaturalParams, source=args.params
    ).batch_size  # declared: float rounding
    eval_set = load_eval(artifacts.eval_dir(root))
    weights = describe_weights(model_params.weights, model_params.arch)
    stored = {
        block: read_natural(block, root, weights=weights, count=len(eval_set)) for block in criteria.blocks
    }
    fz = {block: fz_verdicts(block, root) for block in criteria.blocks}
    device = resolve_device(model_params.device)
    model = load_model(model_params.weights, model_params.arch).to(device)
    numerics = full_float32()  # full float32 on CUDA, as every result stage
    metrics: dict[str, dict[str, float]] = {}
    natural: dict[str, list[int]] = {}
    both: dict[str, list[int]] = {}
    for block in criteria.blocks:
        topk = stored[block].topk
        responses = block_responses(
            model, eval_set, block, topk, scale_fraction=scale_fraction, batch_size=batch_size, device=device
        )
        channels = np.arange(topk.shape[1], dtype=np.int64)
        verdicts = natural_verdicts(block, responses, channels, criteria)
        record = NaturalCriteriaBlock(
            channels,
            **responses,
            eq1=verdicts.eq1,
            eq2=verdicts.eq2.passes,
            eq2_ratio=verdicts.eq2.ratio,
            passes=verdicts.passes,
        )
        write_natural_criteria_block(block, record, root)
        metrics[block] = entry = overlap(verdicts, *fz[block])
        natural[block], both[block] = verdicts.passing, sorted(set(verdicts.passing) & set(fz[block][1]))
        print(
            f"block {block}: {entry['passing']}/{entry['channels']} channels pass on natural images; "
            f"{entry['both']} pass both (Jaccard with the FZ verdicts {entry['jaccard']:.3f})"
        )
    write_natural_passing(NaturalPassing(Passing(natural), Passing(both)), root)
    k = int(next(iter(stored.values())).topk.shape[-1]) if stored else 0
    write_natural_criteria_settings(NaturalCriteriaSettings(scale_fraction, numerics, k), root)
    write_natural_criteria_metrics(NaturalCriteriaMetrics(metrics))
