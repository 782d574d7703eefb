"""The FZ-side file contracts (rsi.artifacts.fz, rsi.artifacts.activations): each writer's file reads back
as its record, and each reader fails in one line naming the file, the stage that writes it and what is
missing, never guessing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsi import artifacts
from rsi.artifacts import ArtifactError, MissingArtifactError
from rsi.artifacts.activations import Activations, read_activations, write_activations
from rsi.artifacts.fz import (
    FZFile,
    FZSettings,
    read_fz,
    read_fz_settings,
    rendered_blocks,
    write_fz,
    write_fz_settings,
)
from rsi.runtime import save_npz
from rsi.taps import Tap


def an_fz(count: int = 3) -> FZFile:
    rng = np.random.default_rng(0)
    return FZFile(
        images=rng.integers(0, 256, (count, 3, 8, 8), dtype=np.uint8),
        channels=np.arange(count, dtype=np.int64) * 2,
        objective=rng.random(count, dtype=np.float32),
        initial_objective=rng.random(count, dtype=np.float32),
    )


def an_activations() -> Activations:
    return Activations(
        acts=np.arange(30, dtype=np.float32).reshape(5, 3, 2),
        channels=np.array([4, 7]),
        fz_images=artifacts.FZ_IMAGES,
        taps=("in", "pre", "post"),
        weights="RANDOM weights (seed 0)",
        extractor="taps",
        scale_fraction=0.5,
        shrink_fraction=0.5,
        numerics={"cudnn_allow_tf32": False, "matmul_allow_tf32": False},
    )


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_fz_file_reads_back_as_written(tmp_path):
    path = artifacts.fz_file(Tap("2.1", "pre"), tmp_path)
    fz = an_fz()
    write_fz(path, fz)
    back = read_fz(path)
    for key in ("images", "channels", "objective", "initial_objective"):
        assert (
            np.array_equal(getattr(back, key), getattr(fz, key))
            and getattr(back, key).dtype == getattr(fz, key).dtype
        )
    assert list(np.load(path).files) == ["images", "channels", "objective", "initial_objective"]


def test_the_fz_reader_names_file_stage_and_missing_key(tmp_path):
    path = artifacts.fz_file(Tap("2.1", "pre"), tmp_path)
    with pytest.raises(MissingArtifactError) as error:
        read_fz(path)
    assert one_line(error).startswith(f"{path} is missing") and "`rsi fz`" in str(error.value)
    fz = an_fz()
    save_npz(path, images=fz.images, channels=fz.channels, objective=fz.objective)  # no initial_objective
    with pytest.raises(ArtifactError) as error:
        read_fz(path, stage="stability")
    message = one_line(error)
    assert message.startswith(f"{path}: no 'initial_objective'") and "`rsi stability`" in message
    save_npz(
        path,
        images=fz.images[:2],
        channels=fz.channels,
        objective=fz.objective,
        initial_objective=fz.objective,
    )
    with pytest.raises(ArtifactError, match="one \\(3, H, W\\) image per channel"):
        read_fz(path)
    save_npz(
        path,
        images=fz.images.astype(np.int32),
        channels=fz.channels,
        objective=fz.objective,
        initial_objective=fz.objective,
    )
    with pytest.raises(ArtifactError, match="int32; `rsi fz` writes uint8 or float32"):
        read_fz(path)


def a_settings(block: str = "2.1") -> FZSettings:
    return FZSettings(
        block,
        "random:0",
        "RANDOM weights",
        0,
        6,
        "cpu (2 threads)",
        {"pre": {"steps": 3, "settings_hash": "ab"}},
    )


def test_fz_settings_read_back_and_name_the_missing_key(tmp_path):
    for block in ("3.0", "2.1"):
        write_fz_settings(artifacts.fz_settings_file(block, tmp_path), a_settings(block))
    (tmp_path / "fz" / "notes").mkdir()
    assert rendered_blocks(tmp_path) == ["2.1", "3.0"]
    path = artifacts.fz_settings_file("2.1", tmp_path)
    assert read_fz_settings(path) == a_settings()
    assert list(json.loads(path.read_text())) == [
        "block",
        "weights",
        "weights_label",
        "seed",
        "channels",
        "device",
        "taps",
    ]
    data = json.loads(path.read_text())
    del data["seed"]
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as error:
        read_fz_settings(path)
    assert one_line(error).startswith(f"{path}: no 'seed', which `rsi fz` always writes")
    path.write_text("{")
    with pytest.raises(ArtifactError, match="not JSON"):
        read_fz_settings(path)


def test_activations_read_back_and_name_the_missing_key(tmp_path):
    path = artifacts.activations_file("2.1", tmp_path)
    with pytest.raises(MissingArtifactError) as error:
        read_activations(path)
    assert one_line(error).startswith(f"{path} is missing") and "`rsi activations`" in str(error.value)
    write_activations(path, an_activations())
    back = read_activations(path)
    assert np.array_equal(back.acts, an_activations().acts) and np.array_equal(back.channels, [4, 7])
    assert (back.weights, back.extractor, back.scale_fraction) == ("RANDOM weights (seed 0)", "taps", 0.5)
    assert back.fz_images == artifacts.FZ_IMAGES and back.numerics == an_activations().numerics
    arrays = dict(np.load(path))
    del arrays["extractor"]
    save_npz(path, **arrays)
    with pytest.raises(ArtifactError) as error:
        read_activations(path, stage="pre-reading")
    message = one_line(error)
    assert message.startswith(f"{path}: no 'extractor', which `rsi pre-reading` always writes")
