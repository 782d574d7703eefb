"""`rsi fz --block 2.1`: center-neuron feature visualizations (FZs) of every channel of a block's taps.

Paper section 2.2 and appendix 7.1; the defaults are what the authors' code ran (DESIGN.md, last section):
torch-lucent's FFT / decorrelated-colour image parameterisation at 224 px, Adam lr 0.05 for 2,560 steps,
the objective ``objectives.neuron(module, c)`` (the center neuron (H//2, W//2) of channel c), their
transform chain with a per-block jitter, and 8-bit storage (value·255 truncated, as their PNGs).

The module owns the ``fz`` params (FZParams, BlockFZParams), what decides a tap's pixels (TapSpec), the
batched optimisation (render_channels), the resume chunks under ``outputs/.resume`` and the output lock,
and render_block, the stage as a function (stages stability and pre-reading call it). Its files are
rsi.artifacts.fz's. How it is fast and reproducible (batching, keyed draws, declared batch geometry,
resume, lock, ranks): docs/fz.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from rsi import distributed
from rsi.artifacts import OUTPUTS, fz_dir, fz_file, fz_settings_file, in_fz_source
from rsi.artifacts.fz import ARRAYS as FZ_ARRAYS
from rsi.artifacts.fz import FZFile, FZSettings, read_fz, write_fz, write_fz_settings
from rsi.config import (
    DVC_STAGE,
    ParamsError,
    as_dict,
    blocks_argument,
    check_distinct,
    load_section,
    load_seed,
    params_arch,
    read_params,
)
from rsi.fz_param import image_batch, initial_spectrum, to_storage
from rsi.fz_transforms import apply_planned, by_shape, draw_table, n_draw_columns, plan_draws, transform_ops
from rsi.runtime import ModelParams, describe_device, keyed_generator, load_npz, resolve_device
from rsi.taps import (
    DEFAULT_ARCH,
    Tap,
    arch_of,
    block_key,
    block_names,
    forward_taps,
    num_channels,
    parse_block,
)
from rsi.transforms import IMAGENET_MEAN, IMAGENET_STD

TapKind = Literal["in", "pre", "post"]


# ----------------------------------------------------------------------------------------- params


def _check_jitter(value: int) -> int:
    if value == 0 or value >= 4:
        return value
    raise ValueError(
        "use 0 for no jitter (lucent's jitter(d) asserts d > 1, so 'no jitter' leaves both jitter "
        "transforms out, as the authors' code does) or a J >= 4 (the second jitter is J//2, which must be > 1)"
    )


def _check_tap_jitter(value: dict[str, int]) -> dict[str, int]:
    for jitter in value.values():
        _check_jitter(jitter)
    return value


def _check_taps(taps: tuple[str, ...]) -> tuple[str, ...]:
    return check_distinct(taps, "tap", empty="list at least one of in, pre, post")


@dataclass(frozen=True)
class BlockFZParams:
    """fz.blocks.<layerL_K>: which taps to render and the jitter J of the transforms.

    ``tap_jitter`` overrides J for single taps: the paper text's reading of §7.1 ("jitter=4 for 2.1 Pre
    … the default jitter=16 for the remainder") gives 2.1 Post J=16, where the authors' code ran 4
    (the default): ``layer2_1: {taps: [pre, post], jitter: 4, tap_jitter: {post: 16}}``."""

    taps: tuple[TapKind, ...] = field(metadata={"check": _check_taps})
    jitter: int = field(metadata={"min": 0, "check": _check_jitter})
    tap_jitter: dict[TapKind, int] = field(default_factory=dict, metadata={"check": _check_tap_jitter})

    def jitter_of(self, kind: str) -> int:
        return self.tap_jitter.get(kind, self.jitter)


# DESIGN.md (authors' batch_process.sh): jitter 0 for 1.0, 1.1 and all of 2.0; 4 for 2.1 and all of 3.0;
# 16 for 3.1 and block 4. The In of an L.1 block is block L.0's Post FZ (artifacts.in_fz_source).
DEFAULT_BLOCKS: dict[str, BlockFZParams] = {
    "layer1_0": BlockFZParams(taps=("post",), jitter=0),
    "layer1_1": BlockFZParams(taps=("pre", "post"), jitter=0),
    "layer2_0": BlockFZParams(taps=("in", "pre", "post"), jitter=0),
    "layer2_1": BlockFZParams(taps=("pre", "post"), jitter=4),
    "layer3_0": BlockFZParams(taps=("in", "pre", "post"), jitter=4),
    "layer3_1": BlockFZParams(taps=("pre", "post"), jitter=16),
    "layer4_0": BlockFZParams(taps=("in", "pre", "post"), jitter=16),
    "layer4_1": BlockFZParams(taps=("pre", "post"), jitter=16),
}


def _check_blocks(blocks: dict[str, BlockFZParams]) -> dict[str, BlockFZParams]:
    checked: dict[str, BlockFZParams] = {}
    arch = params_arch()
    for key, settings in blocks.items():
        try:
            block = parse_block(key, arch)
        except ValueError:
            keys = ", ".join(block_key(b) for b in block_names(arch))
            raise ValueError(f"unknown block key {key!r}: keys of {arch} are {keys}") from None
        if block_key(block) in checked:
            raise ValueError(f"block {block} is listed twice")
        if "." in str(key):  # dvc.yaml's fz@<key> stage declares fz.blocks.<key>: DVC would look for 2 -> 1
            raise ValueError(
                f"block key {key!r} has a dot, which DVC reads as nesting (stage fz@{key} would declare a "
                f"param fz.blocks.{key} it cannot find): write it as {block_key(block)}"
            )
        source = in_fz_source(block)
        if "in" in settings.taps and source != Tap(block, "in"):
            raise ValueError(
                f"{key}: the In of block {block} is block {source.block}'s Post (its FZ is rendered once, "
                f"as {source}); list post under {block_key(source.block)} instead of in under {key}"
            )
        checked[block_key(block)] = settings
    return checked


def _check_lr(value: float) -> float:
    if value > 0 and math.isfinite(value):
        return value
    raise ValueError("the learning rate must be a positive number")


@dataclass(frozen=True)
class FZParams:
    """params.yaml ``fz``."""

    steps: int = field(default=2560, metadata={"min": 1, "help": "optimisation steps (authors: 2560)"})
    lr: float = field(default=0.05, metadata={"check": _check_lr, "help": "Adam learning rate (lucent)"})
    image_size: int = field(
        default=224,
        metadata={
            "min": 32,
            "help": "image side in px (paper: 224; under 224 not upsampled as lucent: docs/fz.md)",
        },
    )
    # 128: what the automatic choice gave on every GPU before this key existed (512, halved on out of
    # memory, but never past a 128-channel chunk), so GPU FZs keep their batches; fits an H100 at 224 px.
    batch_channels: int = field(
        default=128, metadata={"min": 1, "help": "channels per optimisation batch (changes floats)"}
    )
    transforms: Literal["authors_code", "lucent_standard"] = "authors_code"
    pre_reading: Literal["exact", "lucent_reference"] = "exact"
    storage: Literal["uint8", "float32"] = "uint8"
    # TF32 measured no faster on an H100 (30-step benchmark: 71 vs 82 ch/s for 4.1/post): these steps are
    # not convolution-bound. Kept as an opt-in; float32 numerics by default.
    tf32: bool = field(default=False, metadata={"help": "allow TF32 convolutions on CUDA (not float32)"})
    # torch's CUDA backward of grid_sample, bilinear interpolate and the reflect pad adds with atomics in
    # an order that changes per run; rsi.adjoints sums exactly in fixed point instead (CPU: torch's, which
    # is deterministic, either way).
    cuda_backward: Literal["deterministic", "native"] = field(
        default="deterministic",
        metadata={"help": "transform backward on CUDA: exact sums or torch's atomics"},
    )
    max_channels: int = field(default=0, metadata={"min": 0, "help": "first N channels only; 0 = all"})
    chunk_batches: int = field(
        default=1, metadata={"min": 1, "help": "whole batches per resumable chunk (speed only, tested)"}
    )
    blocks: dict[str, BlockFZParams] = field(
        default_factory=lambda: dict(DEFAULT_BLOCKS), metadata={"check": _check_blocks}
    )

    def block(self, block: str) -> BlockFZParams:
        """The settings of ``block`` (any spelling); a ParamsError when fz.blocks lacks it."""
        key = block_key(block)
        if key not in self.blocks:
            raise ParamsError(
                f"fz.blocks has no key {key} (block {parse_block(block)}); configured: "
                f"{', '.join(self.blocks) or 'none'}"
            )
        return self.blocks[key]


def load_fz_params(raw: dict[str, Any], *, source: str = "params.yaml") -> FZParams:
    """Section ``fz`` of a params mapping, validated."""
    return load_section(raw, "fz", FZParams, source=source)


# ------------------------------------------------------------------------------- what a tap renders


@dataclass(frozen=True)
class TapSpec:
    """Everything that decides one tap's FZ pixels (with the channel): its settings hash, with the FZ
    code's digest, keys resume (:meth:`resume_key`)."""

    block: str
    kind: str
    seed: int
    weights: str
    steps: int
    lr: float
    image_size: int
    transforms: str
    jitter: int
    pre_reading: str
    storage: str
    tf32: bool
    batch_channels: int  # the batch geometry: consecutive channels optimised together (float rounding)
    cuda_backward: str = "deterministic"  # the transforms' backward on CUDA (rsi.adjoints or torch's)
    objective: str = "center"  # "center": the center neuron (the paper's FZs); "channel": the whole map
    # "" for every stage's FZs; "rerun" for stage rerun-fz's re-renders, whose draws must not repeat another
    # seed's (stage stability renders seed + 1 … with the plain keys); left out of settings and hash when ""
    draw_stream: str = ""
    arch: str = DEFAULT_ARCH  # model.arch; left out of settings and hash for resnet18 (see settings())

    @classmethod
    def of(
        cls,
        tap: Tap,
        fz: FZParams,
        *,
        seed: int,
        weights: str,
        jitter: int | None = None,
        objective: str = "center",
        arch: str = DEFAULT_ARCH,
    ) -> TapSpec:
        if jitter is None:
            jitter = fz.block(tap.block).jitter_of(tap.kind)
        return cls(
            block=tap.block,
            kind=tap.kind,
            seed=seed,
            weights=weights,
            steps=fz.steps,
            lr=fz.lr,
            image_size=fz.image_size,
            transforms=fz.transforms,
            jitter=jitter,
            pre_reading=fz.pre_reading,
            storage=fz.storage,
            tf32=fz.tf32,
            batch_channels=fz.batch_channels,
            cuda_backward=fz.cuda_backward,
            objective=objective,
            arch=arch,
        )

    @property
    def tap(self) -> Tap:
        return Tap(self.block, self.kind)

    @property
    def objective_tap(self) -> Tap:
        """The activation the objective reads. ``exact``: the tap itself (Pre is a copy of bn2's output).
        ``lucent_reference``, for Pre: lucent's ModuleHook keeps a *reference* to bn2's output tensor;
        torchvision's BasicBlock then adds the skip into that very tensor (``out += identity``) and
        applies an in-place ReLU, so when the objective reads it, it holds the block output Post, and
        autograd differentiates Post. The authors' "Pre" FZs were therefore optimised for Post."""
        if self.kind == "pre" and self.pre_reading == "lucent_reference":
            return Tap(self.block, "post")
        return self.tap

    def ops(self):
        return transform_ops(self.transforms, self.jitter, self.image_size)

    def settings(self) -> dict[str, Any]:
        """The fields as JSON; ``arch`` only for archs other than resnet18, so that resnet18's settings
        files and resume hashes are the bytes they were before model.arch existed; ``pre_reading`` only for
        the Pre tap, the one it changes, so switching it keeps the In and Post resume chunks."""
        data = as_dict(self)
        if self.arch == DEFAULT_ARCH:
            del data["arch"]
        if self.kind != "pre":
            del data["pre_reading"]
        if not self.draw_stream:
            del data["draw_stream"]
        return data

    def describe(self) -> dict[str, Any]:
        data = self.settings()
        what = "center neuron" if self.objective == "center" else "whole-channel mean"
        module = self.objective_tap.module_of(self.arch)
        data["objective"] = f"{what} of {self.objective_tap} (module {module})"
        data["transform_chain"] = [op.describe() for op in self.ops()] + ["normalize(ImageNet)"]
        data["versions"] = _versions()
        return data

    def hash(self) -> str:
        text = json.dumps({**self.settings(), "versions": _versions()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resume_key(self) -> str:
        """What a resume chunk must have been rendered under to be reused: the settings (:meth:`hash`)
        and the code that computes an FZ (:func:`code_digest`). DVC re-runs a stage when that code
        changes; a chunk the old code left in ``outputs/.resume`` must then not stand in for the new."""
        return hashlib.sha256(f"{self.hash()} {code_digest()}".encode()).hexdigest()[:16]


# The modules whose code computes an FZ, under src/rsi: the source deps of dvc.yaml's fz stage
# (tests/test_fz.py keeps the two equal; tests/test_dvc_deps.py keeps those equal to its imports).
FZ_SOURCES = (
    "fz.py",
    "adjoints.py",
    "artifacts/__init__.py",
    "artifacts/fz.py",
    "fz_param.py",
    "fz_transforms.py",
    "model.py",
    "runtime.py",
    "taps.py",
    "transforms.py",
)


def sources_digest(package: Path) -> str:
    """A digest of the files of FZ_SOURCES (names and bytes) under ``package``."""
    digest = hashlib.sha256()
    for name in FZ_SOURCES:
        digest.update(f"{name}\0".encode() + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def code_digest() -> str:
    """:func:`sources_digest` of the package this process imported."""
    return sources_digest(Path(__file__).resolve().parent)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import kornia

    return {"torch": torch.__version__, "kornia": kornia.__version__, "torch-lucent": version("torch-lucent")}


# ---------------------------------------------------------------------------------- optimisation


@dataclass
class FZResult:
    """FZs of some channels of one tap: images float32 (C, 3, H, W) in [0, 1] and the center-neuron
    activation of the untransformed image before the first and after the last step."""

    channels: np.ndarray
    images: np.ndarray
    objective: np.ndarray
    initial_objective: np.ndarray


@contextmanager
def _numerics(device: torch.device, tf32: bool) -> Iterator[None]:
    """TF32 only when asked (PyTorch allows it for convolutions by default), and deterministic cuDNN
    kernels without autotuning: autotuning picks kernels by timing, per process and per run, and some
    backward kernels are not deterministic; over 2,560 steps a last-bit difference grows into a different
    FZ, so a GPU render would depend on more than the declared params (DESIGN). This is not enough for
    GPU byte identity: torch's CUDA backward of the transforms adds with atomics, which is why they
    differentiate through rsi.adjoints there (exact_backward; docs/fz.md)."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved


@functools.lru_cache(maxsize=8)
def _imagenet_stats(dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    """rsi.transforms.normalize's mean and std tensors, made once per device rather than copied from
    the host at every forward (a synchronising copy on CUDA)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=device)[:, None, None]
    return mean, std


def _center_values(
    model: nn.Module,
    images: Tensor,
    target: Tap,
    channels: Tensor,
    channels_last: bool,
    objective: str = "center",
):
    """Center neuron of each image's own channel at ``target``, for unnormalised images in [0, 1]
    (``objective="channel"``: the mean of the channel's whole map, lucent's ``objectives.channel``)."""
    mean, std = _imagenet_stats(images.dtype, str(images.device))
    inputs = (images - mean) / std  # rsi.transforms.normalize, with the constants made once
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    acts = forward_taps(model, inputs, [target])[target]
    height, width = acts.shape[-2:]
    rows = torch.arange(acts.shape[0], device=acts.device)
    if objective == "channel":
        return acts[rows, channels].mean(dim=(-2, -1))
    return acts[rows, channels, height // 2, width // 2]


def exact_backward(spec: TapSpec, device: torch.device) -> bool:
    """Whether the transforms differentiate through rsi.adjoints (exact fixed-point sums): on CUDA, where
    torch's backward adds with atomics in a run-dependent order, unless ``fz.cuda_backward`` is native.
    On the CPU torch's backward is deterministic and used as it is."""
    return device.type == "cuda" and spec.cuda_backward == "deterministic"


def _optimise_batch(
    model: nn.Module,
    spec: TapSpec,
    channels: Sequence[int],
    device: torch.device,
    *,
    channels_last: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Optimise one batch, image i for channel channels[i]: (images, initial, final) on the CPU."""
    ops = spec.ops()
    target = spec.objective_tap
    # the center-neuron FZ keeps the keys it always had; another objective of the same channel (the
    # whole-channel FZ) starts from its own noise and transforms, as a separate lucent call would
    stream = "/".join(
        part for part in (spec.draw_stream, "" if spec.objective == "center" else spec.objective) if part
    )
    key = (spec.seed, spec.block, spec.kind)
    spectra = torch.stack([initial_spectrum(*key, c, spec.image_size, stream) for c in channels])
    draws = torch.stack(
        [
            draw_table(ops, spec.steps, keyed_generator(*key, c, "transforms", *([stream] if stream else [])))
            for c in channels
        ]
    )  # (B, steps, columns)
    assert draws.shape[-1] == n_draw_columns(ops)
    # on the device once per batch: the loop syncs nothing
    plan = plan_draws(ops, draws, device, exact_backward=exact_backward(spec, device))
    spectrum, image = image_batch(spectra, spec.image_size, device)
    channel_index = torch.as_tensor(list(channels), dtype=torch.int64, device=device)

    with torch.no_grad():
        initial = _center_values(model, image(), target, channel_index, channels_last, spec.objective)
    optimizer = torch.optim.Adam([spectrum], lr=spec.lr)
    for step in range(spec.steps):
        optimizer.zero_grad(set_to_none=True)
        groups = by_shape(apply_planned(ops, image(), plan, step))
        loss = torch.zeros((), device=device)
        for index, transformed in groups:
            values = _center_values(
                model, transformed, target, channel_index[index], channels_last, spec.objective
            )
            loss = loss - values.sum()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    with torch.no_grad():
        final_images = image().detach()
        final = _center_values(model, final_images, target, channel_index, channels_last, spec.objective)
    return final_images.float().cpu(), initial.float().cpu(), final.float().cpu()


class BusyError(ValueError):
    """Another process is rendering the same output (a ValueError, so `rsi` prints it as one line)."""


_ALLOCATION_FAILED = ("out of memory", "can't allocate memory")


def _out_of_memory(spec: TapSpec, error: BaseException) -> ParamsError:
    first = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
    return ParamsError(
        f"out of memory rendering {spec.tap} in batches of fz.batch_channels = {spec.batch_channels} "
        f"channels ({first}): set a smaller fz.batch_channels in the params file (e.g. "
        f"{max(1, spec.batch_channels // 2)}); it is a declared param, so the FZ stages re-run"
    )


def render_channels(
    model: nn.Module,
    spec: TapSpec,
    channels: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    progress: Callable[[float], None] | None = None,
) -> FZResult:
    """FZs of ``channels`` of ``spec.tap`` (no files), optimised in batches of ``spec.batch_channels``
    consecutive entries of ``channels``. Out of memory is a ParamsError naming fz.batch_channels.
    ``progress(channels)`` is called with the fractional channels done at each step. ``channels_last``
    (CUDA) measured 2-7 % slower on an H100 for ResNet18 in float32, so it is off by default."""
    device = torch.device(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    done: list[FZResult] = []
    with _numerics(device, spec.tf32):
        for batch in chunks_of(channels, spec.batch_channels):
            fraction = len(batch) / spec.steps

            def on_step(step: int, fraction=fraction) -> None:
                if progress is not None:
                    progress(fraction)

            try:
                images, initial, final = _optimise_batch(
                    model, spec, batch, device, channels_last=channels_last, on_step=on_step
                )
            except torch.cuda.OutOfMemoryError as error:
                raise _out_of_memory(spec, error) from error
            except RuntimeError as error:
                if not any(text in str(error) for text in _ALLOCATION_FAILED):
                    raise
                raise _out_of_memory(spec, error) from error
            done.append(
                FZResult(
                    channels=np.asarray(batch, dtype=np.int64),
                    images=images.numpy(),
                    objective=final.numpy(),
                    initial_objective=initial.numpy(),
                )
            )
    return _concat(done)


def render_channel_fz(
    model: nn.Module, tap: Tap, channels: Sequence[int], fz: FZParams, *, seed: int = 0, weights: str = ""
) -> np.ndarray:
    """Whole-channel FZs (paper Fig. 1, second row) of ``channels`` of ``tap``: float32 (C, 3, H, W) in
    [0, 1], with the block's transforms and jitter; keyed like center-neuron FZs, and batched as
    ``fz.batch_channels`` consecutive entries of ``channels``, so reproducible."""
    spec = TapSpec.of(tap, fz, seed=seed, weights=weights, objective="channel", arch=arch_of(model))
    device = next(model.parameters()).device
    return render_channels(model, spec, list(channels), device=device).images


def _concat(results: Sequence[FZResult]) -> FZResult:
    if not results:
        return FZResult(
            np.zeros(0, np.int64),
            np.zeros((0, 3, 0, 0), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
        )
    return FZResult(
        channels=np.concatenate([r.channels for r in results]),
        images=np.concatenate([r.images for r in results]),
        objective=np.concatenate([r.objective for r in results]),
        initial_objective=np.concatenate([r.initial_objective for r in results]),
    )


# ------------------------------------------------------------------------------- chunks and files


def resume_dir(spec: TapSpec, resume_root: Path) -> Path:
    """``<resume root>/fz/<FZ code digest>/<layerL_K>/<tap>/<resume key>``: one folder per FZ code, so
    :func:`prune_resume` can drop what no run of this code can reuse."""
    return resume_root / "fz" / code_digest() / block_key(spec.block) / spec.kind / spec.resume_key()


# the resume folders of other FZ code that prune_resume keeps: the most recently written ones, so that a
# reverted edit (git stash, a branch switch) resumes, and a run of other code still going keeps its chunks
KEEP_OTHER_CODE = 2


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # renamed or deleted meanwhile (another run's atomic write or prune)
        return 0.0


def _last_written(entry: Path) -> float:
    files = entry.rglob("*") if entry.is_dir() else []
    return max((_mtime(path) for path in files), default=_mtime(entry))


def _code_folder(entry: Path) -> bool:
    """A folder named by a code digest (hex digits, as many as code_digest's); the others are the layout
    before."""
    return len(entry.name) == len(code_digest()) and all(c in "0123456789abcdef" for c in entry.name)


def prune_resume(resume_root: Path, keep: int = KEEP_OTHER_CODE) -> list[Path]:
    """Delete the resume chunks of other FZ code (the other folders of ``<resume root>/fz``, the layout
    before them included) but the ``keep`` most recently written, and return what was deleted. Their
    resume keys hold that code's digest, so this code never reuses them; without this, every edit of the
    FZ code left a whole run's chunks behind. Chunks of other settings under this code stay: they save
    work when a param changes back."""
    import shutil

    folder = Path(resume_root) / "fz"
    others = [entry for entry in folder.glob("*") if entry.name != code_digest()] if folder.is_dir() else []
    codes = sorted((entry for entry in others if _code_folder(entry)), key=_last_written, reverse=True)
    stale = sorted([entry for entry in others if not _code_folder(entry)] + codes[keep:])
    for entry in stale:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return stale


def tap_channels(block: str, fz: FZParams, arch: str = DEFAULT_ARCH) -> list[int]:
    total = num_channels(block, arch)
    return list(range(min(total, fz.max_channels) if fz.max_channels else total))


def chunks_of(channels: Sequence[int], size: int) -> list[list[int]]:
    return [list(channels[i : i + size]) for i in range(0, len(channels), size)]


def chunk_path(directory: Path, chunk: Sequence[int]) -> Path:
    return directory / f"chunk_{chunk[0]:04d}.npz"


def _chunk_done(path: Path, chunk: Sequence[int], resume_key: str) -> bool:
    """A finished chunk file for exactly these channels, rendered under these settings (the batch
    geometry included) by this FZ code (TapSpec.resume_key), so a chunk from other settings, batches or
    code is never reused."""
    if not path.is_file():
        return False
    try:
        data = load_npz(path)
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
    ):  # empty or cut short (a crash): redo
        return False
    return data["channels"].tolist() == list(chunk) and str(data.get("resume_key")) == resume_key


def _save_chunk(path: Path, result: FZResult, storage: str, resume_key: str) -> None:
    """A chunk: an FZ file of its channels (rsi.artifacts.fz) with the resume key that made it."""
    stored = FZFile(
        to_storage(result.images, storage), result.channels, result.objective, result.initial_objective
    )
    write_fz(path, stored, resume_key=np.array(resume_key))


def _wait_for(
    paths: Sequence[tuple[Path, Sequence[int]]],
    resume_key: str,
    poll_s: float = 2.0,
    give_up_s: float = 600.0,
) -> None:
    """Rank 0 waits for the other ranks' chunk files (a shared disk may show them late). The ranks of
    every stage that renders (fz, stability, pre-reading) have passed distributed.wait_for_peers, so the
    files were written; a rank that died fails that wait instead of leaving this one polling. Files still
    missing after ``give_up_s`` were deleted meanwhile (another run's rsi.fz.prune_resume on a shared
    resume folder, or by hand): an error naming them, not a wait for ever."""
    announced, start = False, time.monotonic()
    while missing := [p for p, chunk in paths if not _chunk_done(p, chunk, resume_key)]:
        if distributed.world()[1] == 1 or time.monotonic() - start > give_up_s:
            raise RuntimeError(
                f"chunk files missing after rendering: {', '.join(map(str, missing))}; were they deleted "
                "while this run waited? A rerun renders them again"
            )
        if not announced:
            print(f"rsi fz: rank 0 waits for {len(missing)} chunk(s) of other ranks", flush=True)
            announced = True
        time.sleep(poll_s)


def assemble(spec: TapSpec, chunks: Sequence[Sequence[int]], resume_root: Path, root: Path) -> FZFile:
    """Concatenate a tap's chunk files into ``outputs/fz/<layerL_K>/<tap>.npz`` (atomically)."""
    directory = resume_dir(spec, resume_root)
    parts = [read_fz(chunk_path(directory, chunk)) for chunk in chunks]
    whole = FZFile(*(np.concatenate([getattr(p, key) for p in parts]) for key in FZ_ARRAYS))
    write_fz(fz_file(spec.tap, root), whole)
    return whole


def lock_path(out_dir: Path, resume_root: Path) -> Path:
    """The lock file of one output folder, kept in the resume folder (outside every DVC output)."""
    key = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]
    return Path(resume_root) / "locks" / f"{Path(out_dir).name}-{key}.lock"


def _take_lock(path: Path) -> tuple[Any, str]:
    """(open handle holding an exclusive fcntl lock on ``path``, "") or (None, who holds it)."""
    import fcntl
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open while the output is rendered
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {since})\n")
    handle.flush()
    return handle, ""


def _release(handle: Any) -> None:
    import fcntl

    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def output_lock(out_dir: Path, resume_root: Path) -> Iterator[Path]:
    """Hold an exclusive fcntl lock for ``out_dir`` while rendering it; a BusyError naming the holder
    (pid, host, start) when another run holds it. Under torchrun rank 0 locks for the whole job and
    tells the others. The kernel drops the lock when its process dies, so kill -9 leaves none behind."""
    path = lock_path(out_dir, resume_root)
    handle, holder = _take_lock(path) if distributed.is_main() else (None, "")
    # a CPU flag: it goes over gloo, so no NCCL communicator is made for one number
    busy = distributed.all_reduce_sum(torch.tensor([1.0 if holder else 0.0]))
    try:
        if busy.item():
            who = holder or "another run (rank 0 found it locked)"
            raise BusyError(
                f"{out_dir} is being rendered by {who}, lock {path}: wait for that run to finish or "
                "stop it, then rerun (finished chunks are kept)"
            )
        yield path
    finally:
        _release(handle)


@contextmanager
def _lock_if_free(out_dir: Path, resume_root: Path) -> Iterator[bool]:
    """This process holds ``out_dir``'s lock inside the block (True), or another run does (False): for a
    pooled block, which is then left to that run rather than stopping this one."""
    handle, _ = _take_lock(lock_path(out_dir, resume_root))
    try:
        yield handle is not None
    finally:
        _release(handle)


def render_blocks(
    model: nn.Module,
    blocks: Sequence[str],
    fz: FZParams,
    *,
    seed: int,
    weights: str,
    device: torch.device | str = "cpu",
    root: Path = OUTPUTS,
    resume_root: Path | None = None,
    progress: bool = True,
    on_chunk_saved: Callable[[Tap, Path], None] | None = None,
    pooled: Sequence[str] = (),
) -> dict[Tap, Path]:
    """Render (this rank's share of) every configured tap of each of ``blocks`` and, on rank 0, assemble
    ``outputs/fz/<layerL_K>/<tap>.npz`` and ``settings.json`` per block. Returns the files written (rank 0).
    ``pooled`` blocks are rendered into resume chunks only, to be assembled by their own run (their DVC
    stage): :func:`blocks_to_pool`.

    The blocks' work items are one pool sharded over ranks: a block has 1 to 12 (tap, chunk) items, so
    block by block most of 8 GPUs would wait (``rsi fz --block all`` keeps them busy). Each item is the
    same computation either way: the bytes are those of rendering the blocks one at a time."""
    arch = arch_of(model)
    blocks = list(dict.fromkeys(parse_block(block, arch) for block in blocks))
    pooled = [block for block in dict.fromkeys(parse_block(b, arch) for b in pooled) if block not in blocks]
    root = Path(root)
    resume_root = Path(resume_root) if resume_root is not None else root / ".resume"
    device = torch.device(device)
    # a rank with other FZ code or packages has another resume key: it would write its chunks where
    # rank 0 never looks, and rank 0 would wait for them for ever. An error on every rank, before any work.
    distributed.require_same(
        {"fz code": code_digest(), **_versions()},
        "FZ code or packages",
        "start every node from the same commit and install (scripts/install.sh, or the same image)",
    )
    with ExitStack() as locks:
        for block in blocks:
            locks.enter_context(output_lock(fz_dir(block, root), resume_root))
        if distributed.is_main():  # a pooled block another run renders is left to it; the ranks follow
            free = [b for b in pooled if locks.enter_context(_lock_if_free(fz_dir(b, root), resume_root))]
            _announce_pool([block_key(b) for b in free], [block_key(b) for b in pooled if b not in free])
            pooled = free
        pooled = distributed.from_main(pooled)
        # (block, specs, chunks) of ``blocks``, then of ``pooled``: this run's own items come first, so
        # their ranks do not depend on the pool. A chunk holds whole batches of fz.batch_channels.
        plans = [_block_plan(b, fz, seed=seed, weights=weights, arch=arch) for b in [*blocks, *pooled]]
        # The work items are (tap, chunk) pairs, sharded over ranks. A chunk holds whole batches, so the
        # batches (and their float rounding) are the same whatever the chunk size or number of processes.
        work = [(spec, chunk) for _, specs, chunks in plans for spec in specs for chunk in chunks]
        pending = [
            (spec, chunk)
            for spec, chunk in distributed.shard(work)
            if not _chunk_done(chunk_path(resume_dir(spec, resume_root), chunk), chunk, spec.resume_key())
        ]
        label = ", ".join(blocks) if len(blocks) <= 3 else f"{len(blocks)} blocks"
        if pooled:
            label += f" + {len(pooled)} pooled"
        _render_pending(model, label, pending, device, resume_root, progress, on_chunk_saved)
        distributed.wait_for_peers()  # fails, rather than waits for ever, when a rank died (any node)
        if not distributed.is_main():
            return {}
        written: dict[Tap, Path] = {}
        described = describe_device(device)
        for block, specs, chunks in plans[: len(blocks)]:
            written |= _assemble_block(
                block, specs, chunks, resume_root, root, seed=seed, weights=weights, device=described
            )
        try:  # housekeeping: the outputs are written, so an error here is only a warning
            if pruned := prune_resume(resume_root):
                print(
                    f"rsi fz: removed the resume chunks of other FZ code ({len(pruned)} folder(s))",
                    flush=True,
                )
        except OSError as error:
            print(f"rsi fz: warning: could not remove old resume chunks ({error})", flush=True)
        return written


def _block_plan(
    block: str, fz: FZParams, *, seed: int, weights: str, arch: str
) -> tuple[str, list[TapSpec], list[list[int]]]:
    """A block's tap specs and its chunks of whole batches (fz.batch_channels · fz.chunk_batches)."""
    specs = [
        TapSpec.of(Tap(block, kind), fz, seed=seed, weights=weights, arch=arch)
        for kind in fz.block(block).taps
    ]
    return block, specs, chunks_of(tap_channels(block, fz, arch), fz.batch_channels * fz.chunk_batches)


def _announce_pool(pooled: Sequence[str], busy: Sequence[str]) -> None:
    if pooled:
        print(
            f"rsi fz: also rendering the chunks of {len(pooled)} other block(s) whose fz stage will run "
            f"too ({', '.join(pooled)}), so that every process has work; their fz stages then only "
            "assemble (launch.fz_pool: block renders one block per stage)",
            flush=True,
        )
    if busy:
        print(f"rsi fz: not pooling {', '.join(busy)}: another run holds its lock", flush=True)


def blocks_to_pool(
    raw: dict[str, Any], source: str, blocks: Sequence[str], fz: FZParams, arch: str
) -> list[str]:
    """The blocks whose chunks an ``fz@<block>`` stage renders besides its own: under `dvc repro`
    (DVC_STAGE set) with more than one process and ``launch.fz_pool: stale``, every other block of
    fz.blocks whose stage DVC will run too (rsi.launch.outdated_stages: dvc.lock records another command,
    other params or other FZ code for it, or none), so that all GPUs share the whole FZ work; DVC runs the fz stages one after
    another and a block alone has 1 to 12 items. Their own stages then find every chunk done and only
    assemble. Nothing else (one process, by hand, ``launch.fz_pool: block``): the chunks are the same
    bytes either way, only sooner."""
    from rsi import launch

    if DVC_STAGE not in os.environ or distributed.world()[1] == 1:
        return []
    if load_section(raw, "launch", launch.LaunchParams, source=source).fz_pool != "stale":
        return []
    own = {parse_block(block, arch) for block in blocks}
    others = {f"fz@{block}": block for block in fz.blocks if parse_block(block, arch) not in own}
    try:
        outdated = launch.outdated_stages(list(others))
    except Exception as error:  # speed only: a dvc.lock being rewritten must not fail the stage
        print(
            f"rsi fz: not pooling other blocks: cannot read dvc.lock or dvc.yaml ({type(error).__name__}: {error})"
        )
        return []
    return [others[stage] for stage in outdated]


def render_block(model: nn.Module, block: str, fz: FZParams, **kwargs: Any) -> dict[Tap, Path]:
    """:func:`render_blocks` of one block (same keyword arguments)."""
    return render_blocks(model, [block], fz, **kwargs)


def _render_pending(
    model: nn.Module,
    label: str,
    pending: Sequence[tuple[TapSpec, list[int]]],
    device: torch.device,
    resume_root: Path,
    progress: bool,
    on_chunk_saved: Callable[[Tap, Path], None] | None,
) -> None:
    """Render and save this rank's unfinished chunks, with a progress bar on rank 0."""
    from tqdm.auto import tqdm

    rank, world = distributed.world()
    bar = tqdm(
        total=sum(len(chunk) for _, chunk in pending),
        desc=f"fz {label}" + (f" rank {rank}" if world > 1 else ""),
        unit="ch",
        disable=not progress or not distributed.is_main(),
        mininterval=1.0,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} ch "
        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
    )

    def advance(channels: float) -> None:  # fractional steps add up with rounding: never past the total
        bar.update(min(channels, bar.total - bar.n))

    finished = 0
    with bar:
        for spec, chunk in pending:
            bar.set_postfix_str(f"{spec.block}/{spec.kind} {chunk[0]}-{chunk[-1]}")
            result = render_channels(model, spec, chunk, device=device, progress=advance)
            finished += len(chunk)
            bar.n = finished  # exact at each chunk's end
            bar.refresh()
            path = chunk_path(resume_dir(spec, resume_root), chunk)
            _save_chunk(path, result, spec.storage, spec.resume_key())
            if on_chunk_saved is not None:
                on_chunk_saved(spec.tap, path)


def _assemble_block(
    block: str,
    specs: Sequence[TapSpec],
    chunks: Sequence[Sequence[int]],
    resume_root: Path,
    root: Path,
    *,
    seed: int,
    weights: str,
    device: str,
) -> dict[Tap, Path]:
    """Rank 0: wait for every chunk, assemble each tap's file, write settings.json (``device`` as
    rsi.runtime.describe_device names it)."""
    from rsi.model import describe_weights

    written: dict[Tap, Path] = {}
    for spec in specs:
        directory = resume_dir(spec, resume_root)
        _wait_for([(chunk_path(directory, chunk), chunk) for chunk in chunks], spec.resume_key())
        data = assemble(spec, chunks, resume_root, root)
        written[spec.tap] = fz_file(spec.tap, root)
        print(
            f"rsi fz: {spec.tap}: {len(data.channels)} channels, center neuron mean "
            f"{data.initial_objective.mean():.3f} -> {data.objective.mean():.3f} "
            f"(higher in {int((data.objective > data.initial_objective).sum())} of {len(data.channels)})",
            flush=True,
        )
    settings = FZSettings(
        block=block,
        weights=weights,
        weights_label=describe_weights(weights, specs[0].arch),
        seed=seed,
        channels=sum(len(chunk) for chunk in chunks),
        device=device,
        taps={spec.kind: {**spec.describe(), "settings_hash": spec.hash()} for spec in specs},
    )
    write_fz_settings(fz_settings_file(block, root), settings)
    return written


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--block",
        required=True,
        nargs="+",
        type=blocks_argument,
        help="block(s) to render: 2.1, layer2_1 …, or all (every block of fz.blocks in one pool of work: "
        "keeps more GPUs busy than one block at a time)",
    )
    parser.add_argument(
        "--resume-dir",
        default=None,
        help="finished chunks (default: <outputs>/.resume; deleting it loses only work, which a later "
        "criteria change's pre-reading stage would otherwise take back from it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="override params.yaml's seed (e.g. to look at another FZ seed by hand)",
    )


def run_device(name: str) -> torch.device:
    """The params' device (resolve_device gives a bare 'cuda' this rank's index), made current."""
    device = resolve_device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def run(args: argparse.Namespace) -> None:
    from rsi.model import load_model

    raw = read_params(args.params)
    fz = load_fz_params(raw, source=args.params)
    seed = load_seed(raw, source=args.params)
    if args.seed is not None:
        seed = args.seed
    model_params = load_section(raw, "model", ModelParams, source=args.params)
    blocks = list(fz.blocks) if "all" in args.block else args.block
    for block in blocks:
        fz.block(block)  # unknown block: a ParamsError before any work
    distributed.init()  # rsi.cli.main leaves the group, whatever happens
    device = run_device(model_params.device)
    model = load_model(model_params.weights, model_params.arch)
    root = Path(args.outputs)
    pooled = []  # rank 0 decides (render_blocks hands its list to the others)
    if args.seed is None and distributed.is_main():
        pooled = blocks_to_pool(raw, args.params, blocks, fz, arch_of(model))
    render_blocks(
        model,
        blocks,
        fz,
        seed=seed,
        weights=model_params.weights,
        device=device,
        root=root,
        resume_root=Path(args.resume_dir) if args.resume_dir else None,
        progress=not args.no_progress,
        pooled=pooled,
    )
