"""Whether `rsi fz` renders are a function of the declared params on this device, and what determinism costs.

    python benchmarks/fz_determinism.py --device cuda --tap 2.1/pre --size 224 --steps 30 --channels 64

Renders ``--channels`` channels in two batches (``fz.batch_channels`` = half of them) and checks, byte for
byte: a second render of the same channels (run to run), and the second batch rendered alone (what a
torchrun rank that owns only that chunk computes), and all channels in one batch (whether the batch
geometry, a declared param, changes floats here; if not, a block's taps could be optimised together
without changing any FZ). On CUDA it also renders with torch's own backward of the transforms
(``fz.cuda_backward: native``) twice, timing it against rsi.adjoints' exact sums and checking whether it
differs run to run. Then, on CUDA, it times the render as the stage runs it
(cuDNN deterministic, no autotuning) against cuDNN's autotuned, non-deterministic kernels, and says whether
those change the FZs. Prints one line per check and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


@contextmanager
def autotuned(device: torch.device):
    """cuDNN autotuning on and deterministic kernels off, in place of the stage's setting."""
    import rsi.fz as fz

    saved = fz._numerics

    @contextmanager
    def numerics(device: torch.device, tf32: bool):
        with saved(device, tf32):
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = False
            yield

    fz._numerics = numerics
    try:
        yield
    finally:
        fz._numerics = saved


def timed(render, device: torch.device) -> tuple[float, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    images = render()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, images


def compared(key: str, a: np.ndarray, b: np.ndarray) -> dict:
    """``<key>_identical`` (byte for byte) and ``<key>_max_abs_diff`` of two renders."""
    return {f"{key}_identical": bool(np.array_equal(a, b)), f"{key}_max_abs_diff": float(np.abs(a - b).max())}


def said(result: dict, key: str) -> str:
    if result[f"{key}_identical"]:
        return "byte-identical"
    return f"DIFFERENT, by up to {result[f'{key}_max_abs_diff']:.3g}"


def main() -> None:
    from rsi.fz import DEFAULT_BLOCKS, FZParams, TapSpec, render_channels
    from rsi.model import load_resnet18
    from rsi.runtime import resolve_device
    from rsi.taps import Tap, block_key

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tap", default="2.1/pre")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels", type=int, default=8, help="even: two batches of half")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.channels < 2 or args.channels % 2:
        raise SystemExit(f"--channels {args.channels}: give an even number >= 2 (two batches of half)")

    device = resolve_device(args.device)
    tap = Tap.parse(args.tap)
    half = args.channels // 2
    fz = FZParams(steps=args.steps, image_size=args.size, batch_channels=half)
    jitter = DEFAULT_BLOCKS[block_key(tap.block)].jitter
    spec = TapSpec.of(tap, fz, seed=0, weights=args.weights, jitter=jitter)
    model = load_resnet18(args.weights)
    channels = list(range(args.channels))

    def render(which=channels):
        return render_channels(model, spec, which, device=device).images

    render()  # warm-up: lazy initialisation, the per-size tables, every batch shape
    seconds, first = timed(render, device)
    _, again = timed(render, device)
    _, alone = timed(lambda: render(channels[half:]), device)
    whole = render_channels(
        model, replace(spec, batch_channels=args.channels), channels, device=device
    ).images
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "tap": str(tap),
        "size": args.size,
        "steps": args.steps,
        "channels": args.channels,
        "deterministic_channels_per_s": args.channels / seconds,
        **compared("run_to_run", first, again),
        **compared("chunk_alone", first[half:], alone),
        **compared("batch_size", first, whole),
    }
    print(f"{result['device']}, {tap}, {args.steps} steps, {args.size} px, {args.channels} ch")
    backward = f"fz.cuda_backward {spec.cuda_backward}" if device.type == "cuda" else "CPU"
    print(f"run to run ({backward}): {said(result, 'run_to_run')}")
    print(f"second batch alone: {said(result, 'chunk_alone')}")
    print(
        f"one batch of all instead of two: {said(result, 'batch_size')} "
        + (
            "(joining batches, e.g. a block's taps, would keep every FZ)"
            if result["batch_size_identical"]
            else "(batch geometry changes floats)"
        )
    )
    if device.type == "cuda":
        # torch's own backward of the transforms (fz.cuda_backward: native): atomics in run order
        native_spec = replace(spec, cuda_backward="native")
        native_render = lambda: render_channels(model, native_spec, channels, device=device).images  # noqa: E731
        native_render()
        native_seconds, native = timed(native_render, device)
        _, native_again = timed(native_render, device)
        result.update(
            native_channels_per_s=args.channels / native_seconds,
            exact_backward_cost=seconds / native_seconds,
            **compared("native_run_to_run", native, native_again),
        )
        print(
            f"fz.cuda_backward deterministic {args.channels / seconds:.2f} ch/s, native "
            f"{args.channels / native_seconds:.2f} ch/s ({seconds / native_seconds:.2f}x the time); native "
            f"run to run: {said(result, 'native_run_to_run')}"
        )
        with autotuned(device):
            render()  # autotuning times kernels for every new shape: outside the timing
            tuned_seconds, tuned = timed(render, device)
        result.update(
            autotuned_channels_per_s=args.channels / tuned_seconds,
            deterministic_cost=seconds / tuned_seconds,
            **compared("autotuned", first, tuned),
        )
        print(
            f"deterministic {args.channels / seconds:.2f} ch/s, autotuned {args.channels / tuned_seconds:.2f} "
            f"ch/s: determinism costs {seconds / tuned_seconds:.2f}x; autotuned FZs: {said(result, 'autotuned')}"
            + ("" if result["run_to_run_identical"] else " (but run to run differs already)")
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
