"""`rsi natural`: the natural-image pass over the evaluation cache.

One streamed pass, the standard no-scale view (center crop 224 of the 256 px cache, which is torchvision's
``Resize(256)`` + ``CenterCrop(224)``, normalised). Every block's In, Pre and Post taps come from one truncated
forward per batch (``taps.forward_taps`` with all the taps). For each tap and channel, of the center neuron:

* ``mean``: the mean over the evaluation set. For Post this is the mean-ablation value of ``rsi ablate``:
  the authors measured the block's pre-ReLU sum and took the mean after clamping at 0, which equals the mean
  of the post-ReLU value measured here (the clamp is kept explicitly). Pre is ``bn2``'s output as is (it can
  be negative); In is what the block adds on its skip path.
* ``topk`` / ``topk_values``: the ``k`` evaluation-set indices with the largest activations (figures use
  k = 9), largest first, and those activations. A tap that is a ReLU output (Post, and the In of a block
  that starts from the previous block's output) is ranked by its pre-ReLU sum, as the authors ranked their
  ``prerelu_out`` (:func:`ranking_values`), so images on which it is silent still come in the authors'
  order; ties go to the higher index, as their ``sorted(zip(acts, index), reverse=True)`` (imnet_val.py)
  ordered them. The order never depends on batches or ranks.

Under ``torchrun`` the evaluation set is sharded across ranks in whole batches (batch b on rank b % world, so
every image is computed in the batch it has in one process); per-batch float64 sums are all-reduced and
summed in batch order, and the top-k lists gathered and merged, so the result is byte for byte that of one
process. Output per block: ``outputs/natural/<layerL_K>.npz``, written and read only through
:mod:`rsi.artifacts.natural`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from rsi import artifacts, distributed
from rsi.artifacts.natural import NaturalStats, write_natural
from rsi.config import PROBED_BLOCKS, check_blocks, load_section, read_params
from rsi.eval_set import EvalSet, load_eval
from rsi.model import describe_weights, load_model
from rsi.natural_params import NaturalParams
from rsi.runtime import ModelParams, full_float32, resolve_device
from rsi.taps import (
    TAP_KINDS,
    Tap,
    arch_of,
    center,
    forward_taps,
    has_downsample,
    num_channels,
    previous_block,
)
from rsi.transforms import ablation_view

_NO_INDEX = torch.iinfo(torch.int64).max


@dataclass
class NaturalMeasure:
    """One block's measurement (the arrays of :class:`rsi.artifacts.natural.NaturalStats`)."""

    mean: np.ndarray  # (3, C) float32
    topk: np.ndarray  # (3, C, k) int64
    topk_values: np.ndarray  # (3, C, k) float32
    count: int


