"""Named In / Pre / Post taps of the blocks of torchvision's ResNets, captured by copy, with a truncated
forward.

Block ``L.K`` is torchvision's ``layerL[K]``; which blocks exist depends on the architecture
(``model.arch``: :data:`ARCHS`, e.g. ``3.5`` exists in resnet34, not in resnet18). For each block (paper
section 2.1):

* **In**: what the block adds on its skip path: ``layerL.K.downsample`` where the block has one (every
  ``L.0`` but ResNet18/34's ``1.0``), else the block's input (block ``L.(K-1)``'s output; ``maxpool`` for
  a BasicBlock ``1.0``).
* **Pre**: the output of the block's last BatchNorm: ``bn2`` in a BasicBlock (resnet18/34), ``bn3`` in a
  Bottleneck (resnet50/101/152).
* **Post**: the block output, ReLU(Pre + In).

torchvision's blocks add the skip into that BatchNorm's output *in place* and apply an in-place ReLU, so
a hook that keeps a reference to it (lucent's does) later holds Post. Every hook here copies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

DEFAULT_ARCH = "resnet18"
# torchvision's ResNets: (Bottleneck blocks?, blocks per layer). The paper's network is resnet18.
ARCHS: dict[str, tuple[bool, tuple[int, int, int, int]]] = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
    "resnet101": (True, (3, 4, 23, 3)),
    "resnet152": (True, (3, 8, 36, 3)),
}
TAP_KINDS: tuple[str, ...] = ("in", "pre", "post")
_BLOCK_FORMS = re.compile(r"^(?:layer)?([1-4])[._](\d{1,2})$")


def check_arch(arch: str) -> str:
    """``arch`` if it is one of :data:`ARCHS`, else a ValueError listing them."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: archs are {', '.join(ARCHS)}")
    return arch


def is_bottleneck(arch: str) -> bool:
    return ARCHS[check_arch(arch)][0]


def block_names(arch: str = DEFAULT_ARCH) -> tuple[str, ...]:
    """Every block of ``arch`` in forward order: ``("1.0", "1.1", "2.0", …)``."""
    depths = ARCHS[check_arch(arch)][1]
    return tuple(f"{layer}.{index}" for layer, depth in enumerate(depths, 1) for index in range(depth))


BLOCKS: tuple[str, ...] = block_names(DEFAULT_ARCH)


def describe_blocks(arch: str) -> str:
    """The blocks of ``arch`` for error messages; a long layer as a range (``3.0…3.22``)."""
    depths = ARCHS[check_arch(arch)][1]
    parts = []
    for layer, depth in enumerate(depths, 1):
        if depth <= 4:
            parts += [f"{layer}.{index}" for index in range(depth)]
        else:
            parts.append(f"{layer}.0…{layer}.{depth - 1}")
    return ", ".join(parts)


def parse_block(name: str, arch: str | None = None) -> str:
    """Normalise ``2.1``, ``layer2_1`` or ``layer2.1`` to ``2.1``; a ValueError for anything else, and,
    given ``arch``, for a block that ``arch`` does not have (the message lists those it has). Without
    ``arch`` only the form is checked: readers of files the stages wrote take any architecture's blocks."""
    match = _BLOCK_FORMS.match(str(name).strip())
    block = f"{match.group(1)}.{int(match.group(2))}" if match else None
    if arch is not None and block not in block_names(arch):
        raise ValueError(
            f"unknown block {name!r}: blocks of {arch} are {describe_blocks(arch)} (or layerL_K)"
        )
    if block is None:
        raise ValueError(
            f"unknown block {name!r}: blocks are L.K or layerL_K, layer L of 1-4 and K from 0 (resnet18's: "
            f"{describe_blocks(DEFAULT_ARCH)})"
        )
    return block


def block_key(block: str) -> str:
    """The params.yaml / file-name key of a block: ``2.1`` → ``layer2_1`` (DVC reads dots as nesting)."""
    layer, index = parse_block(block).split(".")
    return f"layer{layer}_{index}"


def block_module(block: str) -> str:
    """torchvision's module path of a block: ``2.1`` → ``layer2.1``."""
    layer, index = parse_block(block).split(".")
    return f"layer{layer}.{index}"


def block_order(block: str) -> tuple[int, int]:
    """A sort key that puts blocks of any architecture in forward order (``2.10`` after ``2.9``)."""
    layer, index = parse_block(block).split(".")
    return int(layer), int(index)


def has_downsample(block: str, arch: str = DEFAULT_ARCH) -> bool:
    """Whether block's skip path is a ``downsample`` (every L.0, except a BasicBlock network's 1.0)."""
    layer, index = parse_block(block, arch).split(".")
    return index == "0" and (layer != "1" or is_bottleneck(arch))


def previous_block(block: str, arch: str = DEFAULT_ARCH) -> str | None:
    names = block_names(arch)
    position = names.index(parse_block(block, arch))
    return names[position - 1] if position else None


def num_channels(block: str, arch: str = DEFAULT_ARCH) -> int:
    """Channels of every tap of a block (In, Pre and Post have the same width): 64·2^(L−1) in a
    BasicBlock network, four times that in a Bottleneck one."""
    layer = int(parse_block(block, arch)[0])
    return (256 if is_bottleneck(arch) else 64) * 2 ** (layer - 1)


