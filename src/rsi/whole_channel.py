"""`rsi whole-channel`: the whole-channel FZs (paper Fig. 1, row 2) of the channels `rsi figures` draws.

Owns the rendering of whole-channel FZs for the figures: the channels come from :mod:`rsi.channel_plan`
(the plan the figures stage draws), the images from :func:`rsi.fz.render_channel_fz` with the block's FZ
settings, and the files from :mod:`rsi.artifacts.whole_channel`. With ``figures.whole_channel: false`` it
renders nothing and writes only ``settings.json``. Under fz.tf32 (declared), as the center-neuron FZs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from rsi import artifacts
from rsi.artifacts.passing import read_passing
from rsi.artifacts.whole_channel import (
    WholeChannelFZs,
    whole_channel_dir,
    write_whole_channel,
)
from rsi.channel_plan import FiguresParams, column_tap, plan_channels, probed_of
from rsi.config import load_section, load_seed, read_params
from rsi.fz import FZParams, load_fz_params, render_channel_fz
from rsi.fz_param import to_storage
from rsi.runtime import ModelParams, full_float32, write_json
from rsi.taps import TAP_KINDS


def render_block(
    model: nn.Module, block: str, channels: Sequence[int], fz: FZParams, *, seed: int, weights: str
) -> WholeChannelFZs:
    """The whole-channel FZs of ``channels`` of ``block`` at its In, Pre and Post taps."""
    stacked = []
    for kind in TAP_KINDS:
        images = render_channel_fz(
            model, column_tap(block, kind), list(channels), fz, seed=seed, weights=weights
        )
        if len(images) != len(channels):
            raise RuntimeError(
                f"render_channel_fz returned {len(images)} images for {len(channels)} channels"
            )
        # value·255 truncated, as FZs are stored (and as the figures always drew them)
        stacked.append(to_storage(np.clip(images, 0.0, 1.0), "uint8"))
    return WholeChannelFZs(block, tuple(channels), np.stack(stacked))


def render_plan(
    model: nn.Module, plan: Mapping[str, Sequence[int]], fz: FZParams, *, seed: int, weights: str, root: Path
) -> list[Path]:
    """Every planned block's whole-channel FZs, written under ``root``; the files written."""
    written = []
    for block, channels in plan.items():
        print(f"rendering whole-channel FZs of block {block}: channels {list(channels)}", flush=True)
        record = render_block(model, block, channels, fz, seed=seed, weights=weights)
        written.append(write_whole_channel(record, root))
    return written


def _clean(out_dir: Path) -> None:
    """Remove earlier files so the folder holds only this run's blocks."""
    for stale in out_dir.glob("*.npz"):
        stale.unlink()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the flags every stage has: --params and --outputs (rsi.cli)."""


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    figures = load_section(raw, "figures", FiguresParams, source=str(args.params))
    fz = load_fz_params(raw, source=str(args.params))
    model_params = load_section(raw, "model", ModelParams, source=str(args.params))
    root = Path(args.outputs)
    plan = {}
    if figures.whole_channel:
        passing = read_passing(artifacts.passing_file(root)).blocks
        chosen = plan_channels(figures, passing, probed_of(raw, passing, model_params.arch))
        plan = {block: chosen.channels(block) for block in chosen.blocks}
    numerics = full_float32()  # the FZs then render under fz.tf32 (declared), as in stage fz
    out_dir = whole_channel_dir(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir)
    written = []
    if plan:
        from rsi.model import load_model
        from rsi.runtime import resolve_device

        model = load_model(model_params.weights, model_params.arch).to(resolve_device(model_params.device))
        seed = load_seed(raw, source=str(args.params))
        written = render_plan(model, plan, fz, seed=seed, weights=model_params.weights, root=root)
    write_json(out_dir / "settings.json", {"numerics": numerics, "whole_channel_fz_tf32": fz.tf32})
    print(f"wrote {len(written)} whole-channel FZ files under {out_dir}")
