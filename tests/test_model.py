"""Weights: checked files, explicit random init, and no silent fallback."""

from __future__ import annotations

import pytest
import torch

from rsi.model import (
    WEIGHTS_FILE,
    WeightsError,
    check_weights_file,
    describe_weights,
    load_resnet18,
    sha256_of,
)


def test_random_weights_are_seeded_and_eval_mode():
    first, second, other = load_resnet18("random:3"), load_resnet18("random:3"), load_resnet18("random:4")
    assert torch.equal(first.conv1.weight, second.conv1.weight)
    assert not torch.equal(first.conv1.weight, other.conv1.weight)
    assert not first.training
    assert not any(p.requires_grad for p in first.parameters())
    assert describe_weights("random:3").startswith("RANDOM WEIGHTS")
    assert describe_weights("torchvision") == "IMAGENET1K_V1"


def test_random_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_resnet18("random:0")
    assert torch.equal(torch.rand(3), expected)


def test_a_file_with_the_right_hash_prefix_loads_with_weights_only(tmp_path):
    state = load_resnet18("random:1").state_dict()
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    prefix = sha256_of(raw)[:8]
    named = tmp_path / f"resnet18-{prefix}.pth"
    raw.rename(named)
    model = load_resnet18(str(named))
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_a_corrupt_weights_file_is_rejected(tmp_path):
    bad = tmp_path / WEIGHTS_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="expected a prefix f37072fd"):
        check_weights_file(bad)
    with pytest.raises(WeightsError, match="corrupt"):
        load_resnet18(str(bad))


def test_missing_file_and_empty_cache_say_how_to_get_the_weights(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="no such file.*random:<seed>"):
        load_resnet18(str(tmp_path / "nope.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError, match="not in torchvision's cache.*rsi fetch-weights"):
        load_resnet18("torchvision")


def test_cli_reports_weights_errors_without_traceback(tmp_path, monkeypatch, capsys):
    from rsi.cli import main

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "data" / WEIGHTS_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"x")
    assert main(["fetch-weights"]) == 2
    assert "rsi fetch-weights: error: weights file data/resnet18-f37072fd.pth has SHA-256" in (
        capsys.readouterr().err
    )
