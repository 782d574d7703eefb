"""FZ throughput of this checkout against an older one, measured in one run on one machine.

    git worktree add /tmp/rsi-old 33002cd
    python benchmarks/fz_old_vs_new.py --old-src /tmp/rsi-old/src --device cpu --size 112 --steps 20 \\
        --channels 16 --taps 2.1/pre 1.1/pre

For every tap and round, ``benchmarks/fz_throughput.py`` (this checkout's script, which uses only
``rsi.fz``'s public API) runs once with the old ``src`` on PYTHONPATH and once with this one, alternately,
each in a fresh process with its own warm-up, so that a change in machine load hits both. It prints the
median channels/s of each side, their ratio, whether the two renders are the same floats (and, with two rounds or more,
whether two renders of this checkout are), and (``--count-calls``) the aten calls, tensors made from host
data, matrix inverses and (CUDA) synchronisations per step; ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"


def one_run(src: Path, tap: str, args: argparse.Namespace, count_calls: bool, images: Path | None) -> dict:
    """One fz_throughput.py run (rsi fz only) with ``src`` first on PYTHONPATH; its FZs saved to
    ``images`` when given."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [
            sys.executable,
            str(HERE / "fz_throughput.py"),
            "--skip-lucent",
            "--rounds=1",
            f"--device={args.device}",
            f"--steps={args.steps}",
            f"--size={args.size}",
            f"--channels={args.channels}",
            f"--batch-channels={args.batch_channels}",
            f"--tap={tap}",
            f"--json={out}",
            *(["--count-calls"] if count_calls else []),
            *([f"--save-images={images}"] if images else []),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"fz_throughput.py with {src} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def compare(old: np.ndarray, new: np.ndarray) -> dict:
    """Whether two renders of the same channels are the same floats, and if not, by how much (also as
    the stored uint8 values: value·255 truncated)."""
    return {
        "identical": bool(np.array_equal(old, new)),
        "max_abs_diff": float(np.abs(old - new).max()),
        "uint8_values_differing": int(((old * 255).astype(np.uint8) != (new * 255).astype(np.uint8)).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-src", type=Path, required=True, help="the older checkout's src/ folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--taps", nargs="+", default=["2.1/pre", "1.1/pre"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch-channels", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count-calls", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.old_src / "rsi" / "fz.py").is_file():
        raise SystemExit(f"--old-src {args.old_src}: no rsi/fz.py there; pass an older checkout's src/")

    results = []
    for tap in args.taps:
        rates: dict[str, list[float]] = {"old": [], "new": []}
        calls: dict[str, dict] = {}
        device = ""
        with tempfile.TemporaryDirectory() as tmp:
            images = {(side, r): Path(tmp) / f"{side}{r}.npy" for side in rates for r in (0, 1)}
            for round_ in range(args.rounds):
                for side, src in (("old", args.old_src), ("new", NEW_SRC)):
                    save = images.get((side, round_))
                    run = one_run(src, tap, args, args.count_calls and round_ == 0, save)
                    rates[side].append(run["ours_channels_per_s"])
                    calls.setdefault(side, run.get("per_step", {}))
                    device = run["device"]
            same = compare(np.load(images["old", 0]), np.load(images["new", 0]))
            if (
                args.rounds > 1
            ):  # the new code against itself: a difference old vs new means little without it
                again = compare(np.load(images["new", 0]), np.load(images["new", 1]))
                same["new_run_to_run"] = again
        old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
        row = {
            "tap": tap,
            "device": device,
            "old": old,
            "new": new,
            "ratio": new / old,
            "rates": rates,
            **same,
        }
        row.update({f"per_step_{side}": value for side, value in calls.items() if value})
        results.append(row)
        print(
            f"{tap}: {device}, {args.steps} steps, {args.size} px, {args.channels} ch: "
            f"old {old:.3f} ch/s, new {new:.3f} ch/s, {new / old:.2f}x (median of {args.rounds})"
        )
        print(
            "  FZs old vs new: byte-identical"
            if same["identical"]
            else f"  FZs old vs new differ: max |old - new| {same['max_abs_diff']:.3g}, "
            f"uint8 storage differs in {same['uint8_values_differing']} values"
        )
        if "new_run_to_run" in same:
            again = same["new_run_to_run"]
            print(
                "  FZs new, run to run: "
                + ("byte-identical" if again["identical"] else f"differ by up to {again['max_abs_diff']:.3g}")
            )
        for side in ("old", "new"):
            if calls.get(side):
                print(f"  per step, {side}: " + ", ".join(f"{k} {v:g}" for k, v in calls[side].items()))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "old_src")}
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
