"""Shared fixtures: seeded RNGs and one seeded random ResNet18 per session (the same code path as the
real weights; only the weight source differs)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def random_model() -> torch.nn.Module:
    from rsi.model import load_resnet18

    return load_resnet18("random:0")


@pytest.fixture
def tf32_flags():
    """Restores torch's TF32 flags after a test that sets them (torch.backends.cuda.matmul has no plain
    attribute for monkeypatch to restore)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
