"""`rsi pre-reading`: the criteria counts under the other reading of "Pre", beside the main ones.

The authors rendered their "Pre" FZs through lucent's reference-keeping hook on ``bn2``, which holds the
block output Post by the time the objective reads it (DESIGN.md). Our default renders the exact Pre. With
``criteria.compare_pre_readings: true`` this stage re-renders only the Pre FZs of the probed blocks with
``fz.pre_reading: lucent_reference`` (In and Post FZs are the main run's, linked), measures their
activations and writes ``metrics/criteria_lucent_reference.json`` and the passing lists
``reference/criteria/passing.json``, which the report shows side by side (the authors' reading: the counts
comparable with the paper's). Off, it writes an empty metrics file and lists, and renders nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path

from rsi import activations, distributed, fz
from rsi.artifacts import OUTPUTS, fz_file, in_fz_source, passing_file
from rsi.config import ParamsError, load_section, read_params
from rsi.criteria import CriteriaParams, evaluate_stored, load_activations, metrics
from rsi.model import load_model
from rsi.runtime import ModelParams, full_float32, write_json
from rsi.taps import Tap, block_key

ROOT = Path("reference")
METRICS = Path("metrics/criteria_lucent_reference.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=str(ROOT), help="outputs root of the comparison run")


def _link(source: Path, target: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: run the fz stage for its block first (dvc repro)")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    criteria = load_section(raw, "criteria", CriteriaParams, source=args.params)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if not criteria.compare_pre_readings:
        (root / "README.txt").write_text("criteria.compare_pre_readings is false: nothing rendered\n")
        write_json(passing_file(root), {})
        write_json(METRICS, {})
        print("criteria.compare_pre_readings is false: no second reading")
        return
    params = fz.load_fz_params(raw, source=args.params)
    if params.pre_reading == "lucent_reference":
        raise ParamsError(
            f"{args.params}: fz.pre_reading is already lucent_reference; compare_pre_readings adds the "
            "lucent_reference counts beside exact ones, so set fz.pre_reading: exact"
        )
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    seed = fz.load_seed(raw, source=args.params)
    model = load_model(model_params.weights, model_params.arch)
    device = fz.run_device(model_params.device)
    numerics = full_float32()  # the renders below keep fz.tf32 (declared); activations run in float32
    results = []
    for block in criteria.blocks:
        only_pre = dataclasses.replace(params.block(block), taps=("pre",), tap_jitter={})
        jitter = params.block(block).jitter_of("pre")
        settings = dataclasses.replace(
            params,
            pre_reading="lucent_reference",
            blocks={block_key(block): dataclasses.replace(only_pre, jitter=jitter)},
        )
        fz.render_block(
            model,
            block,
            settings,
            seed=seed,
            weights=model_params.weights,
            device=device,
            root=root,
            resume_root=OUTPUTS / ".resume",  # keyed by every setting, the reading included
        )
        if distributed.is_main():
            for tap in (in_fz_source(block), Tap(block, "post")):
                _link(fz_file(tap), fz_file(tap, root))
    if not distributed.is_main():
        return  # rank 0 waited for this rank's chunks, assembled them, and measures the rest alone
    activations.run(argparse.Namespace(params=args.params, block=None, root=str(root)))
    for block in criteria.blocks:
        results.append(evaluate_stored(block, load_activations(block, root), criteria))
    write_json(passing_file(root), {result.block: result.passing for result in results})
    write_json(METRICS, {**metrics(results), **{key: int(value) for key, value in numerics.items()}})
    for result in results:
        print(f"block {result.block} (Pre read as lucent did): {len(result.passing)} channels pass")
