"""The network: a torchvision ResNet (``model.arch``, default the paper's resnet18) with torchvision's
IMAGENET1K_V1 weights from a checked file, another state_dict file (labelled as custom weights), or, for
tests and the offline demo only, a seeded random init. There is no fallback: a source that cannot be had
is an error that says what to do.

Weights are identified by their content, never by their file name: a file is torchvision's IMAGENET1K_V1
checkpoint of an arch when its SHA-256 matches :data:`CHECKPOINTS`; every other file is
``custom weights <sha8>`` in every label.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torchvision.models
from torch import nn

from rsi.runtime import RANDOM_WEIGHTS, is_random
from rsi.taps import ARCHS, DEFAULT_ARCH


@dataclass(frozen=True)
class Checkpoint:
    """torchvision's IMAGENET1K_V1 file of one arch. ``sha256`` is the full digest where a public source
    gives it, else the 8-hex SHA-256 prefix torchvision writes into the file name; a file's *content*
    hash must start with it."""

    arch: str
    file: str
    sha256: str

    @property
    def url(self) -> str:
        return f"https://download.pytorch.org/models/{self.file}"

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.sha256)


# File names from torchvision 0.x's models/resnet.py (ResNet*_Weights.IMAGENET1K_V1). resnet18's full
# SHA-256 is the one published for resnet18-f37072fd.pth by many independent projects (it starts with the
# name's prefix); for the others only the 8-hex prefix is known here.
CHECKPOINTS: dict[str, Checkpoint] = {
    "resnet18": Checkpoint(
        "resnet18",
        "resnet18-f37072fd.pth",
        "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
    ),
    "resnet34": Checkpoint("resnet34", "resnet34-b627a593.pth", "b627a593"),
    "resnet50": Checkpoint("resnet50", "resnet50-0676ba61.pth", "0676ba61"),
    "resnet101": Checkpoint("resnet101", "resnet101-63fe2227.pth", "63fe2227"),
    "resnet152": Checkpoint("resnet152", "resnet152-394f9c45.pth", "394f9c45"),
}
assert set(CHECKPOINTS) == set(ARCHS)

WEIGHTS_FILE = CHECKPOINTS[DEFAULT_ARCH].file
WEIGHTS_URL = CHECKPOINTS[DEFAULT_ARCH].url
WEIGHTS_SHA256_PREFIX = CHECKPOINTS[DEFAULT_ARCH].sha256[:8]
RANDOM_LABEL = "RANDOM WEIGHTS (not the paper's model)"
PAPER_LABEL = "IMAGENET1K_V1"


class WeightsError(RuntimeError):
    """The requested weights cannot be loaded; the message says how to provide them."""


def checkpoint(arch: str) -> Checkpoint:
    """torchvision's IMAGENET1K_V1 file of ``arch``; an unknown arch is a WeightsError listing them."""
    if arch not in CHECKPOINTS:
        raise WeightsError(f"unknown model.arch {arch!r}: archs are {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[arch]


# where `rsi fetch-weights` puts a checkpoint (relative to the working directory, the checkout under
# `dvc repro`); model.weights: torchvision reads it when torchvision's cache has none
FETCHED_DIR = Path("data")


def torchvision_cache_path(arch: str = DEFAULT_ARCH) -> Path:
    """Where torchvision keeps downloaded checkpoints (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / checkpoint(arch).file


def sha256_of(path: Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256_cached(path: str, _size: int, _mtime_ns: int) -> str:
    """Size and mtime are part of the key: a file replaced in place is hashed again."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def identify(path: Path) -> str | None:
    """The arch whose torchvision IMAGENET1K_V1 file ``path`` is, by content; None for any other file."""
    digest = sha256_of(path)
    return next((arch for arch, known in CHECKPOINTS.items() if known.matches(digest)), None)


def check_weights_file(path: Path, arch: str = DEFAULT_ARCH) -> None:
    """``path`` must be torchvision's IMAGENET1K_V1 file of ``arch`` by content (its name is not read)."""
    path = Path(path)
    known = checkpoint(arch)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    actual = sha256_of(path)
    if not known.matches(actual):
        raise WeightsError(
            f"weights file {path} has SHA-256 {actual[:16]}…, expected {known.sha256[:16]}… "
            f"(prefix {known.sha256[:8]}): it is not {known.file} (corrupt or another file); download it "
            f"again from {known.url}"
        )


def describe_weights(source: str, arch: str = DEFAULT_ARCH) -> str:
    """The label of every output made with ``source``: IMAGENET1K_V1 only for torchvision's file of
    ``arch`` (by content), ``custom weights <sha8>`` for any other file, a RANDOM WEIGHTS warning for
    ``random:<seed>``. Archs other than resnet18 are named in front (``resnet34 IMAGENET1K_V1``)."""
    if is_random(source):
        label = RANDOM_LABEL
    elif source == "torchvision":
        label = PAPER_LABEL  # the cache file is checked against the known hash when it is loaded
    else:
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            label = f"weights file {path.name} (not found, unverified)"
        else:
            digest = sha256_of(path)
            label = PAPER_LABEL if checkpoint(arch).matches(digest) else f"custom weights {digest[:8]}"
    return label if arch == DEFAULT_ARCH else f"{arch} {label}"


def load_model(source: str = "torchvision", arch: str = DEFAULT_ARCH, *, download: bool = False) -> nn.Module:
    """torchvision's ``arch`` in eval mode with gradients off for its parameters.

    source: "torchvision" (torchvision's cache, else data/<file> as `rsi fetch-weights` leaves it,
    downloaded into the cache only when ``download``; checked by content either way), a path to a
    state_dict file (torchvision's ``<arch>-<hash>.pth`` or any other, labelled custom), or
    ``random:<seed>`` (tests and the offline demo only).
    """
    build = getattr(torchvision.models, checkpoint(arch).arch)
    random_match = RANDOM_WEIGHTS.match(source)
    if random_match:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_match.group(1)))
            model = build(weights=None)
    else:
        path = _resolve_weights_path(source, arch, download=download)
        if source == "torchvision":
            check_weights_file(path, arch)
        else:
            _refuse_corrupt_download(path)
        model = build(weights=None)
        _load_state(model, _read_state(path), path, arch)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_resnet18(source: str = "torchvision", *, download: bool = False) -> nn.Module:
    """:func:`load_model` of the paper's resnet18."""
    return load_model(source, DEFAULT_ARCH, download=download)


