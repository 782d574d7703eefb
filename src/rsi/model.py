"""ResNet18 with the paper's weights (torchvision IMAGENET1K_V1), from a checked file or, for tests only,
a seeded random init. There is no fallback: a source that cannot be had is an error that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

WEIGHTS_FILE = "resnet18-f37072fd.pth"
WEIGHTS_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
WEIGHTS_SHA256_PREFIX = "f37072fd"

_RANDOM = re.compile(r"^random:(\d+)$")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth?$")


class WeightsError(RuntimeError):
    """The requested weights cannot be loaded; the message says how to provide them."""


def torchvision_cache_path() -> Path:
    """Where torchvision keeps downloaded checkpoints (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_weights_file(path: Path) -> None:
    """Check a checkpoint's SHA-256 against the prefix torchvision writes into its file name."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    match = _HASH_IN_NAME.search(path.name)
    expected = match.group(1) if match else WEIGHTS_SHA256_PREFIX
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise WeightsError(
            f"weights file {path} has SHA-256 {actual[:16]}…, expected a prefix {expected}: the file is "
            f"corrupt or not {WEIGHTS_FILE}; download it again from {WEIGHTS_URL}"
        )


def describe_weights(source: str) -> str:
    """A label for outputs: every file made with random weights says so."""
    return "RANDOM WEIGHTS (not the paper's model)" if _RANDOM.match(source) else "IMAGENET1K_V1"


def is_random(source: str) -> bool:
    return bool(_RANDOM.match(source))


def load_resnet18(source: str = "torchvision", *, download: bool = False) -> nn.Module:
    """ResNet18 in eval mode with gradients off for its parameters.

    source: "torchvision" (torchvision's cache, downloaded there only when ``download``), a path to
    ``resnet18-f37072fd.pth``, or ``random:<seed>`` (tests and the offline demo only).
    """
    random_match = _RANDOM.match(source)
    if random_match:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_match.group(1)))
            model = resnet18(weights=None)
    else:
        path = _resolve_weights_path(source, download=download)
        check_weights_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = resnet18(weights=None)
        model.load_state_dict(state)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _resolve_weights_path(source: str, *, download: bool) -> Path:
    if source != "torchvision":
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            raise WeightsError(
                f"model.weights = {source!r}: no such file. Give the path to {WEIGHTS_FILE} "
                f"(download: {WEIGHTS_URL}), 'torchvision' for torchvision's cache, or "
                "'random:<seed>' for an explicitly random model (tests and offline demo only)."
            )
        return path
    path = torchvision_cache_path()
    if path.is_file():
        return path
    if download:
        try:
            torch.hub.download_url_to_file(WEIGHTS_URL, str(path), hash_prefix=WEIGHTS_SHA256_PREFIX)
        except Exception as error:  # network errors come in many types
            raise WeightsError(
                f"could not download {WEIGHTS_URL} into {path} ({error}). Copy {WEIGHTS_FILE} there "
                "or into data/, and set model.weights to its path."
            ) from error
        return path
    raise WeightsError(
        f"{WEIGHTS_FILE} is not in torchvision's cache ({path}). Download it from {WEIGHTS_URL} into "
        "that folder or into data/ (then set model.weights: data/resnet18-f37072fd.pth), or run "
        "`rsi fetch-weights`. For an offline demo only, set model.weights: random:0 — every output is "
        "then labelled RANDOM WEIGHTS."
    )
