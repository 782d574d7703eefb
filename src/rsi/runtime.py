"""Shared plumbing for stages: the model section of params.yaml, device choice, keyed random
generators, and atomic file writes (a killed stage never leaves a half-written output).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _check_device(value: str) -> str:
    if value in ("auto", "cpu") or value.startswith("cuda"):
        return value
    raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'")


def _check_arch(value: str) -> str:
    from rsi.taps import check_arch

    return check_arch(value)


def _check_weights(value: str) -> str:
    if value.startswith("random:") and not RANDOM_WEIGHTS.match(value):
        raise ValueError("a random network's seed is a whole number >= 0: random:<seed>, e.g. random:0")
    return value


@dataclass(frozen=True)
class ModelParams:
    """params.yaml ``model``: which network, where its weights come from, and where to run."""

    weights: str = field(
        default="torchvision",
        metadata={
            "check": _check_weights,
            "help": "'torchvision' (cache, else data/), a path to a state_dict file, or random:<seed>",
        },
    )
    device: str = field(default="auto", metadata={"check": _check_device})
    arch: str = field(
        default="resnet18",
        metadata={
            "check": _check_arch,
            "help": "resnet18 (the paper) | resnet34 | resnet50 | resnet101 | resnet152",
        },
    )


# model.weights of a seeded random network (tests and the offline demo only): every output labels it
RANDOM_WEIGHTS = re.compile(r"^random:(\d+)$")


def is_random(weights: str) -> bool:
    """Whether ``model.weights`` names a seeded random network (``random:<seed>``), not trained weights."""
    return bool(RANDOM_WEIGHTS.match(weights))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the local CUDA device when there is one (per torchrun rank), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device = {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is None:  # some CUDA calls need an explicit index
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def describe_device(device: torch.device | str) -> str:
    """What computed a stage's floats, for its settings and the report (DESIGN: CPU and GPU floats
    differ; the report names the device): the GPU's name, or the CPU with its thread count, since CPU
    kernels round by thread count (rsi.launch.worker_threads)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def key_seed(*parts: Any) -> int:
    """A 63-bit seed from any values (seed, block, tap, channel …): stable across runs and machines."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def keyed_generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded by :func:`key_seed` (draws are then moved to the device)."""
    generator = torch.Generator()
    generator.manual_seed(key_seed(*parts))
    return generator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with open(temporary, "rb") as written:  # on disk before the rename: a power loss leaves the old
            os.fsync(written.fileno())  # file or the whole new one, never an empty one under its name
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed .npz atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage that makes it (see dvc.yaml)")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_json(path: str | Path, data: Any) -> None:
    """Pretty JSON, written atomically (metrics files are diffed by `dvc metrics diff`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def full_float32(allow_tf32: bool = False) -> dict[str, bool]:
    """Full float32 on CUDA, or with ``allow_tf32`` the arithmetic of the authors' torch 2.0 defaults: TF32
    for cuDNN convolutions, not for matmuls (torch has left matmul TF32 off by default since 1.12). Returns
    the flags now in force, for the stage's settings or metrics.

    PyTorch leaves cuDNN TF32 on by default, which on Ampere or newer GPUs rounds convolution inputs to
    10 mantissa bits and can flip a near-tie argmax or verdict. Result stages call this once before they
    compute; the flags are process-wide, settable without CUDA (so tests check them on a CPU), and only
    change anything on CUDA. ``rsi fz`` keeps its own switch (``fz.tf32``) around each render."""
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    return tf32_flags()


def tf32_flags() -> dict[str, bool]:
    """The TF32 flags in force: ``cudnn_allow_tf32`` (convolutions) and ``matmul_allow_tf32``."""
    return {
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }
