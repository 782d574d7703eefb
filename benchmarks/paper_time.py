"""How long the whole paper run takes here: every stage measured briefly, then projected to the full run.

    python benchmarks/paper_time.py                        # the GPU it finds (a few minutes)
    python benchmarks/paper_time.py --small                # no GPU: the CPU, with small settings

* fz: every tap of every block in params.yaml's ``fz.blocks`` (the paper's 20 taps), ``--steps`` steps of
  ``--channels`` channels each at params.yaml's image size, with ``rsi.fz.render_channels`` (the stage's own
  code; batches of ``fz.batch_channels``). Rate: channel-steps/s. Full run: every channel of the tap at
  ``fz.steps`` (2,560) steps.
* pre-reading (with ``criteria.compare_pre_readings``, as in the paper profile): each probed block's Pre
  FZs again under lucent's reading, per ``criteria.seeds`` seed, projected at the block's measured Post
  rate (that objective reads the block output); sharded like fz, one pool per seed.
* activations: each ``criteria.blocks`` block's five FZ images per channel (random FZs) through the params'
  extractor. Full run: every channel.
* natural, ablate: generated images (ImageNet-sized JPEGs, decoded into the 256 px cache, as
  ``prepare-data`` does) through ``rsi.natural.natural_pass`` and ``rsi.ablate.evaluate`` with the paper's
  conditions (screening: baseline, passing and ``screen_batch`` random sets at no scale; sweep: baseline,
  passing and ``trials`` random sets at each of ``percents``). Full run: 50,000 images; the ablation assumes
  one screening group suffices (each further group adds about one screening pass).

Per stage it prints the measured rate, the peak GPU memory (``torch.cuda.max_memory_allocated``), the mean GPU
utilisation while it ran (``torch.cuda.utilization`` or ``nvidia-smi``; n/a when neither answers or on a CPU),
and the projected full-run time, then the whole run on 1 and on ``--gpus`` GPUs (natural and ablate divided
by the GPU count; fz as `dvc repro` runs it with ``launch.fz_pool: stale``, the default: every block's (tap,
chunk) work items in one pool, and also block by block (``launch.fz_pool: block``), where a block with fewer
items than GPUs leaves some idle; activations run in one process), and writes everything to ``--json`` after
every stage. Speed does not depend
on the weights: the model is random:0 unless ``--weights`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsi import ablate, ablate_params, activations, data, eval_set, natural
from rsi.activations import ActivationsParams, BlockFZs, block_fz_taps, make_reader
from rsi.artifacts.fz import FZFile
from rsi.config import load_section, read_params
from rsi.criteria import CriteriaParams
from rsi.fz import TapSpec, chunks_of, load_fz_params, render_channels, tap_channels
from rsi.model import load_resnet18
from rsi.runtime import resolve_device
from rsi.taps import Tap, num_channels, parse_block

PAPER_IMAGES = 50_000


class Probe:
    """Times a piece of work and samples GPU utilisation and peak memory while it runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _utilisation(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no pynvml: ask nvidia-smi
            try:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i",
                        str(self.device.index or 0),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                )
                return float(out.stdout.strip().splitlines()[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return None

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            value = self._utilisation()
            if value is None:
                return
            self.samples.append(value)

    def run(self, work: Callable[[], Any]) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        thread = threading.Thread(target=self._sample, daemon=True) if cuda else None
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            thread.start()
        start = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self._stop.set()
        if thread is not None:
            thread.join()
        return {
            "seconds": seconds,
            "peak_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None,
            "gpu_util_pct": float(np.mean(self.samples)) if self.samples else None,
        }


def warm_up(work: Callable[[], Any], device: torch.device) -> None:
    """Run once untimed on CUDA (kernel selection, lazy initialisation); a CPU needs no warm-up."""
    if device.type == "cuda":
        work()


def measure_fz(model, raw: dict, args, device) -> list[dict[str, Any]]:
    """Each tap of fz.blocks: a short run, projected to every channel at fz.steps steps."""
    fz = load_fz_params(raw)
    rows = []
    for key, settings in fz.blocks.items():
        block = parse_block(key)
        for kind in settings.taps:
            spec = replace(
                TapSpec.of(Tap(block, kind), fz, seed=0, weights=args.weights),
                steps=args.steps,
                image_size=args.size or fz.image_size,
            )
            total = len(tap_channels(block, fz))
            channels = list(range(min(args.channels or total, total)))
            if device.type == "cuda":  # kernel selection and lazy initialisation outside the timing
                render_channels(model, replace(spec, steps=2), channels, device=device)
            probe = Probe(device).run(lambda s=spec, c=channels: render_channels(model, s, c, device=device))
            rate = len(channels) * spec.steps / probe["seconds"]
            measured = f"{len(channels)} ch x {spec.steps} steps @ {spec.image_size} px"
            row = _row("fz", f"{block}/{kind}", measured, rate, "ch*steps/s", probe, total * fz.steps)
            # the work items rsi fz shards over GPUs: chunks of fz.batch_channels x fz.chunk_batches channels
            row["chunks"] = len(chunks_of(range(total), fz.batch_channels * fz.chunk_batches))
            rows.append(row)
    return rows


def fz_minutes_on(rows: list[dict[str, Any]], gpus: int) -> float:
    """The FZ stages on ``gpus`` GPUs under ``launch.fz_pool: block``: DVC runs the fz@<block> stages one
    after another, and each shards its (tap, chunk) items over the GPUs, so a block takes ceil(items / gpus) rounds of one item (the
    block's mean item time). A block with fewer items than GPUs leaves GPUs idle."""
    blocks: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        blocks.setdefault(row["item"].split("/")[0], []).append(row)
    seconds = 0.0
    for taps in blocks.values():
        items = sum(r["chunks"] for r in taps)
        seconds += -(-items // gpus) * sum(r["projected_s"] for r in taps) / items
    return seconds / 60


def fz_minutes_pooled(rows: list[dict[str, Any]], gpus: int) -> float:
    """The FZs on ``gpus`` GPUs as `dvc repro` renders them (``launch.fz_pool: stale``: the first fz stage
    pools every block whose stage DVC runs too; on a first run all, in the order of fz.blocks) or ``rsi fz --block all``: every
    block's items in one pool, handed out as rsi.fz.render_blocks does (rank r takes items r, r + gpus, … in the order of fz.blocks, taps, chunks;
    ``rows`` are in that order), so the slowest rank's sum."""
    items = [r["projected_s"] / r["chunks"] for r in rows for _ in range(r["chunks"])]
    return max((sum(items[rank::gpus]) for rank in range(gpus)), default=0.0) / 60


def project_pre_reading(fz_rows: list[dict[str, Any]], raw: dict) -> list[dict[str, Any]]:
    """Stage pre-reading's FZs (``criteria.compare_pre_readings``, on in the paper profile): every probed
    block's Pre channels again, once per ``criteria.seeds`` seed, with lucent's reading, whose objective
    reads the block output; so each is projected at its block's measured Post rate, not measured again.
    Sharded like fz, one pool per seed (rsi.pre_reading renders the seeds one after another): a row per
    (block, seed)."""
    criteria = load_section(raw, "criteria", CriteriaParams)
    if not criteria.compare_pre_readings:
        return []
    fz = load_fz_params(raw)
    measured = {row["item"]: row for row in fz_rows}
    rows = []
    for block in criteria.blocks:
        like = measured.get(f"{block}/post") or measured.get(f"{block}/pre")
        if like is None:  # the block's FZs were not measured (--stages without fz, or not in fz.blocks)
            continue
        full_work = len(tap_channels(block, fz)) * fz.steps
        for seed in criteria.seeds:
            row = like | {
                "item": f"{block}/pre (lucent, seed {seed})",
                "seed": seed,
                "measured": f"projected at {like['item']}'s rate",
                "full_work": full_work,
                "projected_s": full_work / like["rate"],
            }
            _print_row("pre-reading", row)
            rows.append(row)
    return rows


def pre_reading_minutes_on(rows: list[dict[str, Any]], gpus: int) -> float:
    """Stage pre-reading's FZs on ``gpus`` GPUs: one pool per seed, one after another."""
    seeds = dict.fromkeys(row["seed"] for row in rows)
    return sum(fz_minutes_pooled([r for r in rows if r["seed"] == seed], gpus) for seed in seeds)


def measure_activations(model, raw: dict, args, device) -> list[dict[str, Any]]:
    """Each criteria block: the five FZ images per channel (random FZs) through the params' extractor."""
    params = load_section(raw, "activations", ActivationsParams)
    blocks = load_section(raw, "criteria", CriteriaParams).blocks
    size = args.size or load_fz_params(raw).image_size
    read = make_reader(params.extractor, model, device)
    generator = np.random.default_rng(0)
    rows = []
    for block in blocks:
        total = num_channels(block)
        count = min(args.channels or total, total)
        channels = np.arange(count, dtype=np.int64)
        sources = {}
        zeros = np.zeros(count, np.float32)
        for kind in block_fz_taps(block):
            images = generator.integers(0, 256, (count, 3, size, size), dtype=np.uint8)
            sources[kind] = (FZFile(images, channels, zeros, zeros), channels)
        fzs = BlockFZs(block=block, channels=channels, sources=sources)

        def work(fzs=fzs) -> None:
            activations.measure_block(read, fzs, params, progress=False)

        warm_up(work, device)
        probe = Probe(device).run(work)
        rate = count / probe["seconds"]
        measured = f"{count} ch x 5 images @ {size} px"
        rows.append(_row("activations", block, measured, rate, "ch/s", probe, total))
    return rows


def generated_eval(folder: Path, images: int) -> eval_set.EvalSet:
    """``images`` generated JPEGs (ImageNet-like 375 px) decoded into the 256 px evaluation cache."""
    classes = min(10, images)
    per_class = -(-images // classes)
    root = data.write_generated_folders(
        folder / "val", data.GeneratedParams(classes=classes, per_class=per_class, size=375)
    )
    data.decode_to_cache(data.list_folders(root), folder / "eval", progress=False)
    return eval_set.load_eval(folder / "eval")


def measure_natural(model, raw: dict, eval_set, args, device) -> list[dict[str, Any]]:
    params = load_section(raw, "natural", natural.NaturalParams)
    batch = args.batch_size or params.batch_size

    def work() -> None:
        natural.natural_pass(
            model, eval_set, params.blocks, k=params.k, batch_size=batch, device=device, progress=False
        )

    warm_up(work, device)
    probe = Probe(device).run(work)
    rate = len(eval_set) / probe["seconds"]
    item = f"{len(params.blocks)} blocks x 3 taps"
    return [_row("natural", item, f"{len(eval_set)} images", rate, "img/s", probe, PAPER_IMAGES)]


def measure_ablate(model, raw: dict, eval_set, args, device) -> list[dict[str, Any]]:
    """Each ablated block: one screening pass and the sweep, with the paper's condition counts."""
    params = load_section(raw, "ablate", ablate_params.AblateParams)
    batch = args.batch_size or params.batch_size
    rows = []
    for block in params.blocks:
        channels = num_channels(block)
        means = np.zeros(channels)
        passing = list(range(0, channels, 5))  # about the paper's share of passing channels
        others = [c for c in range(channels) if c % 5]
        sets = [ablate.draw_random_set(others, len(passing), 0, block, a) for a in range(params.screen_batch)]
        random_sets = [ablate.Condition.mean_ablation(f"random_{a}", s, means) for a, s in enumerate(sets)]
        fixed = [ablate.Condition("baseline"), ablate.Condition.mean_ablation("passing", passing, means)]
        no_scale = ablate.crop_of(0, params.crop_rule, eval_set)
        crops = [ablate.crop_of(p, params.crop_rule, eval_set) for p in params.percents]

        def work(fixed=fixed, random_sets=random_sets, no_scale=no_scale, crops=crops, block=block) -> None:
            ablate.evaluate(
                model,
                eval_set,
                block,
                [*fixed, *random_sets],
                [no_scale],
                batch_size=batch,
                device=device,
                progress=False,
            )
            ablate.evaluate(
                model,
                eval_set,
                block,
                [*fixed, *random_sets[: params.trials]],
                crops,
                batch_size=batch,
                device=device,
                progress=False,
            )

        warm_up(work, device)
        probe = Probe(device).run(work)
        rate = len(eval_set) / probe["seconds"]
        measured = f"{len(eval_set)} images x ({2 + params.screen_batch} + {len(crops)} x {2 + params.trials} conditions)"
        rows.append(_row("ablate", block, measured, rate, "img/s", probe, PAPER_IMAGES))
    return rows


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _row(
    stage: str, item: str, measured: str, rate: float, unit: str, probe: dict[str, Any], full_work: float
) -> dict[str, Any]:
    """One table row (printed as it is made): the measured rate and the full paper run it projects."""
    row = {
        "item": item,
        "measured": measured,
        "rate": rate,
        "unit": unit,
        **probe,
        "full_work": full_work,
        "projected_s": full_work / rate,
    }
    _print_row(stage, row)
    return row


def _print_row(stage: str, row: dict[str, Any]) -> None:
    print(
        f"  {stage:<11} {row['item']:<22} {row['measured']:<44} {row['rate']:>10.2f} {row['unit']:<10} "
        f"peak {_fmt(row['peak_gib'], '{:.2f} GiB'):>9}  util {_fmt(row['gpu_util_pct'], '{:.0f} %'):>5}  "
        f"full run {row['projected_s'] / 60:8.2f} min",
        flush=True,
    )


def summary(stages: dict[str, list[dict[str, Any]]], gpus: int) -> dict[str, Any]:
    """Projected minutes per stage and for the whole run on 1 and on ``gpus`` GPUs."""
    per_stage = {name: sum(r["projected_s"] for r in rows) / 60 for name, rows in stages.items()}
    sharded = {"natural", "ablate"}  # image batches: every GPU busy
    pooled = ("fz", "pre-reading")  # (tap, chunk) items in one pool
    on_many = sum(m / (gpus if name in sharded else 1) for name, m in per_stage.items() if name not in pooled)
    by_block = on_many
    if "fz" in stages:
        on_many += fz_minutes_pooled(stages["fz"], gpus)
        by_block += fz_minutes_on(stages["fz"], gpus)
    if "pre-reading" in stages:
        extra = pre_reading_minutes_on(stages["pre-reading"], gpus)
        on_many, by_block = on_many + extra, by_block + extra
    peaks = [r["peak_gib"] for rows in stages.values() for r in rows if r["peak_gib"] is not None]
    return {
        "projected_min": per_stage,
        "total_min_1": sum(per_stage.values()),
        f"total_min_{gpus}": on_many,
        f"total_min_{gpus}_fz_by_block": by_block,
        "peak_gib": max(peaks) if peaks else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="the run to project (default params.yaml)")
    parser.add_argument("--device", default="auto", help="auto (the GPU it finds), cuda:1, cpu …")
    parser.add_argument("--small", action="store_true", help="CPU settings: few steps, channels, images")
    parser.add_argument("--steps", type=int, default=None, help="FZ steps measured (default 200; small 3)")
    parser.add_argument(
        "--channels",
        type=int,
        default=None,
        help="FZ and activations channels per tap/block (default all; small 1)",
    )
    parser.add_argument("--size", type=int, default=0, help="FZ image side (default: the params')")
    parser.add_argument(
        "--images", type=int, default=None, help="natural/ablate images (default 2048; small 4)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="natural/ablate batch (default: the params')"
    )
    parser.add_argument("--stages", default="fz,activations,natural,ablate", help="comma-separated subset")
    parser.add_argument("--gpus", type=int, default=8, help="also project the run on this many GPUs")
    parser.add_argument("--weights", default="random:0", help="model.weights (speed does not depend on it)")
    parser.add_argument("--label", default="", help="the machine, for the JSON (e.g. '1x H100 80GB')")
    parser.add_argument("--json", type=Path, default=Path("outputs/benchmarks/paper_time.json"))
    args = parser.parse_args()
    small = args.small
    args.steps = args.steps or (3 if small else 200)
    args.channels = args.channels if args.channels is not None else (1 if small else 0)
    args.images = args.images or (4 if small else 2048)
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.small:
        sys.exit("paper_time.py: no CUDA device found; pass --small to measure the CPU with small settings")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    raw = read_params(args.params)
    model = load_resnet18(args.weights).to(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"paper_time: {name}; {args.params}; torch {torch.__version__}", flush=True)
    wanted = args.stages.split(",")
    stages: dict[str, list[dict[str, Any]]] = {}

    def save() -> dict[str, Any]:  # after every stage: a run cut short keeps what it measured
        totals = summary(stages, args.gpus)
        result = {
            "device": name,
            "label": args.label,
            "settings": vars(args) | {"json": str(args.json)},
            "stages": stages,
            **totals,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        return totals

    if "fz" in wanted:
        stages["fz"] = measure_fz(model, raw, args, device)
        if pre_reading := project_pre_reading(stages["fz"], raw):
            stages["pre-reading"] = pre_reading
        save()
    if "activations" in wanted:
        stages["activations"] = measure_activations(model, raw, args, device)
        save()
    if {"natural", "ablate"} & set(wanted):
        with tempfile.TemporaryDirectory() as folder:
            eval_set = generated_eval(Path(folder), args.images)
            if "natural" in wanted:
                stages["natural"] = measure_natural(model, raw, eval_set, args, device)
                save()
            if "ablate" in wanted:
                stages["ablate"] = measure_ablate(model, raw, eval_set, args, device)
    print_tables(stages, save(), args.gpus)
    print(f"→ {args.json}")


def print_tables(stages: dict[str, list[dict[str, Any]]], totals: dict[str, Any], gpus: int) -> None:
    """One markdown table per stage, then the projected totals."""
    for name, rows in stages.items():
        print(f"\n### {name}\n")
        print("| item | measured | rate | peak GPU memory | GPU util | projected full run |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(
                f"| {r['item']} | {r['measured']} | {r['rate']:.2f} {r['unit']} | "
                f"{_fmt(r['peak_gib'], '{:.2f} GiB')} | {_fmt(r['gpu_util_pct'], '{:.0f} %')} | "
                f"{r['projected_s'] / 60:.1f} min |"
            )
        print(f"| **{name}** | | | | | **{totals['projected_min'][name]:.1f} min** |")
    print(
        f"\nwhole paper run, projected: {totals['total_min_1']:.1f} min on 1 device, "
        f"{totals[f'total_min_{gpus}']:.1f} min on {gpus} (dvc repro: every stale block's FZ chunks in one pool, "
        f"natural, ablate sharded), {totals[f'total_min_{gpus}_fz_by_block']:.1f} min with launch.fz_pool: "
        "block (fz block by block in rounds of chunks); "
        f"peak GPU memory {_fmt(totals['peak_gib'], '{:.2f} GiB')}"
    )


if __name__ == "__main__":
    main()
