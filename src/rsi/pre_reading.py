"""`rsi pre-reading`: the criteria counts under the other reading of "Pre", beside the main ones.

The authors rendered their "Pre" FZs through lucent's reference-keeping hook on ``bn2``, which holds the
block output Post by the time the objective reads it (DESIGN.md). Our default renders the exact Pre. With
``criteria.compare_pre_readings: true`` this stage re-renders only the Pre FZs of the probed blocks with
``fz.pre_reading: lucent_reference`` (In and Post FZs are the main run's, linked), measures their
activations (:func:`rsi.activations.measure`) and writes ``metrics/criteria_lucent_reference.json`` and
the passing lists ``outputs/reference/criteria/passing.json`` (:func:`rsi.artifacts.reference_root`),
which the report shows side by side (the authors' reading: the counts comparable with the paper's), with
this reading's own re-render of channels whose Post responses are both <= 0 (criteria.rerun_fz, rsi.rerun;
under ``outputs/reference/rerun``). Off, it writes an empty metrics file and lists, and renders nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rsi import activations, distributed, fz, rerun
from rsi.artifacts import (
    activations_file,
    fz_file,
    in_fz_source,
    passing_file,
    reference_root,
    require_file,
)
from rsi.artifacts import fz as fz_files
from rsi.artifacts.activations import read_activations
from rsi.artifacts.criteria import (
    REFERENCE_METRICS,
    CriteriaMetrics,
    passing_counts_file,
    write_criteria_metrics,
    write_passing_counts,
)
from rsi.artifacts.passing import Passing, write_passing
from rsi.config import ParamsError, load_section, load_seed, read_params
from rsi.criteria import CriteriaParams, criteria_metrics, evaluate_stored, passing_counts
from rsi.model import load_model
from rsi.runtime import ModelParams, full_float32
from rsi.taps import Tap, block_key

STAGE = "pre-reading"


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = (
    "outputs root: the main run's In and Post FZs from OUTPUTS/fz, this run into "
    "OUTPUTS/reference, finished chunks in OUTPUTS/.resume (default: outputs)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the flags every stage has: --params and --outputs (rsi.cli)."""


def _link(source: Path, target: Path) -> None:
    require_file(source, fz_files.STAGE)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _render_pre_fzs(
    raw: dict[str, Any], source: str, blocks: tuple[str, ...], outputs: Path
) -> torch.nn.Module:
    """Render the Pre FZs of ``blocks`` read as lucent did under ``outputs``/reference and link the main
    run's In and Post FZs beside them (rank 0); the model, for the activations."""
    params = fz.load_fz_params(raw, source=source)
    if params.pre_reading == "lucent_reference":
        raise ParamsError(
            f"{source}: fz.pre_reading is already lucent_reference; compare_pre_readings adds the "
            "lucent_reference counts beside exact ones, so set fz.pre_reading: exact"
        )
    model_params = load_section(raw, "model", ModelParams, source=source)
    seed = load_seed(raw, source=source)
    model = load_model(model_params.weights, model_params.arch)
    device = fz.run_device(model_params.device)
    root = reference_root(outputs)
    only_pre = {  # each block's Pre tap alone, with the jitter it has in the main run
        block_key(block): dataclasses.replace(
            params.block(block), taps=("pre",), tap_jitter={}, jitter=params.block(block).jitter_of("pre")
        )
        for block in blocks
    }
    fz.render_blocks(  # every block's items in one pool: more GPUs busy, the same bytes
        model,
        blocks,
        dataclasses.replace(params, pre_reading="lucent_reference", blocks=only_pre),
        seed=seed,
        weights=model_params.weights,
        device=device,
        root=root,
        resume_root=outputs / ".resume",  # keyed by every setting, the reading included
    )
    if distributed.is_main():
        for block in blocks:
            for tap in (in_fz_source(block), Tap(block, "post")):
                _link(fz_file(tap, outputs), fz_file(tap, root))
    return model


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    criteria = load_section(raw, "criteria", CriteriaParams, source=args.params)
    outputs = Path(args.outputs)
    root = reference_root(outputs)  # the main run's FZs under outputs, this reading's under root
    root.mkdir(parents=True, exist_ok=True)
    if not criteria.compare_pre_readings:
        (root / "README.txt").write_text("criteria.compare_pre_readings is false: nothing rendered\n")
        write_passing(Passing({}), passing_file(root))
        write_passing_counts([], passing_counts_file(root))  # the plot's header: no bars
        write_criteria_metrics(CriteriaMetrics({}, {}), REFERENCE_METRICS)  # {}: no second reading
        print("criteria.compare_pre_readings is false: no second reading")
        return
    distributed.init()  # under torch's launcher: a rank that dies on any node fails the others' wait
    model = _render_pre_fzs(raw, args.params, criteria.blocks, outputs)
    # rank 0 waited for the other ranks' chunks and measures the rest alone
    distributed.main_alone(lambda: _measure_and_count(raw, args.params, criteria, model, root))


def _measure_and_count(
    raw: dict[str, Any], source: str, criteria: CriteriaParams, model: torch.nn.Module, root: Path
) -> None:
    """Rank 0: the activations of this reading's FZs, its re-render of the authors' case, and its
    criteria counts, lists and metrics."""
    numerics = full_float32()  # the renders keep fz.tf32 (declared); activations run in float32
    # the Pre FZs under root are this stage's, the In and Post ones linked by it
    activations.measure_with_params(raw, source, model, criteria.blocks, outputs=root, fz_stage=STAGE)
    # the authors' re-render of channels whose Post responses are both <= 0 (criteria.rerun_fz) ran under
    # their reading of Pre: this reading's hits re-render with its Pre objective
    reading = dataclasses.replace(fz.load_fz_params(raw, source=source), pre_reading="lucent_reference")
    reruns = rerun.rerun_blocks(raw, source, reading, root, model=model, activations_stage=STAGE)
    results = [
        evaluate_stored(
            block, read_activations(activations_file(block, root), stage=STAGE), criteria, reruns[block]
        )
        for block in criteria.blocks
    ]
    write_passing(Passing({result.block: result.passing for result in results}), passing_file(root))
    # the counts comparable with the paper's, beside this run's and the paper's in the DVC plot
    write_passing_counts(passing_counts(results), passing_counts_file(root))
    record = criteria_metrics(results)
    numbers = {key: int(value) for key, value in numerics.items()}
    write_criteria_metrics(dataclasses.replace(record, numerics=numbers), REFERENCE_METRICS)
    for result in results:
        print(f"block {result.block} (Pre read as lucent did): {len(result.passing)} channels pass")
