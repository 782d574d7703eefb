"""The regularising transforms of the FZ optimisation: torch-lucent 0.1.8's ``pad``, ``jitter``,
``random_scale`` and ``random_rotate`` (plus the authors' final center crop), batched, with one random
draw per image.

Lucent draws ONE random value per transform call (``np.random.choice``) for the whole batch. We draw per
image instead, from a table of draws that a generator keyed on (seed, block, tap, channel) fills before the
optimisation starts: row ``step`` holds that image's draws at that step. A channel's draws then depend only
on (seed, block, tap, channel, params), never on which other channels share its batch, their order, the
batch size, or the number of processes; with lucent's batch-wide draw, the same channel would see other
transforms in another batch. (The paper rendered one channel per call, batch 1, where both are the same
distribution.) Its floats still depend on the batch geometry: convolutions round differently per batch
size, and the images that drew one scale go through the network together, so a group's size depends on
the neighbours' draws. The batch is fixed by declared params (``fz.batch_channels``, ``fz.max_channels``),
so an FZ is still a function of them; a channel rendered in another batch can differ in the last bits,
which the optimisation amplifies.

Each transform calls the same kornia / torch functions lucent calls, with the same arguments, so a single
image with a given draw goes through exactly lucent's arithmetic (tests/test_fz.py checks it against
lucent's own transforms). In particular lucent's ``jitter`` is kornia 0.4.1's ``translate`` by an integer
(dx, dy) in [0, d), which resamples bilinearly (kornia normalises with corner-aligned pixels and then
samples with ``align_corners=False``): not an exact shift and not a crop, and we keep it so. The warps'
matrices are made once per size by kornia's own functions (:func:`_translation_grids`,
:func:`_rotation_grids`), so a step runs only ``affine_grid`` and ``grid_sample``: the bytes of kornia's
calls, without their per-call inverses and host copies. With ``DrawPlan.exact_backward`` (CUDA, see
rsi.fz.exact_backward) the pad, resize and warps differentiate through rsi.adjoints.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

with warnings.catch_warnings():
    # kornia 0.4.1's kornia.jit scripts a few functions at import, where the locked torch warns that
    # torch.jit.script is deprecated, on every `rsi` command. Silenced for this import only.
    warnings.filterwarnings(
        "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script"
    )
    import kornia
    from kornia.geometry.conversions import convert_affinematrix_to_homography
    from kornia.geometry.transform.affwarp import _compute_translation_matrix
    from kornia.geometry.warp import normalize_homography

from rsi import adjoints
from rsi.transforms import center_crop

TransformSet = Literal["authors_code", "lucent_standard"]
TRANSFORM_SETS: tuple[str, ...] = ("authors_code", "lucent_standard")

# center_lucent_optimize.py (the authors' code): random_scale / random_rotate arguments.
AUTHORS_SCALES: tuple[float, ...] = (1, 0.975, 1.025, 0.95, 1.05)
AUTHORS_ANGLES: tuple[float, ...] = tuple(range(-5, 6))
# lucent.optvis.transform.standard_transforms (lucid's, the Distill article's [14]).
STANDARD_PAD = 12
STANDARD_SCALES: tuple[float, ...] = tuple(1 + (i - 5) / 50.0 for i in range(11))
STANDARD_ANGLES: tuple[float, ...] = (*range(-10, 11), *(5 * [0]))


@dataclass(frozen=True)
class Op:
    """One transform: ``pad`` (size, mode, value), ``jitter`` (size = d), ``scale`` / ``rotate``
    (choices), ``crop`` (size, torchvision's center crop)."""

    kind: Literal["pad", "jitter", "scale", "rotate", "crop"]
    size: int = 0
    mode: str = "reflect"
    value: float = 0.0
    choices: tuple[float, ...] = ()

    @property
    def n_draws(self) -> int:
        return {"jitter": 2, "scale": 1, "rotate": 1}.get(self.kind, 0)

    def draw_ranges(self) -> list[int]:
        """How many values each of this op's draws chooses from (dx, dy for jitter)."""
        if self.kind == "jitter":
            return [self.size, self.size]
        if self.kind in ("scale", "rotate"):
            return [len(self.choices)]
        return []

    def describe(self) -> str:
        if self.kind == "pad":
            extra = f", constant {self.value}" if self.mode == "constant" else f", {self.mode}"
            return f"pad({self.size}{extra})"
        if self.kind == "jitter":
            return f"jitter({self.size})"
        if self.kind in ("scale", "rotate"):
            name = "random_scale" if self.kind == "scale" else "random_rotate"
            return f"{name}([{', '.join(f'{c:g}' for c in self.choices)}])"
        return f"center_crop({self.size})"


def transform_ops(kind: str, jitter: int, image_size: int) -> tuple[Op, ...]:
    """The transform chain for a transform set, a block's jitter J (0 = none) and the image side.

    ``authors_code`` (center_lucent_optimize.py): with J >= 4 reflect-pad J, jitter J, random scale,
    random rotate, jitter J//2, center-crop ``image_size``; with J = 0 (their "jitter < 4") only the
    random scale and rotate, so the model sees 224, 225, 230 or 236 px.
    ``lucent_standard`` (the paper text: "identical regularization as [14]", with the depth-dependent
    jitter of its appendix 7.1 and "half the initial jitter value for the second jitter transform"):
    lucent's standard_transforms, pad 12 (constant 0.5), jitter J, scale 0.9 … 1.1, rotate −10 … 10
    (with 5 extra zeros), jitter J//2; J = 0 leaves both jitters out. No crop: lucent's render_vis
    feeds the 224 px image's transforms to the model at whatever size they come out.
    """
    if jitter and (jitter < 4):
        raise ValueError(f"jitter must be 0 (none) or >= 4, got {jitter}")
    if kind == "authors_code":
        if not jitter:
            return (Op("scale", choices=AUTHORS_SCALES), Op("rotate", choices=AUTHORS_ANGLES))
        return (
            Op("pad", jitter, mode="reflect"),
            Op("jitter", jitter),
            Op("scale", choices=AUTHORS_SCALES),
            Op("rotate", choices=AUTHORS_ANGLES),
            Op("jitter", jitter // 2),
            Op("crop", image_size),
        )
    if kind == "lucent_standard":
        ops = [Op("pad", STANDARD_PAD, mode="constant", value=0.5)]
        ops += [Op("jitter", jitter)] if jitter else []
        ops += [Op("scale", choices=STANDARD_SCALES), Op("rotate", choices=STANDARD_ANGLES)]
        ops += [Op("jitter", jitter // 2)] if jitter else []
        return tuple(ops)
    raise ValueError(f"unknown transform set {kind!r}: choose one of {TRANSFORM_SETS}")


def n_draw_columns(ops: Sequence[Op]) -> int:
    return sum(op.n_draws for op in ops)


def draw_table(ops: Sequence[Op], steps: int, generator: torch.Generator) -> Tensor:
    """(steps, n_draw_columns) int64 choice indices for one image, column by column in op order
    (jitter: dx then dy in [0, d); scale, rotate: an index into the op's choices)."""
    columns = [
        torch.randint(0, high, (steps,), generator=generator) for op in ops for high in op.draw_ranges()
    ]
    if not columns:
        return torch.zeros(steps, 0, dtype=torch.int64)
    return torch.stack(columns, dim=1)


def _roundup(value: float) -> int:
    # lucent's _roundup: np.ceil(value).astype(int), on the same float64 products.
    return int(np.ceil(value).astype(int))


def _sampling_matrix(matrix: Tensor, height: int, width: int) -> Tensor:
    """(1, 2, 3): what kornia 0.4.1's ``warp_affine`` hands ``affine_grid`` for the pixel-space affine
    ``matrix`` (1, 2, 3) on a ``height`` x ``width`` image (same size out): kornia's own functions, the
    homography normalised to [-1, 1] and inverted. One matrix per call, as lucent's batch-1 calls."""
    homography = convert_affinematrix_to_homography(matrix)
    normalized = normalize_homography(homography, (height, width), (height, width))
    return torch.inverse(normalized)[:, :2, :]


@functools.lru_cache(maxsize=256)
def _translation_grids(size: int, height: int, width: int, device: str) -> Tensor:
    """(size², 2, 3) sampling matrices of lucent's ``jitter(size)``, row ``dx * size + dy`` for the
    integer translation (dx, dy): the matrix kornia's ``translate`` builds (``_compute_translation_matrix``
    of the float32 draw), through :func:`_sampling_matrix`. Made once per size and device, so a step runs
    no ``torch.inverse`` (on CUDA an error check that waits for the device) and copies no normalisation
    matrix from the host."""
    rows = []
    for dx in range(size):
        for dy in range(size):
            translation = torch.tensor([[dx, dy]], dtype=torch.float32, device=device)
            matrix = _compute_translation_matrix(translation)[..., :2, :3]
            rows.append(_sampling_matrix(matrix, height, width))
    return torch.cat(rows)


def _warp(images: Tensor, sampling: Tensor, exact_backward: bool = False) -> Tensor:
    """kornia 0.4.1's ``warp_affine`` (bilinear, zeros, ``align_corners=False``, same size out) from
    per-image sampling matrices (B, 2, 3) (:func:`_translation_grids`, :func:`_rotation_grids`);
    ``exact_backward``: differentiated through rsi.adjoints (same forward bytes)."""
    batch, channels, height, width = images.shape
    grid = F.affine_grid(sampling, [batch, channels, height, width], align_corners=False)
    if exact_backward:
        return adjoints.grid_sample(images, grid)
    return F.grid_sample(images, grid, align_corners=False, mode="bilinear", padding_mode="zeros")


def _jitter(images: Tensor, size: int, draws: Tensor, exact_backward: bool = False) -> Tensor:
    """lucent's ``jitter(size)`` (kornia's ``translate``) by each image's drawn (dx, dy) (``draws``:
    (B, 2) int64 on the images' device)."""
    height, width = images.shape[2:]
    table = _translation_grids(size, height, width, str(images.device))
    return _warp(images, table[draws[:, 0] * size + draws[:, 1]], exact_backward)


def _scaled(images: Tensor, scale: float, exact_backward: bool = False) -> Tensor:
    """lucent's random_scale for one drawn scale: bilinear Upsample (align_corners=True) to
    ceil(scale * side), then zero padding of ceil((side - new) / 2) on each side when it shrank."""
    height, width = images.shape[2:]
    scale = np.float64(scale)
    new_shape = [_roundup(scale * height), _roundup(scale * width)]
    pad_x = max(0, _roundup((width - new_shape[1]) / 2))
    pad_y = max(0, _roundup((height - new_shape[0]) / 2))
    if exact_backward:
        resized = adjoints.resize_aligned(images, (new_shape[0], new_shape[1]))
    else:
        resized = F.interpolate(images, size=new_shape, mode="bilinear", align_corners=True)
    # lucent pads [pad_y, pad_x] * 2, i.e. left=pad_y, right=pad_x, top=pad_y, bottom=pad_x.
    return F.pad(resized, [pad_y, pad_x] * 2)


def _rotation_table(choices: tuple[float, ...], height: int, width: int, device: str) -> Tensor:
    """lucent's random_rotate matrices, one per angle choice (degrees), for ``height`` x ``width`` images:
    kornia's rotation about the center, built on the CPU and moved to ``device`` as lucent does (so on
    CUDA the sines and cosines are the CPU's, as in lucent). Made once per size and device, through the
    cached :func:`_rotation_grids`. Each row is elementwise arithmetic (the scale matrix is the identity, so its product is
    exact), so a gathered row equals the row made for the drawn angle alone (tests/test_fz.py checks it)."""
    angle = torch.tensor(choices, dtype=torch.float32)
    batch = angle.shape[0]
    scale = torch.ones(batch, 2)
    center = torch.empty(batch, 2)
    center[..., 0] = (width - 1) / 2
    center[..., 1] = (height - 1) / 2
    return kornia.get_rotation_matrix2d(center, angle, scale).to(device)


@functools.lru_cache(maxsize=64)
def _rotation_grids(choices: tuple[float, ...], height: int, width: int, device: str) -> Tensor:
    """(len(choices), 2, 3) sampling matrices of lucent's ``random_rotate``: each row of
    :func:`_rotation_table` through :func:`_sampling_matrix` (see :func:`_translation_grids`)."""
    table = _rotation_table(choices, height, width, device)
    return torch.cat([_sampling_matrix(table[i : i + 1], height, width) for i in range(len(choices))])


def _rotate(
    images: Tensor, choices: tuple[float, ...], drawn: Tensor, exact_backward: bool = False
) -> Tensor:
    """lucent's random_rotate with a per-image angle ``choices[drawn[i]]`` (degrees)."""
    height, width = images.shape[2:]
    sampling = _rotation_grids(choices, height, width, str(images.device))[drawn]
    return _warp(images.float(), sampling, exact_backward)


@dataclass(frozen=True)
class DrawPlan:
    """A batch's transform draws, prepared once before the optimisation so that no step sorts, counts
    or copies anything on the host: the draws on the device, and for the random scale (which splits the
    batch by drawn scale) each step's stable order of the batch by scale and the (choice, count) groups.
    """

    draws: Tensor  # (steps, B, columns) int64, on the device
    index: Tensor  # arange(B) on the device
    scale_order: Tensor | None  # (steps, B) int64 on the device: stable argsort by the drawn scale
    scale_groups: tuple[tuple[tuple[int, int], ...], ...]  # per step: (choice, count), choices ascending
    exact_backward: bool = False  # differentiate through rsi.adjoints (deterministic on CUDA)


def plan_draws(
    ops: Sequence[Op], draws: Tensor, device: torch.device | str, *, exact_backward: bool = False
) -> DrawPlan:
    """The :class:`DrawPlan` of ``draws`` (B, steps, n_draw_columns) int64 on the host (from
    :func:`draw_table`, one row per image). At most one random scale per chain (both sets have one).
    ``exact_backward``: the transforms differentiate through rsi.adjoints (same forward bytes)."""
    scales = [i for i, op in enumerate(ops) if op.kind == "scale"]
    if len(scales) > 1:
        raise ValueError("a transform chain has at most one random scale")
    batch, steps = draws.shape[:2]
    device_draws = draws.transpose(0, 1).contiguous().to(device)  # one copy per batch, none per step
    order, groups = None, tuple(() for _ in range(steps))
    if scales:
        column = n_draw_columns(ops[: scales[0]])
        choices = len(ops[scales[0]].choices)
        # the same stable sort of the same keys as a per-step argsort: equal permutations
        order = torch.argsort(device_draws[:, :, column], dim=1, stable=True)
        counts = F.one_hot(draws[:, :, column], choices).sum(dim=0).tolist()  # (steps, choices)
        groups = tuple(tuple((c, n) for c, n in enumerate(row) if n) for row in counts)
    return DrawPlan(device_draws, torch.arange(batch, device=device), order, groups, exact_backward)


def apply_ops(
    ops: Sequence[Op], images: Tensor, draws: Tensor, *, exact_backward: bool = False
) -> list[tuple[Tensor, Tensor]]:
    """Transform a batch, each image with its own draws (``draws``: (B, n_draw_columns) int64), at
    one step: :func:`apply_planned` with a one-step plan."""
    plan = plan_draws(ops, draws[:, None].cpu(), images.device, exact_backward=exact_backward)
    return apply_planned(ops, images, plan, 0)


def apply_planned(
    ops: Sequence[Op], images: Tensor, plan: DrawPlan, step: int
) -> list[tuple[Tensor, Tensor]]:
    """Transform a batch with its draws at ``step`` of ``plan``.

    Returns (indices into the batch, transformed images) groups: the random scale splits the batch by
    its drawn scale (lucent's resize takes one output size per call), and each group carries on alone.
    """
    groups: list[tuple[Tensor, Tensor, Tensor]] = [(plan.index, images, plan.draws[step])]
    exact = plan.exact_backward
    column = 0
    for op in ops:
        updated: list[tuple[Tensor, Tensor, Tensor]] = []
        for idx, x, d in groups:
            if op.kind == "pad":
                if op.mode == "constant":  # its backward is a slice: deterministic as it is
                    x = F.pad(x, [op.size] * 4, mode="constant", value=op.value)
                elif op.mode == "reflect" and exact:
                    x = adjoints.reflect_pad(x, op.size)
                else:
                    x = F.pad(x, [op.size] * 4, mode=op.mode)
                updated.append((idx, x, d))
            elif op.kind == "jitter":
                updated.append((idx, _jitter(x, op.size, d[:, column : column + 2], exact), d))
            elif op.kind == "rotate":
                updated.append((idx, _rotate(x, tuple(op.choices), d[:, column], exact), d))
            elif op.kind == "crop":
                updated.append((idx, center_crop(x, op.size), d))
            elif op.kind == "scale":
                start = 0
                for choice, count in plan.scale_groups[step]:
                    rows = plan.scale_order[step, start : start + count]
                    subset = x if count == x.shape[0] else x[rows]
                    updated.append((idx[rows], _scaled(subset, op.choices[choice], exact), d[rows]))
                    start += count
            else:  # pragma: no cover - Op.kind is a closed set
                raise ValueError(f"unknown transform {op.kind!r}")
        groups = updated
        column += op.n_draws
    return [(idx, x) for idx, x, _ in groups]


def by_shape(groups: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Concatenate groups whose images have the same size (one forward per size)."""
    shapes: dict[tuple[int, ...], list[tuple[Tensor, Tensor]]] = {}
    for idx, x in groups:
        shapes.setdefault(tuple(x.shape[1:]), []).append((idx, x))
    merged = []
    for members in shapes.values():
        if len(members) == 1:
            merged.append(members[0])
        else:
            merged.append((torch.cat([i for i, _ in members]), torch.cat([x for _, x in members])))
    return merged


def lucent_chain(ops: Sequence[Op]) -> list:
    """lucent's own transform callables for ``ops`` (crop, which lucent 0.1.8 lacks, as ours): the
    reference the tests compare :func:`apply_ops` with. Draws come from ``np.random``, as in lucent."""
    from lucent.optvis import transform

    chain = []
    for op in ops:
        if op.kind == "pad":
            chain.append(transform.pad(op.size, mode=op.mode, constant_value=op.value))
        elif op.kind == "jitter":
            chain.append(transform.jitter(op.size))
        elif op.kind == "scale":
            chain.append(transform.random_scale(list(op.choices)))
        elif op.kind == "rotate":
            chain.append(transform.random_rotate(list(op.choices)))
        else:
            chain.append(lambda x, size=op.size: center_crop(x, size))
    return chain


def replay_lucent_draws(ops: Sequence[Op], seed: int) -> Tensor:
    """The choice indices lucent's chain draws from ``np.random.seed(seed)`` at one step.

    ``np.random.choice(seq)`` draws ``randint(len(seq))`` and indexes, so drawing ``choice(len(seq))``
    from the same state yields the index it chose.
    """
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        values = [int(np.random.choice(high)) for op in ops for high in op.draw_ranges()]
    finally:
        np.random.set_state(state)
    return torch.tensor([values], dtype=torch.int64).reshape(1, -1)


@contextmanager
def lucent_device(device: torch.device):
    """Point lucent's module-level ``device`` globals (param.spatial, transform) at ``device``.

    (param.color has none in 0.1.8: its decorrelation hard-codes cuda:0 when CUDA exists, which is why
    rsi.fz_param does the colour step itself.)
    """
    from lucent.optvis import transform
    from lucent.optvis.param import spatial

    saved = (spatial.device, transform.device)
    spatial.device = transform.device = torch.device(device)
    try:
        yield
    finally:
        spatial.device, transform.device = saved