def _refuse_corrupt_download(path: Path) -> None:
    """A file that bears one of torchvision's file names but not its content is a broken download:
    an error, not custom weights. (The name only ever refuses a file; it never vouches for one.)"""
    for known in CHECKPOINTS.values():
        if path.name == known.file:
            check_weights_file(path, known.arch)


def _read_state(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types for a file that is not a checkpoint
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise WeightsError(
            f"weights file {path} is not a readable PyTorch state_dict ({type(error).__name__}: {reason}); "
            "give torchvision's checkpoint or a file saved with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"weights file {path} holds a {type(state).__name__}, not a state_dict of tensors; save "
            "model.state_dict() itself (not a wrapper such as {'state_dict': ...})"
        )
    return state


def _first(names: list[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return f"{shown}, …" if len(names) > count else shown


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load strictly, or one line naming the missing, unexpected and mis-shaped keys and what to do."""
    expected = model.state_dict()
    # BatchNorm fills in num_batches_tracked itself when a (older) checkpoint lacks it
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        problems = [
            f"{len(names)} {what} ({_first(names)})"
            for names, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (misshaped, "keys of another shape"),
            )
            if names
        ]
        other = identify(path)
        hint = (
            f"it is torchvision's {other} IMAGENET1K_V1 file: set model.arch: {other}"
            if other and other != arch
            else f"give a state_dict of torchvision's {arch}, or set model.arch to the file's architecture"
        )
        raise WeightsError(f"weights file {path} does not fit {arch}: {'; '.join(problems)}. {hint}")
    model.load_state_dict(state)


def _resolve_weights_path(source: str, arch: str, *, download: bool) -> Path:
    known = checkpoint(arch)
    if source != "torchvision":
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            raise WeightsError(
                f"model.weights = {source!r}: no such file. Give the path to {known.file} "
                f"(download: {known.url}), 'torchvision' for torchvision's cache, or "
                "'random:<seed>' for an explicitly random model (tests and offline demo only)."
            )
        return path
    path = torchvision_cache_path(arch)
    if path.is_file():
        return path
    fetched = FETCHED_DIR / known.file  # where `rsi fetch-weights` puts it; checked by content like the cache
    if fetched.is_file():
        return fetched
    if download:
        try:
            torch.hub.download_url_to_file(known.url, str(path), hash_prefix=known.sha256)
        except Exception as error:  # network errors come in many types
            raise WeightsError(
                f"could not download {known.url} into {path} ({error}). Copy {known.file} there "
                f"or into {FETCHED_DIR}/, where model.weights: torchvision finds it too."
            ) from error
        return path
    raise WeightsError(
        f"{known.file} is in neither torchvision's cache ({path}) nor {fetched}: run `rsi fetch-weights` "
        f"(it puts the file into {FETCHED_DIR}/), or download it from {known.url} into either folder. For "
        "an offline demo only, set model.weights: random:0 — every output is then labelled RANDOM WEIGHTS."
    )
