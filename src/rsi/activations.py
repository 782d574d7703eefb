"""`rsi activations`: center-neuron responses of each probed block's In, Pre and Post to the FZs.

For block b and channel c the stage records, for each image of :data:`rsi.artifacts.FZ_IMAGES`,

* ``in_fz``: X̂_In_c, the FZ named by :func:`rsi.artifacts.in_fz_source` (for an L.1 block, the Post FZ of
  block L.0: the same activation, rendered once);
* ``scaled_in_fz``: S(X̂_In_c), S = :func:`rsi.transforms.scale_crop` (center-crop half, bilinear resize
  back), applied to the normalised image as the authors did;
* ``pre_fz``: X̂_Pre_c;
* ``shrunk_pre_fz``: X̂_Pre_c resized to half and reflect-padded back (:func:`rsi.transforms.shrink_pad`,
  the authors' unreported mirror test), also on the normalised image;
* ``post_fz``: X̂_Post_c;

the center neuron of channel c of each tap (In, Pre, Post) of b, into ``acts`` (len(FZ_IMAGES), 3, C) of
``outputs/activations/<layerL_K>.npz``. FZ files store value·255 truncated to uint8 (as the authors' 8-bit
PNGs) or float32 in [0, 1]; uint8 is read back as value/255, as ToTensor does.

The extractor is thingsvision (``get_extractor_from_model``), as in the paper: its hook stores a clone of
each module's output, so on ``layerL.K.bn2`` it holds the true Pre, before BasicBlock's in-place
``out += identity`` and ReLU. ``activations.extractor: taps`` uses this package's copying taps instead;
tests check that the two agree exactly. All three taps come from one forward per batch, and only the
center neurons are kept.

:func:`measure` is the stage's work as a function (stages stability and pre-reading call it for their own
FZs); the file it writes is rsi.artifacts.activations', the FZ files it reads rsi.artifacts.fz's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rsi import artifacts
from rsi.artifacts import FZ_IMAGES, OUTPUTS, require_file
from rsi.artifacts import fz as fz_files
from rsi.artifacts.activations import Activations, write_activations
from rsi.artifacts.fz import FZFile
from rsi.config import (
    SCALE_FRACTION,
    ParamsError,
    block_argument,
    check_blocks,
    check_fraction,
    load_section,
    probed_blocks,
    read_params,
)
from rsi.model import describe_weights, load_model
from rsi.runtime import ModelParams, full_float32, resolve_device
from rsi.taps import DEFAULT_ARCH, TAP_KINDS, Tap, arch_of, block_key, center, forward_taps
from rsi.transforms import normalize, scale_crop, shrink_pad

Extractor = Literal["thingsvision", "taps"]
# tap values for a batch of normalised images: {tap: (N, C, H, W)}
TapReader = Callable[[Tensor, Sequence[Tap]], dict[Tap, Tensor]]
# activations.shrink_fraction when params.yaml names none: the authors' mirror test resizes 224 to 112
SHRINK_FRACTION = 0.5


def _check_shrink_fraction(value: float) -> float:
    if not 1 / 3 < value <= 1.0:
        raise ValueError(
            "expected a fraction in (1/3, 1]: the shrunk image is reflect-padded back to full size, "
            "which needs a pad smaller than the shrunk image (the authors: 0.5)"
        )
    return value


@dataclass(frozen=True)
class ActivationsParams:
    """params.yaml ``activations``."""

    extractor: Extractor = field(
        default="thingsvision",
        metadata={"help": "thingsvision (as the paper) or taps (this package's copying hooks)"},
    )
    batch_size: int = field(default=64, metadata={"min": 1, "help": "images per forward"})
    scale_fraction: float = field(
        default=SCALE_FRACTION,
        metadata={"check": check_fraction, "help": "S(X): center-crop this fraction (112/224)"},
    )
    shrink_fraction: float = field(
        default=SHRINK_FRACTION,
        metadata={
            "check": _check_shrink_fraction,
            "help": "mirror test: resize to this fraction (112/224), pad back",
        },
    )


# ------------------------------------------------------------------------------------------- FZ files


def fz_floats(fz: FZFile, positions: np.ndarray) -> Tensor:
    """The images of ``fz`` at ``positions`` as float32 in [0, 1] (uint8 read back as value/255, as
    ToTensor reads the authors' 8-bit PNGs)."""
    raw = torch.from_numpy(np.ascontiguousarray(fz.images[positions]))
    if raw.dtype == torch.uint8:
        return raw.float().div_(255.0)
    return raw.float()


@dataclass(frozen=True)
class BlockFZs:
    """The three FZ files a block needs, aligned on the channels all of them hold."""

    block: str
    channels: np.ndarray
    sources: dict[str, tuple[FZFile, np.ndarray]]  # "in" / "pre" / "post" → (file, positions of channels)


def block_fz_taps(block: str) -> dict[str, Tap]:
    """The FZs a block's images come from: X̂_In (:func:`rsi.artifacts.in_fz_source`), X̂_Pre, X̂_Post."""
    return {"in": artifacts.in_fz_source(block), "pre": Tap(block, "pre"), "post": Tap(block, "post")}


def require_block_fzs(block: str, root: Path = OUTPUTS, fz_stage: str = fz_files.STAGE) -> None:
    """Check that every FZ file of ``block`` exists, without loading any; ``fz_stage`` wrote them (fz, or
    stability / pre-reading for their own roots) and is named when one is missing."""
    for tap in block_fz_taps(block).values():
        path = artifacts.fz_file(tap, root)
        if fz_stage == fz_files.STAGE and not path.is_file():  # the DVC stage is fz@<block>, one per block
            key = block_key(tap.block)
            raise artifacts.MissingArtifactError(
                f"{path} is missing: it is written by `rsi fz --block {tap.block}` (DVC stage 'fz@{key}'); "
                f"list {tap.kind} under fz.blocks.{key}.taps in the params file and run `dvc repro` first"
            )
        require_file(path, fz_stage)


def load_block_fzs(block: str, root: Path = OUTPUTS, fz_stage: str = fz_files.STAGE) -> BlockFZs:
    """X̂_In (from :func:`rsi.artifacts.in_fz_source`), X̂_Pre and X̂_Post of ``block``."""
    paths = {kind: artifacts.fz_file(tap, root) for kind, tap in block_fz_taps(block).items()}
    files = {kind: fz_files.read_fz(path, stage=fz_stage) for kind, path in paths.items()}
    in_channels = files["in"].channels
    common = [c for c in in_channels if all(c in f.channels for f in files.values())]
    if not common:
        raise ValueError(f"block {block}: the FZ files {[str(p) for p in paths.values()]} share no channel")
    if any(len(f.channels) != len(common) for f in files.values()):
        print(
            f"rsi activations: block {block}: using the {len(common)} channels all three FZ files hold "
            f"({', '.join(f'{paths[k]}: {len(f.channels)}' for k, f in files.items())})",
            file=sys.stderr,
        )
    channels = np.asarray(common, dtype=np.int64)
    sources = {}
    for kind, fz in files.items():
        index = {int(c): i for i, c in enumerate(fz.channels)}
        sources[kind] = (fz, np.asarray([index[int(c)] for c in channels], dtype=np.int64))
    return BlockFZs(block=block, channels=channels, sources=sources)


def fz_inputs(
    fzs: BlockFZs,
    image: str,
    batch: slice,
    *,
    scale_fraction: float = SCALE_FRACTION,
    shrink_fraction: float = SHRINK_FRACTION,
) -> Tensor:
    """Normalised model inputs for one of :data:`FZ_IMAGES`, for the channels ``fzs.channels[batch]``."""
    source = {"in_fz": "in", "scaled_in_fz": "in", "pre_fz": "pre", "shrunk_pre_fz": "pre", "post_fz": "post"}
    fz, positions = fzs.sources[source[image]]
    images = normalize(fz_floats(fz, positions[batch]))
    if image == "scaled_in_fz":
        return scale_crop(images, scale_fraction)
    if image == "shrunk_pre_fz":
        return shrink_pad(images, int(images.shape[-1] * shrink_fraction))
    return images


# ------------------------------------------------------------------------------------------ extractors


def taps_reader(model: nn.Module, device: torch.device | str = "cpu") -> TapReader:
    """Tap values from this package's copying hooks, forward truncated after the deepest tap."""

    def read(images: Tensor, taps: Sequence[Tap]) -> dict[Tap, Tensor]:
        with torch.no_grad():
            values = forward_taps(model, images.to(device), list(taps), detach=True)
        return {tap: value.cpu() for tap, value in values.items()}

    return read


def thingsvision_extractor(model: nn.Module, device: torch.device | str = "cpu") -> Any:
    """thingsvision's extractor around ``model`` (``get_extractor_from_model``, PyTorch backend)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # thingsvision imports TensorFlow
    from thingsvision import get_extractor_from_model  # slow import (~11 s): only when used

    return get_extractor_from_model(model=model, device=str(device), backend="pt")


def thingsvision_reader(extractor: Any, arch: str = DEFAULT_ARCH) -> TapReader:
    """Tap values from thingsvision: one forward per batch, a cloning hook on each tap's module."""

    def read(images: Tensor, taps: Sequence[Tap]) -> dict[Tap, Tensor]:
        modules = list(dict.fromkeys(tap.module_of(arch) for tap in taps))
        with extractor.batch_extraction(module_names=modules, output_type="tensor") as batch_extractor:
            features = batch_extractor.extract_batch(batch=images, flatten_acts=False)
        return {tap: features[tap.module_of(arch)] for tap in taps}

    return read


def make_reader(name: Extractor, model: nn.Module, device: torch.device | str = "cpu") -> TapReader:
    if name == "thingsvision":
        return thingsvision_reader(thingsvision_extractor(model, device), arch_of(model))
    if name == "taps":
        return taps_reader(model, device)
    raise ValueError(f"unknown extractor {name!r}: choose thingsvision or taps")


# -------------------------------------------------------------------------------------------- the work


def block_activations(
    read: TapReader,
    fzs: BlockFZs,
    *,
    batch_size: int = 64,
    scale_fraction: float = SCALE_FRACTION,
    shrink_fraction: float = SHRINK_FRACTION,
    progress: bool = True,
) -> np.ndarray:
    """``acts`` (len(FZ_IMAGES), 3, C): acts[i, t, j] is the center neuron of tap TAP_KINDS[t], channel
    fzs.channels[j], to image FZ_IMAGES[i] of that channel."""
    taps = [Tap(fzs.block, kind) for kind in TAP_KINDS]
    count = len(fzs.channels)
    acts = np.zeros((len(FZ_IMAGES), len(TAP_KINDS), count), dtype=np.float32)
    channels = torch.from_numpy(fzs.channels)
    steps = [
        (i, slice(s, min(s + batch_size, count)))
        for i in range(len(FZ_IMAGES))
        for s in range(0, count, batch_size)
    ]
    for i, batch in tqdm(steps, desc=f"activations {fzs.block}", unit="batch", disable=not progress):
        inputs = fz_inputs(
            fzs, FZ_IMAGES[i], batch, scale_fraction=scale_fraction, shrink_fraction=shrink_fraction
        )
        values = read(inputs, taps)
        rows = torch.arange(batch.stop - batch.start)
        for t, tap in enumerate(taps):
            acts[i, t, batch] = center(values[tap])[rows, channels[batch]].numpy()
    return acts


def measure_block(
    read: TapReader, fzs: BlockFZs, params: ActivationsParams, *, progress: bool = True
) -> np.ndarray:
    """:func:`block_activations` as params.yaml's ``activations`` section sets it (batch size, S, shrink)."""
    return block_activations(
        read,
        fzs,
        batch_size=params.batch_size,
        scale_fraction=params.scale_fraction,
        shrink_fraction=params.shrink_fraction,
        progress=progress,
    )


def measure(
    model: nn.Module,
    blocks: Sequence[str],
    params: ActivationsParams,
    *,
    weights: str,
    device: torch.device | str = "cpu",
    outputs: Path = OUTPUTS,
    fz_stage: str = fz_files.STAGE,
) -> dict[str, Path]:
    """Measure the activations of ``blocks`` from the FZs under ``outputs``/fz into ``outputs``/activations
    (every FZ file is checked before any work; ``fz_stage`` wrote them); ``weights`` is model.weights, for
    the record. Returns the files written. Full float32 on CUDA (PyTorch allows TF32 convolutions by
    default)."""
    outputs = Path(outputs)
    for block in blocks:
        require_block_fzs(block, outputs, fz_stage)
    model.to(device)
    numerics = full_float32()
    read = make_reader(params.extractor, model, device)
    label = describe_weights(weights, arch_of(model))
    written = {}
    for block in blocks:
        block_fzs = load_block_fzs(block, outputs, fz_stage)
        acts = measure_block(read, block_fzs, params)
        record = Activations(
            acts=acts,
            channels=block_fzs.channels,
            fz_images=FZ_IMAGES,
            taps=TAP_KINDS,
            weights=label,
            extractor=params.extractor,
            scale_fraction=params.scale_fraction,
            shrink_fraction=params.shrink_fraction,
            numerics=numerics,
        )
        written[block] = artifacts.activations_file(block_fzs.block, outputs)
        write_activations(written[block], record)
        print(f"block {block_fzs.block}: {len(block_fzs.channels)} channels → {written[block]} ({label})")
    return written


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = "outputs root: FZs from OUTPUTS/fz, activations into OUTPUTS/activations (default: outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--block",
        action="extend",
        nargs="+",
        metavar="BLOCK",
        type=block_argument,
        help="blocks to measure (2.1 or layer2_1; default: criteria.blocks)",
    )


def measure_with_params(
    raw: dict[str, Any],
    source: str,
    model: nn.Module,
    blocks: Sequence[str],
    *,
    outputs: Path = OUTPUTS,
    fz_stage: str = fz_files.STAGE,
) -> dict[str, Path]:
    """:func:`measure` with params.yaml's ``activations`` and ``model`` sections (read from ``raw``, the
    file ``source``): stage activations, and stability and pre-reading for the FZs under their roots."""
    params = load_section(raw, "activations", ActivationsParams, source=source)
    model_params = load_section(raw, "model", ModelParams, source=source)
    device = resolve_device(model_params.device)
    return measure(
        model, blocks, params, weights=model_params.weights, device=device, outputs=outputs, fz_stage=fz_stage
    )


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    if args.block:
        try:
            blocks = check_blocks(tuple(args.block), model_params.arch)
        except ValueError as error:
            raise ParamsError(f"--block {' '.join(args.block)}: {error}") from error
    else:
        blocks = probed_blocks(raw, source=args.params)
    model = load_model(model_params.weights, model_params.arch)
    measure_with_params(raw, args.params, model, blocks, outputs=Path(args.outputs))
