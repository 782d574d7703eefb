"""Named In / Pre / Post taps of ResNet18 blocks, captured by copy, with a truncated forward.

Block ``L.K`` is torchvision's ``layerL[K]``. For each block (paper section 2.1):

* **In**: what the block adds on its skip path: ``layerL.K.downsample`` where the block has one
  (2.0, 3.0, 4.0), else the block's input (the previous block's output; ``maxpool`` for 1.0).
* **Pre**: the output of ``layerL.K.bn2``.
* **Post**: the block output, ReLU(Pre + In).

torchvision's BasicBlock adds the skip into bn2's output *in place* and applies an in-place ReLU, so a
hook that keeps a reference to bn2's output (lucent's does) later holds Post. Every hook here copies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

BLOCKS: tuple[str, ...] = ("1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")
TAP_KINDS: tuple[str, ...] = ("in", "pre", "post")
_BLOCK_FORMS = re.compile(r"^(?:layer)?([1-4])[._]([01])$")


def parse_block(name: str) -> str:
    """Normalise ``2.1``, ``layer2_1`` or ``layer2.1`` to ``2.1``; anything else is a ValueError."""
    match = _BLOCK_FORMS.match(str(name).strip())
    if not match:
        raise ValueError(
            f"unknown block {name!r}: blocks are {', '.join(BLOCKS)} (or layerL_K, e.g. layer2_1)"
        )
    return f"{match.group(1)}.{match.group(2)}"


def block_key(block: str) -> str:
    """The params.yaml / file-name key of a block: ``2.1`` → ``layer2_1`` (DVC reads dots as nesting)."""
    layer, index = parse_block(block).split(".")
    return f"layer{layer}_{index}"


def block_module(block: str) -> str:
    """torchvision's module path of a block: ``2.1`` → ``layer2.1``."""
    layer, index = parse_block(block).split(".")
    return f"layer{layer}.{index}"


def has_downsample(block: str) -> bool:
    layer, index = parse_block(block).split(".")
    return index == "0" and layer != "1"


def previous_block(block: str) -> str | None:
    position = BLOCKS.index(parse_block(block))
    return BLOCKS[position - 1] if position else None


def num_channels(block: str) -> int:
    """Channels of every tap of a block (In, Pre and Post have the same width)."""
    return 64 * 2 ** (int(parse_block(block)[0]) - 1)


@dataclass(frozen=True, order=True)
class Tap:
    """One named activation, e.g. ``Tap("2.1", "pre")``, written ``2.1/pre``."""

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

    @property
    def module(self) -> str:
        """torchvision module whose output *is* this tap (hooked with a copy)."""
        if self.kind == "pre":
            return f"{block_module(self.block)}.bn2"
        if self.kind == "post":
            return block_module(self.block)
        if has_downsample(self.block):
            return f"{block_module(self.block)}.downsample"
        previous = previous_block(self.block)
        return block_module(previous) if previous else "maxpool"

    @property
    def stage_index(self) -> int:
        """Position in the forward of the top-level stage after which this tap is known (maxpool = 0)."""
        if self.kind == "in" and not has_downsample(self.block):
            previous = previous_block(self.block)
            return BLOCKS.index(previous) + 1 if previous else 0
        return BLOCKS.index(self.block) + 1


def center(activation: Tensor) -> Tensor:
    """The center neuron (H//2, W//2) of every channel: (N, C, H, W) → (N, C)."""
    if activation.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) activation, got shape {tuple(activation.shape)}")
    height, width = activation.shape[-2:]
    return activation[:, :, height // 2, width // 2]


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The top-level forward of a torchvision ResNet18 as (name, module): stem, 8 blocks, head."""
    head = [("avgpool", model.avgpool), ("flatten", nn.Flatten(1)), ("fc", model.fc)]
    stem = [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool")]
    blocks = [(block_module(b), model.get_submodule(block_module(b))) for b in BLOCKS]
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
    for tap in taps:
        by_module.setdefault(tap.module, []).append(tap)
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
    deepest = max(tap.stage_index for tap in taps)
    stop_module = "maxpool" if deepest == 0 else block_module(BLOCKS[deepest - 1])

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
