"""`rsi rerun-fz`: the authors' re-render of a channel whose two Post responses are both <= 0 (optional).

The authors' criteria loop (stream_inspect.py l. 424) asserts Post_c(X̂_Pre_c) >= 0 or Post_c(X̂_In_c) >= 0
("Rerun FZ on neuron n"); where both were negative they re-rendered the channel's FZs before counting.
DESIGN.md: report how many channels hit that case (rsi.criteria counts them), and offer the re-render with
the next seed as a parameter, off by default: ``criteria.rerun_fz: N`` re-renders each such channel of
every ``criteria.blocks`` block with seed + 1, then + 2, … up to seed + N, until a rendering escapes the
case. Each re-render draws its initial noise and transforms from its own keyed stream
(``TapSpec.draw_stream``), so it is not stage stability's rendering of that seed. Re-rendered are X̂_In and
X̂_Pre, the two FZs those Post responses read (X̂_Post enters no criterion and stays), with the main run's
settings (rsi.fz.TapSpec, the channels in batches of ``fz.batch_channels``); their activations are measured
as stage activations measures them. The first rendering that escapes replaces the channel's activations in
stage criteria; a channel that never escapes keeps its first rendering and fails Eq. 2, as it would have.
With N = 0 the file lists the channels that hit and replaces none, and nothing is rendered. Further FZ
seeds (stage stability) are not re-rendered: the authors ran one seed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsi import artifacts
from rsi.activations import ActivationsParams, BlockFZs, TapReader, make_reader, measure_block
from rsi.artifacts import OUTPUTS
from rsi.artifacts.activations import read_activations
from rsi.artifacts.fz import FZFile, read_fz
from rsi.artifacts.rerun import Rerun, no_reruns, rerun_file, write_rerun
from rsi.config import load_section, load_seed, read_params
from rsi.criteria import CriteriaParams, rerun_hits
from rsi.fz import FZParams, TapSpec, render_channels, run_device
from rsi.fz_param import to_storage
from rsi.model import load_model
from rsi.runtime import ModelParams, full_float32
from rsi.taps import Tap, arch_of

RERUN_STREAM = "rerun"

# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = "outputs root: reads activations and fz, writes rerun (default outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the flags every stage has: --params and --outputs (rsi.cli)."""


def _rendered(
    model: nn.Module,
    tap: Tap,
    fz: FZParams,
    channels: list[int],
    seed: int,
    weights: str,
    device: torch.device,
) -> FZFile:
    """The FZs of ``channels`` of ``tap`` at FZ seed ``seed``, as stage fz stores them."""
    # its own draw stream: seed + 1 here must not be stage stability's seed + 1 rendering of the channel
    spec = replace(
        TapSpec.of(tap, fz, seed=seed, weights=weights, arch=arch_of(model)), draw_stream=RERUN_STREAM
    )
    result = render_channels(model, spec, channels, device=device)
    return FZFile(
        to_storage(result.images, fz.storage), result.channels, result.objective, result.initial_objective
    )


def rerun_block(
    model: nn.Module,
    block: str,
    hits: np.ndarray,
    fz: FZParams,
    measure: ActivationsParams,
    read: TapReader,
    *,
    seed: int,
    tries: int,
    weights: str,
    device: torch.device,
    outputs: Path = OUTPUTS,
) -> Rerun:
    """Re-render the ``hits`` of ``block`` with FZ seeds ``seed`` + 1 … + ``tries`` until each escapes the
    authors' case; the record of the replacements (module docstring)."""
    post = read_fz(artifacts.fz_file(Tap(block, "post"), outputs))
    post_position = {int(c): i for i, c in enumerate(post.channels)}
    taps = {"in": artifacts.in_fz_source(block), "pre": Tap(block, "pre")}
    pending = [int(c) for c in hits]
    replaced: dict[int, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}  # seed, acts, In, Pre images
    for attempt in range(seed + 1, seed + tries + 1):
        if not pending:
            break
        print(f"rerun-fz {block}: re-rendering {len(pending)} channels with FZ seed {attempt}")
        files = {
            kind: _rendered(model, tap, fz, pending, attempt, weights, device) for kind, tap in taps.items()
        }
        order = np.arange(len(pending))
        sources = {kind: (file, order) for kind, file in files.items()}
        sources["post"] = (post, np.asarray([post_position[c] for c in pending], dtype=np.int64))
        fzs = BlockFZs(block=block, channels=np.asarray(pending, dtype=np.int64), sources=sources)
        acts = measure_block(read, fzs, measure, progress=False)
        still = set(rerun_hits(acts, pending).tolist())
        for j, channel in enumerate(pending):
            if channel not in still:
                replaced[channel] = (attempt, acts[:, :, j], files["in"].images[j], files["pre"].images[j])
        pending = [c for c in pending if c in still]
    if not replaced:
        return no_reruns(hits, tries)
    channels = sorted(replaced)
    return Rerun(
        hits=np.asarray(hits, dtype=np.int64),
        channels=np.asarray(channels, dtype=np.int64),
        seeds=np.asarray([replaced[c][0] for c in channels], dtype=np.int64),
        acts=np.stack([replaced[c][1] for c in channels], axis=-1).astype(np.float32),
        in_images=np.stack([replaced[c][2] for c in channels]),
        pre_images=np.stack([replaced[c][3] for c in channels]),
        tries=tries,
    )


def rerun_blocks(
    raw: dict[str, Any],
    source: str,
    fz: FZParams,
    outputs: Path,
    *,
    model: nn.Module | None = None,
    activations_stage: str = "activations",
) -> dict[str, Rerun]:
    """Every ``criteria.blocks`` block's record, written under ``outputs`` (where ``activations_stage``
    measured the activations and the Post FZs lie) and returned: the hits of its activations and, with
    criteria.rerun_fz > 0, their re-renders under ``fz`` (stage rerun-fz: the main run; stage pre-reading:
    the authors' reading of Pre). ``model`` is loaded from params.yaml when needed and not given."""
    criteria = load_section(raw, "criteria", CriteriaParams, source=source)
    hits = {}
    for block in criteria.blocks:
        data = read_activations(artifacts.activations_file(block, outputs), stage=activations_stage)
        hits[block] = rerun_hits(data.acts, data.channels)
    records = {block: no_reruns(channels, criteria.rerun_fz) for block, channels in hits.items()}
    if criteria.rerun_fz and any(len(h) for h in hits.values()):
        measure = load_section(raw, "activations", ActivationsParams, source=source)
        model_params = load_section(raw, "model", ModelParams, source=source)
        device = run_device(model_params.device)
        model = (model or load_model(model_params.weights, model_params.arch)).to(device)
        full_float32()  # the activations as stage activations measures them; rsi.fz sets its own numerics
        read = make_reader(measure.extractor, model, device)
        seed = load_seed(raw, source=source)
        for block, channels in hits.items():
            if len(channels):
                records[block] = rerun_block(
                    model, block, channels, fz, measure, read,
                    seed=seed, tries=criteria.rerun_fz, weights=model_params.weights, device=device, outputs=outputs,
                )  # fmt: skip
    for block, record in records.items():
        write_rerun(rerun_file(block, outputs), record)
        print(
            f"rerun-fz {block}: {len(record.hits)} channels with both Post responses <= 0, "
            f"{len(record.channels)} replaced (criteria.rerun_fz = {criteria.rerun_fz}) → {rerun_file(block, outputs)}"
        )
    return records


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    rerun_blocks(raw, args.params, load_section(raw, "fz", FZParams, source=args.params), Path(args.outputs))
