"""`rsi stability --seed K`: the FZs and activations of one extra FZ seed, for criteria stability.

FZs are stochastic (paper §3: "results may vary"). With ``criteria.seeds: [s0, s1, …]`` the first seed is
the main run (``outputs/``, which must be params.yaml's top-level ``seed``); this stage renders every
``fz.blocks`` block with seed K (:func:`rsi.fz.render_block`) and measures its activations
(:func:`rsi.activations.measure`) under ``criteria.seed_root`` (default ``outputs/stability/seed<K>``,
:func:`rsi.artifacts.seed_root`); `rsi criteria` then reports per-seed passing counts and Jaccard
overlaps. For the main seed it only writes a note, so the default one-seed pipeline renders nothing twice.
The files are those of stages fz and activations (rsi.artifacts.fz, rsi.artifacts.activations); the
criteria keys it reads are rsi.seeds', so editing the criteria re-renders no seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rsi import activations, distributed, fz
from rsi.artifacts import seed_root
from rsi.config import ParamsError, load_section, load_seed, read_params
from rsi.model import load_model
from rsi.runtime import ModelParams
from rsi.seeds import load_seed_runs
from rsi.taps import parse_block

# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = (
    "the main run's outputs root; finished chunks in OUTPUTS/.resume (default: outputs). This seed's FZs and "
    "activations go to criteria.seed_root, which is relative to the working directory like metrics/"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, required=True, help="one of criteria.seeds")


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    criteria = load_seed_runs(raw, source=args.params)
    main_seed = load_seed(raw, source=args.params)
    if criteria.seeds[0] != main_seed:
        raise ParamsError(
            f"{args.params}: criteria.seeds[0] = {criteria.seeds[0]} must be the main run's seed "
            f"(seed: {main_seed}); list the main seed first"
        )
    if args.seed not in criteria.seeds:
        raise ParamsError(
            f"{args.params}: --seed {args.seed} is not in criteria.seeds {list(criteria.seeds)}: add it there "
            f"(dvc.yaml's stability@<seed> stages follow that list) or give one of those"
        )
    outputs, root = Path(args.outputs), seed_root(args.seed, criteria.seed_root)
    if args.seed == main_seed:
        root.mkdir(parents=True, exist_ok=True)
        (root / "main_run.txt").write_text(
            f"seed {args.seed} is the main run: its FZs and activations are under {outputs}/\n"
        )
        print(f"seed {args.seed}: the main run ({outputs}/), nothing to render")
        return
    params = load_section(raw, "fz", fz.FZParams, source=args.params)
    # under torch's launcher: the ranks tell each other that a lock is held and wait for each other on
    # the group, so a worker that dies on another node fails this one too (rsi.distributed.wait_for_peers)
    distributed.init()
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    device = fz.run_device(model_params.device)
    model = load_model(model_params.weights, model_params.arch)
    fz.render_blocks(  # every block's items in one pool: more GPUs busy, the same bytes
        model,
        [parse_block(key) for key in params.blocks],
        params,
        seed=args.seed,
        weights=model_params.weights,
        device=device,
        root=root,
        resume_root=outputs / ".resume",  # keyed by settings incl. the seed: no clash
    )
    # rank 0 waited for the other ranks' chunks and measures alone
    distributed.main_alone(
        lambda: activations.measure_with_params(
            raw, args.params, model, criteria.blocks, outputs=root, fz_stage="stability"
        )
    )