def arch_of(model: nn.Module) -> str:
    """The :data:`ARCHS` name of a torchvision ResNet, read from its blocks (type and count per layer)."""
    try:
        bottleneck = hasattr(model.layer1[0], "bn3")
        depths = tuple(len(getattr(model, f"layer{layer}")) for layer in range(1, 5))
    except (AttributeError, TypeError, IndexError) as error:
        raise ValueError(f"{type(model).__name__} is not a torchvision ResNet ({error})") from None
    for name, spec in ARCHS.items():
        if spec == (bottleneck, depths):
            return name
    raise ValueError(f"a ResNet with blocks per layer {depths} is none of {', '.join(ARCHS)}")


@dataclass(frozen=True, order=True)
class Tap:
    """One named activation, e.g. ``Tap("2.1", "pre")``, written ``2.1/pre``. The name is the same in
    every architecture; :meth:`module_of` gives the module it is read from in one."""

    block: str
    kind: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", parse_block(self.block))
        if self.kind not in TAP_KINDS:
            raise ValueError(f"unknown tap {self.kind!r} of block {self.block}: taps are {TAP_KINDS}")

    @classmethod
    def parse(cls, name: str) -> Tap:
        block, sep, kind = str(name).partition("/")
        if not sep:
            raise ValueError(f"tap {name!r} must look like '2.1/pre' (block/in|pre|post)")
        return cls(block, kind)

    def __str__(self) -> str:
        return f"{self.block}/{self.kind}"

    def module_of(self, arch: str) -> str:
        """torchvision module of ``arch`` whose output *is* this tap (hooked with a copy)."""
        parse_block(self.block, arch)  # a block the arch lacks is an error, not a missing module
        if self.kind == "pre":
            return f"{block_module(self.block)}.{'bn3' if is_bottleneck(arch) else 'bn2'}"
        if self.kind == "post":
            return block_module(self.block)
        if has_downsample(self.block, arch):
            return f"{block_module(self.block)}.downsample"
        previous = previous_block(self.block, arch)
        return block_module(previous) if previous else "maxpool"

    @property
    def module(self) -> str:
        """:meth:`module_of` the paper's resnet18."""
        return self.module_of(DEFAULT_ARCH)

    def stage_index_of(self, arch: str) -> int:
        """Position in the forward of the top-level stage after which this tap is known (maxpool = 0,
        block i of :func:`block_names` = i + 1)."""
        names = block_names(arch)
        if self.kind == "in" and not has_downsample(self.block, arch):
            previous = previous_block(self.block, arch)
            return names.index(previous) + 1 if previous else 0
        return names.index(parse_block(self.block, arch)) + 1


def center(activation: Tensor) -> Tensor:
    """The center neuron (H//2, W//2) of every channel: (N, C, H, W) → (N, C)."""
    if activation.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) activation, got shape {tuple(activation.shape)}")
    height, width = activation.shape[-2:]
    return activation[:, :, height // 2, width // 2]


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The top-level forward of a torchvision ResNet as (name, module): stem, every block, head."""
    head = [("avgpool", model.avgpool), ("flatten", nn.Flatten(1)), ("fc", model.fc)]
    stem = [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool")]
    blocks = [(block_module(b), model.get_submodule(block_module(b))) for b in block_names(arch_of(model))]
    return stem + blocks + head


class _StopForward(Exception):
    """Raised by a hook once the deepest requested tap is captured."""


@contextmanager
def capture(model: nn.Module, taps: Iterable[Tap], *, detach: bool = False) -> Iterator[dict[Tap, Tensor]]:
    """Hooks that store a *copy* of each tap's module output into the yielded dict.

    ``detach=False`` keeps the copy in the autograd graph (FZ objectives need it).
    """
    values: dict[Tap, Tensor] = {}
    handles = []
    by_module: dict[str, list[Tap]] = {}
    arch = arch_of(model)
    for tap in taps:
        by_module.setdefault(tap.module_of(arch), []).append(tap)
    for module_name, module_taps in by_module.items():

        def hook(_module, _inputs, output, module_taps=module_taps):
            copy = output.detach().clone() if detach else output.clone()
            for tap in module_taps:
                values[tap] = copy

        handles.append(model.get_submodule(module_name).register_forward_hook(hook))
    try:
        yield values
    finally:
        for handle in handles:
            handle.remove()


def forward_taps(
    model: nn.Module, images: Tensor, taps: Sequence[Tap], *, detach: bool = False
) -> dict[Tap, Tensor]:
    """Tap values for a batch of normalised images, running the network only as far as needed."""
    if not taps:
        raise ValueError("forward_taps needs at least one tap")
    arch = arch_of(model)
    deepest = max(tap.stage_index_of(arch) for tap in taps)
    stop_module = "maxpool" if deepest == 0 else block_module(block_names(arch)[deepest - 1])

    def stop(_module, _inputs, _output):
        raise _StopForward

    with capture(model, taps, detach=detach) as values:
        handle = model.get_submodule(stop_module).register_forward_hook(stop)
        try:
            model(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
    return values


def forward_from(model: nn.Module, block: str, post: Tensor) -> Tensor:
    """Logits from a block's Post onward: the rest of the blocks and the head."""
    names = [name for name, _ in stages(model)]
    start = names.index(block_module(block)) + 1
    out = post
    for _, module in stages(model)[start:]:
        out = module(out)
    return out


def overwrite_channels(activation: Tensor, channels: Tensor, values: Tensor) -> Tensor:
    """A copy of ``activation`` (N, C, H, W) whose whole maps of ``channels`` equal ``values``.

    This is mean ablation: each chosen channel's map is set to its own constant.
    """
    if channels.ndim != 1 or values.shape != channels.shape:
        raise ValueError(
            f"channels {tuple(channels.shape)} and values {tuple(values.shape)} must be equal 1-D shapes"
        )
    out = activation.clone()
    out[:, channels] = values.to(out.dtype)[None, :, None, None]
    return out
