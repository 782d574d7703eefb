"""FZ throughput: channels per second of `rsi fz` (batched, truncated forward) versus torch-lucent's
``render_vis`` called once per channel, as the authors did, with the same steps, size and transforms.

    python benchmarks/fz_throughput.py --device cpu --steps 20 --size 112 --channels 8 --tap 2.1/pre

Both run in this one process on the same model. lucent's render_vis leaves its forward hooks on the model
(67 on ResNet18 per call), so they are removed after each call. For sizes under 224 px render_vis appends
a resize to 224 unless given ``fixed_image_size``; we pass the size itself, which after the authors' final
center crop (jitter >= 4) is a same-size resize, so both sides optimise the same image size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clear_hooks(model: torch.nn.Module) -> None:
    for module in model.modules():
        module._forward_hooks.clear()


def lucent_per_channel(model, spec, channels, device) -> float:
    """Seconds for lucent's render_vis, one call per channel (the paper's way)."""
    from lucent.optvis import objectives, param, render

    from rsi.fz_transforms import lucent_chain, lucent_device

    module = spec.objective_tap.module.replace(".", "_")
    model.to(device)
    with lucent_device(device):
        _sync(device)
        start = time.perf_counter()
        for channel in channels:
            render.render_vis(
                model,
                objectives.neuron(module, channel),
                param_f=lambda: param.image(spec.image_size, decorrelate=True),
                transforms=lucent_chain(spec.ops()),
                thresholds=(spec.steps,),
                show_image=False,
                progress=False,
                fixed_image_size=spec.image_size if spec.image_size < 224 else None,
            )
            clear_hooks(model)
        _sync(device)
    return time.perf_counter() - start


def ours(model, spec, channels, device, channels_last, save: Path | None = None) -> float:
    from rsi.fz import render_channels

    _sync(device)
    start = time.perf_counter()
    result = render_channels(model, spec, channels, device=device, channels_last=channels_last)
    _sync(device)
    seconds = time.perf_counter() - start
    if save is not None:
        np.save(save, result.images)
    return seconds


def _op_counts():
    """This checkout's ``rsi.op_counts``, loaded from its file: fz_old_vs_new.py puts an older ``rsi``,
    which may lack the module, first on the path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "src" / "rsi" / "op_counts.py"
    spec = importlib.util.spec_from_file_location("rsi_op_counts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calls_per_step(model, spec, channels, device) -> dict[str, float]:
    """aten calls per optimisation step (the difference between an 8- and a 4-step render, after one
    that made the per-size tables): all of them (on CUDA about one kernel launch each), tensors made
    from host data (on CUDA a copy from the host), matrix inverses (on CUDA an error check that waits
    for the device); on CUDA also the synchronisations torch's sync debug mode reports."""
    from dataclasses import replace

    from rsi.fz import render_channels

    def render(steps: int) -> None:
        render_channels(model, replace(spec, steps=steps), channels, device=device)

    per_step = _op_counts().calls_per_step(render, warm_steps=12)
    result = {
        "aten_calls": sum(per_step.values()),
        "host_tensors": per_step.get("lift_fresh", 0.0),
        "inverses": per_step.get("linalg_inv_ex", 0.0),
    }
    if device.type == "cuda":
        import warnings

        def syncs(steps: int) -> int:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    render_channels(model, replace(spec, steps=steps), channels, device=device)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            return sum("synchroniz" in str(w.message) for w in caught)

        result["cuda_syncs"] = (syncs(8) - syncs(4)) / 4
    return result


def main() -> None:
    from rsi.fz import DEFAULT_BLOCKS, FZParams, TapSpec
    from rsi.model import load_resnet18
    from rsi.runtime import resolve_device
    from rsi.taps import Tap, block_key

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=112, help="image side (px)")
    parser.add_argument("--channels", type=int, default=8, help="channels rendered by rsi fz (batched)")
    parser.add_argument(
        "--lucent-channels", type=int, default=0, help="channels rendered by lucent (0: as --channels)"
    )
    parser.add_argument("--tap", default="2.1/pre", help="block/tap, e.g. 4.1/post")
    parser.add_argument("--jitter", type=int, default=None, help="default: the block's (DESIGN)")
    parser.add_argument("--transforms", default="authors_code", choices=["authors_code", "lucent_standard"])
    parser.add_argument("--batch-channels", type=int, default=128, help="ours: fz.batch_channels")
    parser.add_argument("--channels-last", choices=["on", "off"], default="off")
    parser.add_argument("--tf32", action="store_true", help="ours: allow TF32 (CUDA)")
    parser.add_argument("--skip-lucent", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median)")
    parser.add_argument("--weights", default="random:0", help="model.weights (speed does not depend on it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--save-images", type=Path, default=None, help="save the last round's FZs (float32 .npy) here"
    )
    parser.add_argument(
        "--count-calls", action="store_true", help="also count aten calls, host copies, syncs per step"
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    tap = Tap.parse(args.tap)
    jitter = args.jitter if args.jitter is not None else DEFAULT_BLOCKS[block_key(tap.block)].jitter
    fz = FZParams(
        steps=args.steps,
        image_size=args.size,
        transforms=args.transforms,
        tf32=args.tf32,
        batch_channels=args.batch_channels,
    )
    spec = TapSpec.of(tap, fz, seed=0, weights=args.weights, jitter=jitter)
    channels_last = {"on": True, "off": False}[args.channels_last]
    n_lucent = args.lucent_channels or args.channels

    # warm-up (kernel selection, lazy initialisation) outside the timings
    warm = TapSpec.of(
        tap,
        FZParams(
            steps=2, image_size=args.size, transforms=args.transforms, batch_channels=args.batch_channels
        ),
        seed=0,
        weights=args.weights,
        jitter=jitter,
    )
    # every channel, so that the timed batches find cuDNN already tuned for their shapes
    ours(load_resnet18(args.weights), warm, list(range(args.channels)), device, channels_last)

    model = load_resnet18(args.weights)
    lucent_model = None if args.skip_lucent else load_resnet18(args.weights)
    if lucent_model is not None:
        lucent_per_channel(lucent_model, warm, [0], device)  # warm-up
    # Rounds alternate ours and lucent so that a change in machine load hits both; medians are reported.
    ours_rates, lucent_rates = [], []
    for round_ in range(args.rounds):
        save = args.save_images if round_ == args.rounds - 1 else None
        seconds = ours(model, spec, list(range(args.channels)), device, channels_last, save)
        ours_rates.append(args.channels / seconds)
        if lucent_model is not None:
            lucent_rates.append(
                n_lucent / lucent_per_channel(lucent_model, spec, list(range(n_lucent)), device)
            )
    ours_rate = statistics.median(ours_rates)
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "tap": str(tap),
        "jitter": jitter,
        "transforms": args.transforms,
        "steps": args.steps,
        "size": args.size,
        "rounds": args.rounds,
        "channels_ours": args.channels,
        "ours_channels_per_s": ours_rate,
        "batch_channels": args.batch_channels,
        "channels_last": args.channels_last,
        "tf32": args.tf32,
    }
    print(f"device {result['device']}, {tap} (jitter {jitter}), {args.steps} steps, {args.size} px")
    print(
        f"rsi fz (batched):     {args.channels:4d} channels: {ours_rate:9.3f} ch/s (median of {args.rounds})"
    )
    if lucent_model is not None:
        lucent_rate = statistics.median(lucent_rates)
        ratio = ours_rate / lucent_rate
        result.update(channels_lucent=n_lucent, lucent_channels_per_s=lucent_rate, ratio=ratio)
        print(
            f"lucent render_vis x1: {n_lucent:4d} channels: {lucent_rate:9.3f} ch/s (median of {args.rounds})"
        )
        print(f"speed-up: {ratio:.2f}x")
    if args.count_calls:
        result["per_step"] = calls_per_step(model, spec, list(range(args.channels)), device)
        print("per step: " + ", ".join(f"{k} {v:g}" for k, v in result["per_step"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
