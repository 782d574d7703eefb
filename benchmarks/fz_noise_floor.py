"""The numerical noise floor of the criteria: how many verdicts change when only the batch geometry
(``fz.batch_channels``) changes, beside how many change with the FZ seed.

    python benchmarks/fz_noise_floor.py --channels 128 --steps 48 --size 128 --batches 128 3 1 --seeds 0 1

Renders block 2.1's FZs (X̂_In = 2.0/post, X̂_Pre, X̂_Post) once per (batch, seed) with the demo's settings
(transforms, jitter 4 / 0), measures their activations with rsi's taps and applies Eq. 1 and Eq. 2, then
compares every run with the first (first batch, first seed): bytes of the stored 8-bit FZs that differ,
and Eq. 1, Eq. 2 and passing verdicts that flip. Weights default to the seeded random ResNet18 (the offline
demo's); pass ``--weights`` a resnet18-f37072fd.pth for the paper's model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def render(model, weights: str, channels: int, steps: int, size: int, batch: int, seed: int, root: Path):
    from rsi.fz import BlockFZParams, FZParams, render_block

    fz = FZParams(
        steps=steps,
        image_size=size,
        max_channels=channels,
        batch_channels=batch,
        blocks={
            "layer2_0": BlockFZParams(taps=("post",), jitter=0),
            "layer2_1": BlockFZParams(taps=("pre", "post"), jitter=4),
        },
    )
    for block in ("2.0", "2.1"):
        render_block(model, block, fz, seed=seed, weights=weights, root=root, progress=False)


def verdicts(model, root: Path):
    from rsi.activations import block_activations, load_block_fzs, taps_reader
    from rsi.criteria import evaluate_block

    fzs = load_block_fzs("2.1", root)
    acts = block_activations(taps_reader(model), fzs, batch_size=64, progress=False)
    return evaluate_block("2.1", acts, fzs.channels)


def compare(reference: dict, other: dict) -> dict:
    """Bytes of the stored FZs that differ, and verdicts that flip, ``other`` against ``reference``."""
    out = {}
    for tap, images in reference["images"].items():
        diff = np.abs(images.astype(np.int16) - other["images"][tap].astype(np.int16))
        out[f"{tap} bytes differing"] = float((diff > 0).mean())
        out[f"{tap} max |diff| /255"] = int(diff.max())
    a, b = reference["criteria"], other["criteria"]
    for name in ("eq1", "eq2", "passes"):
        out[f"{name} verdicts flipped"] = int((getattr(a, name) != getattr(b, name)).sum())
    pa, pb = set(a.passing), set(b.passing)
    out["passing"] = len(pb)
    out["jaccard"] = len(pa & pb) / len(pa | pb) if pa | pb else 1.0
    return out


def main() -> None:
    from rsi.model import load_resnet18
    from rsi.runtime import load_npz

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=128, help="first N channels of block 2.1")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 3, 1], help="first = reference")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="first = reference")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = load_resnet18(args.weights)
    runs = [(batch, args.seeds[0]) for batch in args.batches]
    runs += [(args.batches[0], seed) for seed in args.seeds[1:]]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for batch, seed in runs:
            root = Path(scratch) / f"b{batch}_s{seed}"
            start = time.perf_counter()
            render(model, args.weights, args.channels, args.steps, args.size, batch, seed, root)
            images = {
                tap: load_npz(root / "fz" / folder / f"{kind}.npz")["images"]
                for tap, folder, kind in [
                    ("2.0/post", "layer2_0", "post"),
                    ("2.1/pre", "layer2_1", "pre"),
                    ("2.1/post", "layer2_1", "post"),
                ]
            }
            results[(batch, seed)] = {"images": images, "criteria": verdicts(model, root)}
            print(f"batch {batch} seed {seed}: rendered in {time.perf_counter() - start:.0f} s", flush=True)
    reference = results[runs[0]]
    report = {
        "settings": {**vars(args), "json": None, "reference": {"batch": runs[0][0], "seed": runs[0][1]}},
        "reference_passing": len(reference["criteria"].passing),
        "runs": {f"batch {b} seed {s}": compare(reference, results[(b, s)]) for b, s in runs[1:]},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
