"""Throughput of the ablation sweep: decode-once + device-side scaling + shared prefix (rsi.ablate) against
the naive loop the authors ran (for every scale and condition: ImageFolder + PIL decode and transforms, then a
full forward with the Post channels overwritten by a hook), measured in one run on the same images.

    python benchmarks/ablation_throughput.py --device cpu --images 16 --conditions 3
    python benchmarks/ablation_throughput.py --device cuda --images 1024 --conditions 11 --batch-size 256

"Conditions" are ablation conditions sharing one prefix: the passing set and random sets of the same size
(the paper: 1 + 10). Every scale of the sweep (no scale + ``--percents``) is run for each condition, so the
work is images x scales x conditions classifications either way. The fast path's time includes decoding the
images into the 256 px cache once. Images are the generated offline set written as JPEG files (ImageNet-like
size by default) and the model is ``--weights`` (default random:0: speed does not depend on the weights).
Both paths' correct counts are printed and agree exactly at every scale: the cache keeps each image's resized
size and its views crop and resize bit-exactly as PIL (``transforms.ablation_view``). The cost of that
exactness is measured too: building every scale's views with the PIL-exact resize against one float resize.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from rsi import ablate, data
from rsi.eval_set import load_eval
from rsi.model import load_resnet18
from rsi.runtime import resolve_device
from rsi.taps import block_module, num_channels, parse_block
from rsi.transforms import IMAGENET_MEAN, IMAGENET_STD, ablation_crop, ablation_view


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_sweep(model, folder: Path, block: str, conditions, crops, batch_size: int, workers: int, device):
    """The authors' loop: one ImageFolder pass per (scale, condition), full forward, hook overwrite."""
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    correct = np.zeros((len(crops), len(conditions)), dtype=np.int64)
    module = model.get_submodule(block_module(block))
    for s, crop in enumerate(crops):
        steps = (
            [T.Resize(256), T.CenterCrop(crop)] + ([T.Resize(224)] if crop != 224 else []) + [T.ToTensor()]
        )
        dataset = datasets.ImageFolder(str(folder), transform=T.Compose(steps))
        for j, condition in enumerate(conditions):
            handle = module.register_forward_hook(lambda m, i, out, c=condition: c.apply(out))
            try:
                loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
                with torch.inference_mode():
                    for images, labels in loader:
                        images, labels = images.to(device), labels.to(device)
                        correct[s, j] += int((model(normalize(images)).argmax(1) == labels).sum())
            finally:
                handle.remove()
    return correct


def view_seconds(eval_set, crops, batch_size: int, device, pil: bool) -> float:
    """Seconds to build every scale's model inputs for the whole cache (no forward)."""
    synchronize(device)
    start = time.perf_counter()
    for index, images, _ in eval_set.batches(np.arange(len(eval_set)), batch_size, device):
        resized = eval_set.resized_of(index)
        for crop in crops:
            ablation_view(images, crop, eval_set.view_size, resized, pil=pil)
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    parser.add_argument("--images", type=int, default=16, help="number of evaluation images")
    parser.add_argument(
        "--conditions", type=int, default=3, help="ablation conditions (passing + random sets)"
    )
    parser.add_argument("--block", default="2.1")
    parser.add_argument("--percents", type=int, nargs="+", default=[10, 20, 30, 40, 50])
    parser.add_argument("--crop-rule", default="authors_code", choices=["authors_code", "paper_text"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="decode workers, both paths (authors: 0)")
    parser.add_argument("--image-size", type=int, default=375, help="short side of the JPEGs (ImageNet ~375)")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    block = parse_block(args.block)
    model = load_resnet18(args.weights).to(device)
    channels = num_channels(block)
    size = max(1, channels // 6)  # about the paper's share of passing channels (23 of 128, 46 of 256)
    means = np.full(channels, 0.5)
    passing = list(range(0, channels, channels // size))[:size]
    non_passing = [c for c in range(channels) if c not in set(passing)]
    conditions = [ablate.Condition.mean_ablation("passing", passing, means)] + [
        ablate.Condition.mean_ablation(
            f"random_{a}", ablate.draw_random_set(non_passing, size, 0, block, a), means
        )
        for a in range(args.conditions - 1)
    ]
    crops = [ablation_crop(p, args.crop_rule) for p in (0, *args.percents)]
    classes = min(10, args.images)
    per_class = -(-args.images // classes)
    generated = data.GeneratedParams(classes=classes, per_class=per_class, size=args.image_size)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data.write_generated_folders(scratch / "val", generated)
        for label in range(classes * per_class - args.images):  # exactly --images files, no class empty
            (scratch / "val" / data.imagenet_wnids()[label] / f"{per_class - 1:04d}.jpg").unlink()
        listing = data.list_folders(scratch / "val")  # ImageFolder's files, order and labels
        # warm-up (kernels, allocator) on both paths' shapes
        with torch.inference_mode():
            model(torch.zeros(2, 3, 224, 224, device=device))

        synchronize(device)
        start = time.perf_counter()
        data.decode_to_cache(listing, scratch / "eval", workers=args.workers, progress=False)
        decoded = time.perf_counter()
        eval_set = load_eval(scratch / "eval")
        fast, total = ablate.evaluate(
            model,
            eval_set,
            block,
            conditions,
            crops,
            batch_size=args.batch_size,
            device=device,
            progress=False,
        )
        synchronize(device)
        fast_end = time.perf_counter()
        naive = naive_sweep(
            model, scratch / "val", block, conditions, crops, args.batch_size, args.workers, device
        )
        synchronize(device)
        naive_end = time.perf_counter()
        view_seconds(eval_set, crops, args.batch_size, device, pil=True)  # warm-up
        pil_views = view_seconds(eval_set, crops, args.batch_size, device, pil=True)
        float_views = view_seconds(eval_set, crops, args.batch_size, device, pil=False)

    work = total * len(crops) * len(conditions)
    fast_seconds, naive_seconds = fast_end - start, naive_end - fast_end
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "block": block,
        "images": total,
        "scales": len(crops),
        "conditions": len(conditions),
        "classifications": work,
        "fast_decode_s": round(decoded - start, 3),
        "fast_total_s": round(fast_seconds, 3),
        "fast_images_per_s": round(work / fast_seconds, 1),
        "naive_s": round(naive_seconds, 3),
        "naive_images_per_s": round(work / naive_seconds, 1),
        "speedup": round(naive_seconds / fast_seconds, 2),
        "no_scale_counts_equal": bool((fast[0] == naive[0]).all()),
        "all_counts_equal": bool((fast == naive).all()),
        "views_pil_exact_s": round(pil_views, 3),
        "views_float_s": round(float_views, 3),
        "views_pil_over_float": round(pil_views / float_views, 2),
        "views_share_of_fast_total": round(pil_views / fast_seconds, 3),
    }
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