def merge_topk(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries per row of (R, M) values with their indices, largest first.

    Ties go to the higher index: the authors sorted (activation, image index) pairs in reverse, so of two
    equal activations the later image came first (imnet_val.py, ``get_imnet_val_acts``)."""
    order = torch.argsort(indices, dim=1, descending=True, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def pre_relu_sources(tap: Tap, arch: str) -> tuple[Tap, Tap] | None:
    """The (Pre, In) taps whose sum is the value before the ReLU that makes ``tap``, when ``tap`` is a
    block's ReLU output: its Post, or the In of a block that starts from the previous block's output.
    None for Pre and for an In made by a downsample or the maxpool."""
    if tap.kind == "post":
        return Tap(tap.block, "pre"), Tap(tap.block, "in")
    previous = previous_block(tap.block, arch)
    if tap.kind == "in" and previous is not None and not has_downsample(tap.block, arch):
        return Tap(previous, "pre"), Tap(previous, "in")
    return None


def ranking_values(values: dict[Tap, torch.Tensor], tap: Tap, arch: str) -> torch.Tensor:
    """(B, C) center values the top-k ranks ``tap`` by. The authors ranked a ReLU output by their
    ``prerelu_out``: Pre plus the skip, the float add of torchvision's ``out += identity``, so bit for bit
    the block's sum before its ReLU. ReLU is monotone, so the positive images keep the tap's own order,
    and the images on which the channel is silent rank by how far below 0 the sum stays."""
    sources = pre_relu_sources(tap, arch)
    if sources is None:
        return center(values[tap])
    pre, skip = sources
    return center(values[pre]) + center(values[skip])


def center_values(values: dict[Tap, torch.Tensor], tap: Tap) -> torch.Tensor:
    """(B, C) center-neuron values of a tap; Post clamped at 0 (the authors' pre-ReLU sum, clamped)."""
    result = center(values[tap])
    return result.clamp(min=0) if tap.kind == "post" else result


def natural_pass(
    model: torch.nn.Module,
    eval_set: EvalSet,
    blocks: Sequence[str] = PROBED_BLOCKS,
    *,
    k: int = 9,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, NaturalMeasure]:
    """Means and top-k of the center neurons of every block's In/Pre/Post (see the module docstring).
    Every rank returns the same merged result."""
    device = torch.device(device)
    arch = arch_of(model)
    blocks = check_blocks(tuple(blocks), arch)
    taps = [Tap(block, kind) for block in blocks for kind in TAP_KINDS]
    sources = {source for tap in taps for source in pre_relu_sources(tap, arch) or ()}
    measured = [*taps, *sorted(sources - set(taps), key=str)]
    width = {tap: num_channels(tap.block, arch) for tap in taps}
    total = len(eval_set)
    if total == 0:
        raise ValueError("the evaluation set is empty")
    k_eff = min(k, total)
    world = distributed.world()[1]
    mine = distributed.shard_batches(total, batch_size)  # whole batches: the floats of one process
    indices = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    n_batches = -(-total // batch_size)
    # per-batch float64 sums, each row written by one rank, all-reduced (adding zeros is exact) and
    # summed over batches in order: the mean's bytes do not depend on the number of ranks
    sums = {tap: torch.zeros(n_batches, width[tap], dtype=torch.float64, device=device) for tap in taps}
    top_values = {tap: torch.empty(width[tap], 0, device=device) for tap in taps}
    top_index = {tap: torch.empty(width[tap], 0, dtype=torch.int64, device=device) for tap in taps}
    bar = tqdm(total=total, desc="natural", unit="img", disable=not (progress and distributed.is_main()))
    with torch.inference_mode():
        for index, images, _ in eval_set.batches(indices, batch_size, device):
            view = ablation_view(images, eval_set.view_size, eval_set.view_size, eval_set.resized_of(index))
            values = forward_taps(model, view, measured, detach=True)
            batch = int(index[0]) // batch_size
            index = index.to(device)
            for tap in taps:
                sums[tap][batch] = center_values(values, tap).double().sum(0)
                ranking = ranking_values(values, tap, arch).float()
                candidates = torch.cat([top_values[tap], ranking.T], dim=1)
                candidate_index = torch.cat([top_index[tap], index.expand(ranking.shape[1], -1)], dim=1)
                top_values[tap], top_index[tap] = merge_topk(candidates, candidate_index, k_eff)
            bar.update(len(index) * world)
    bar.close()
    results = {}
    for block in blocks:
        block_taps = [Tap(block, kind) for kind in TAP_KINDS]
        mean = torch.stack([distributed.all_reduce_sum(sums[tap]).sum(0) for tap in block_taps]) / total
        values = torch.stack([_pad(top_values[tap], k_eff, float("-inf")) for tap in block_taps])
        index = torch.stack([_pad(top_index[tap], k_eff, _NO_INDEX) for tap in block_taps])
        values, index = _gather_topk(values, index, k_eff)
        relu_output = torch.tensor(
            [pre_relu_sources(tap, arch) is not None for tap in block_taps], device=device
        )
        values = torch.where(relu_output[:, None, None], values.clamp(min=0), values)  # the taps' own values
        results[block] = NaturalMeasure(
            mean=mean.float().cpu().numpy(),
            topk=index.cpu().numpy(),
            topk_values=values.float().cpu().numpy(),
            count=total,
        )
    return results


def _pad(tensor: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """Pad (C, m) to (C, k) with ``fill`` (a rank may hold fewer than k images)."""
    missing = k - tensor.shape[1]
    if missing <= 0:
        return tensor
    return torch.cat(
        [tensor, torch.full((tensor.shape[0], missing), fill, dtype=tensor.dtype, device=tensor.device)], 1
    )


def _gather_topk(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge (3, C, k) top-k lists over ranks (identity in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered_values = [torch.empty_like(values) for _ in range(dist.get_world_size())]
        gathered_index = [torch.empty_like(index) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered_values, values.contiguous())
        dist.all_gather(gathered_index, index.contiguous())
        values, index = torch.cat(gathered_values, dim=-1), torch.cat(gathered_index, dim=-1)
    shape = values.shape
    flat_values, flat_index = merge_topk(values.reshape(-1, shape[-1]), index.reshape(-1, shape[-1]), k)
    return flat_values.reshape(*shape[:-1], k), flat_index.reshape(*shape[:-1], k)


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = "outputs root: reads <outputs>/eval, writes <outputs>/natural (default outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the flags every stage has: --params and --outputs (rsi.cli)."""


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "natural", NaturalParams, source=args.params)
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    device = resolve_device(model_params.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    numerics = full_float32(
        params.tf32
    )  # full float32 on CUDA unless declared (PyTorch allows TF32 by default)
    distributed.init()
    eval_set = load_eval(artifacts.eval_dir(Path(args.outputs)))
    model = load_model(model_params.weights, model_params.arch).to(device)
    results = natural_pass(
        model, eval_set, params.blocks, k=params.k, batch_size=params.batch_size, device=device
    )
    if distributed.is_main():
        weights = describe_weights(model_params.weights, model_params.arch)
        for block, measure in results.items():
            stats = NaturalStats(
                **vars(measure), weights=weights, generated=eval_set.generated, numerics=numerics
            )
            write_natural(block, stats, Path(args.outputs))
        print(f"natural: {len(eval_set)} images, blocks {', '.join(params.blocks)} → {args.outputs}/natural")
    distributed.barrier()
