"""`rsi pre-reading`: the criteria counts under the other reading of "Pre", beside the main ones.

The authors rendered their "Pre" FZs through lucent's reference-keeping hook on ``bn2``, which holds the
block output Post by the time the objective reads it (DESIGN.md). Our default renders the exact Pre. With
``criteria.compare_pre_readings: true`` this stage re-renders only the Pre FZs of the probed blocks with
``fz.pre_reading: lucent_reference`` (In and Post FZs are the main run's, linked), measures their
activations (:func:`rsi.activations.measure`) and writes ``metrics/criteria_lucent_reference.json`` and
the passing lists ``outputs/reference/criteria/passing.json`` (:func:`rsi.artifacts.reference_root`),
which the report shows side by side (the authors' reading: the counts comparable with the paper's), with
this reading's own re-render of channels whose Post responses are both <= 0 (criteria.rerun_fz, rsi.rerun;
under ``outputs/reference/rerun``). With several ``criteria.seeds`` it does the same for each further seed,
whose In and Post FZs are stage stability's, under ``outputs/reference/stability/seed<K>``, and the metrics
gain the passing sets' spread across seeds (``stability``), as stage criteria's do for the main reading:
the counts compared with the paper's get a spread too (DESIGN). Off, it writes an empty metrics file and
lists, and renders nothing.
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
    MissingArtifactError,
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
from rsi.criteria import (
    BlockCriteria,
    CriteriaParams,
    criteria_metrics,
    evaluate_stored,
    passing_counts,
    stability,
)
from rsi.model import load_model
from rsi.runtime import ModelParams, full_float32
from rsi.taps import Tap, block_key

STAGE = "pre-reading"


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = (
    "outputs root: the main run's In and Post FZs from OUTPUTS/fz, this run into "
    "OUTPUTS/reference, finished chunks in OUTPUTS/.resume (default: outputs); further seeds' In and Post "
    "FZs from criteria.seed_root, which is relative to the working directory like metrics/"
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


def reading_roots(criteria: CriteriaParams, outputs: Path) -> dict[int, tuple[Path, Path]]:
    """Per FZ seed of ``criteria.seeds`` (the main run's first): the root whose In and Post FZs this
    reading shares (the main run's ``outputs``, or stage stability's seed root) and the root this stage
    renders its Pre FZs and counts under (``outputs/reference``, or ``outputs/reference/stability/seed<K>``)."""
    main = reference_root(outputs)
    return {
        seed: (source, main if seed == criteria.seeds[0] else main / "stability" / f"seed{seed}")
        for seed, source in criteria.roots(outputs).items()
    }


def _render_pre_fzs(
    raw: dict[str, Any],
    source: str,
    blocks: tuple[str, ...],
    model: torch.nn.Module,
    seed: int,
    roots: tuple[Path, Path],
    resume_root: Path,
) -> None:
    """Render the Pre FZs of ``blocks`` with ``seed``, read as lucent did, under ``roots[1]``, and link the
    In and Post FZs of the same seed from ``roots[0]`` beside them (rank 0)."""
    params = fz.load_fz_params(raw, source=source)
    model_params = load_section(raw, "model", ModelParams, source=source)
    fz_root, root = roots
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
        device=fz.run_device(model_params.device),
        root=root,
        resume_root=resume_root,  # keyed by every setting, the reading and the seed included
    )
    if distributed.is_main():
        for block in blocks:
            for tap in (in_fz_source(block), Tap(block, "post")):
                _link(fz_file(tap, fz_root), fz_file(tap, root))


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
    _check_readings(raw, args.params, criteria)
    roots = reading_roots(criteria, outputs)
    _require_further_seeds(criteria, roots)
    distributed.init()  # under torch's launcher: a rank that dies on any node fails the others' wait
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    model = load_model(model_params.weights, model_params.arch)
    for seed, seed_roots in roots.items():  # each seed's In and Post are the main run's or stage stability's
        _render_pre_fzs(raw, args.params, criteria.blocks, model, seed, seed_roots, outputs / ".resume")
    # rank 0 waited for the other ranks' chunks and measures the rest alone
    distributed.main_alone(lambda: _measure_and_count(raw, args.params, criteria, model, roots))


def _check_readings(raw: dict[str, Any], source: str, criteria: CriteriaParams) -> None:
    """Refuse, before any work, a main run whose Pre reading is already lucent's, or seeds whose first
    is not the main run's."""
    if fz.load_fz_params(raw, source=source).pre_reading == "lucent_reference":
        raise ParamsError(
            f"{source}: fz.pre_reading is already lucent_reference; compare_pre_readings adds the "
            "lucent_reference counts beside exact ones, so set fz.pre_reading: exact"
        )
    main_seed = load_seed(raw, source=source)
    if criteria.seeds[0] != main_seed:
        raise ParamsError(
            f"{source}: criteria.seeds[0] = {criteria.seeds[0]} must be the main run's seed "
            f"(seed: {main_seed}); list the main seed first"
        )


def _require_further_seeds(criteria: CriteriaParams, roots: dict[int, tuple[Path, Path]]) -> None:
    """Every further seed's In and Post FZs (stage stability's), before anything is rendered: run by hand
    before stage stability, this stage would otherwise render every seed's Pre FZs and then stop."""
    for seed in criteria.seeds[1:]:
        fz_root = roots[seed][0]
        for block in criteria.blocks:
            for tap in (in_fz_source(block), Tap(block, "post")):
                if not fz_file(tap, fz_root).is_file():
                    raise MissingArtifactError(
                        f"{fz_file(tap, fz_root)} is missing: stage stability@{seed} writes it (criteria.seeds "
                        f"lists {seed}); run `dvc repro stability@{seed}` (or `rsi stability --seed {seed}`) first"
                    )


def _measure_and_count(
    raw: dict[str, Any],
    source: str,
    criteria: CriteriaParams,
    model: torch.nn.Module,
    roots: dict[int, tuple[Path, Path]],
) -> None:
    """Rank 0, per seed: the activations of this reading's FZs and its passing lists; for the main seed
    also its re-render of the authors' case (criteria.rerun_fz; further seeds get none, as in stage
    stability) and the counts and metrics, with the passing sets' spread across seeds when there are
    several (rsi.criteria.stability, as stage criteria reports for the main reading)."""
    numerics = full_float32()  # the renders keep fz.tf32 (declared); activations run in float32
    # the authors' re-render of channels whose Post responses are both <= 0 (criteria.rerun_fz) ran under
    # their reading of Pre: this reading's hits re-render with its Pre objective
    reading = dataclasses.replace(fz.load_fz_params(raw, source=source), pre_reading="lucent_reference")
    main_seed = criteria.seeds[0]
    by_seed: dict[int, list[BlockCriteria]] = {}
    for seed, (_, root) in roots.items():
        # the Pre FZs under root are this stage's, the In and Post ones linked by it
        activations.measure_with_params(raw, source, model, criteria.blocks, outputs=root, fz_stage=STAGE)
        reruns = {}
        if seed == main_seed:
            reruns = rerun.rerun_blocks(raw, source, reading, root, model=model, activations_stage=STAGE)
        by_seed[seed] = [
            evaluate_stored(
                block,
                read_activations(activations_file(block, root), stage=STAGE),
                criteria,
                reruns.get(block),
            )
            for block in criteria.blocks
        ]
        write_passing(Passing({result.block: result.passing for result in by_seed[seed]}), passing_file(root))
    results = by_seed[main_seed]
    # the counts comparable with the paper's, beside this run's and the paper's in the DVC plot
    write_passing_counts(passing_counts(results), passing_counts_file(roots[main_seed][1]))
    passing_by_seed = {seed: {r.block: r.passing for r in blocks} for seed, blocks in by_seed.items()}
    record = criteria_metrics(results, stability(passing_by_seed) if len(by_seed) > 1 else None)
    numbers = {key: int(value) for key, value in numerics.items()}
    write_criteria_metrics(dataclasses.replace(record, numerics=numbers), REFERENCE_METRICS)
    for result in results:
        print(f"block {result.block} (Pre read as lucent did): {len(result.passing)} channels pass")
