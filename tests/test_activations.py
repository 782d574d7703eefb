"""thingsvision against the copying taps; the FZ reader; `rsi activations` then `rsi criteria` end to end
on a seeded random ResNet18 with tiny FZs made here; `dvc metrics show` reads the metrics file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsi import artifacts, cli
from rsi.activations import (
    ActivationsParams,
    block_activations,
    fz_floats,
    fz_inputs,
    load_block_fzs,
    taps_reader,
    thingsvision_extractor,
    thingsvision_reader,
)
from rsi.artifacts import FZ_IMAGES
from rsi.artifacts.fz import FZFile, read_fz, write_fz
from rsi.config import ParamsError, load_section
from rsi.criteria import eq1_authors_code, eq2_post_ratio
from rsi.runtime import load_npz
from rsi.taps import TAP_KINDS, Tap, center, forward_taps
from rsi.transforms import normalize, scale_crop, shrink_pad

SIDE = 32
BLOCKS = ("2.0", "2.1")
CHANNELS = np.arange(0, 120, 10, dtype=np.int64)  # 12 of the 128 channels of blocks 2.0 and 2.1


@pytest.fixture(scope="module")
def extractor(random_model):
    """thingsvision imported once for the module (it imports TensorFlow: ~10 s)."""
    return thingsvision_extractor(random_model, "cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return normalize(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)))


# ------------------------------------------------------------------------------- thingsvision vs taps


@pytest.mark.parametrize("block", ["1.1", "2.0", "3.1", "4.0"])
def test_thingsvision_equals_copying_taps_exactly(random_model, extractor, images, block):
    taps = [Tap(block, kind) for kind in TAP_KINDS]
    ours = forward_taps(random_model, images, taps, detach=True)
    theirs = thingsvision_reader(extractor)(images, taps)
    for tap in taps:
        assert theirs[tap].shape == ours[tap].shape
        assert torch.equal(theirs[tap], ours[tap]), f"{tap}: thingsvision differs from the copying tap"
    pre, post = theirs[Tap(block, "pre")], theirs[Tap(block, "post")]
    assert (pre < 0).any() and not torch.equal(pre, post)


def test_a_reference_keeping_hook_on_bn2_sees_post_not_pre(random_model, extractor, images):
    kept = {}
    handle = random_model.get_submodule("layer2.1.bn2").register_forward_hook(
        lambda _module, _inputs, output: kept.__setitem__("bn2", output)  # no copy, as lucent's hook
    )
    try:
        with torch.no_grad():
            random_model(images)
    finally:
        handle.remove()
    theirs = thingsvision_reader(extractor)(images, [Tap("2.1", "pre"), Tap("2.1", "post")])
    assert torch.equal(kept["bn2"], theirs[Tap("2.1", "post")])  # the in-place sum and ReLU reached it
    assert not torch.allclose(kept["bn2"], theirs[Tap("2.1", "pre")])


# ------------------------------------------------------------------------------------------ FZ files


def fz_images(count: int, seed: int, dtype: str = "uint8") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, size=(count, 3, SIDE, SIDE), dtype=np.uint8)
    return rng.random((count, 3, SIDE, SIDE), dtype=np.float32)


def write_one_fz(path: Path, images: np.ndarray, channels: np.ndarray) -> None:
    zeros = np.zeros(len(channels), np.float32)
    write_fz(path, FZFile(images, np.asarray(channels), zeros, zeros))


def write_fzs(root: Path, blocks=BLOCKS, channels=CHANNELS) -> None:
    """FZ files in the contract layout for every tap the blocks need (one of them float32)."""
    taps = {t for b in blocks for t in (artifacts.in_fz_source(b), Tap(b, "pre"), Tap(b, "post"))}
    for i, tap in enumerate(sorted(taps)):
        dtype = "float32" if tap == Tap("2.1", "pre") else "uint8"
        write_one_fz(artifacts.fz_file(tap, root), fz_images(len(channels), i, dtype), channels)


def test_fz_floats_uint8_is_value_over_255_and_float_is_as_is(tmp_path):
    write_fzs(tmp_path)
    fz = read_fz(artifacts.fz_file(Tap("2.0", "post"), tmp_path))
    stored = load_npz(artifacts.fz_file(Tap("2.0", "post"), tmp_path))["images"]
    assert torch.equal(fz_floats(fz, np.array([1, 2])), torch.from_numpy(stored[[1, 2]]).float() / 255)
    fz = read_fz(artifacts.fz_file(Tap("2.1", "pre"), tmp_path))
    stored = load_npz(artifacts.fz_file(Tap("2.1", "pre"), tmp_path))["images"]
    assert torch.equal(fz_floats(fz, np.arange(5)), torch.from_numpy(stored[:5]))


def test_block_fzs_use_the_in_fz_source_and_the_scale_transforms(tmp_path):
    write_fzs(tmp_path)
    fzs = load_block_fzs("2.1", tmp_path)
    for block, source in (("2.1", Tap("2.0", "post")), ("2.0", Tap("2.0", "in"))):
        in_fz = load_block_fzs(block, tmp_path).sources["in"][0]
        assert np.array_equal(in_fz.images, read_fz(artifacts.fz_file(source, tmp_path)).images)
    raw = fz_floats(fzs.sources["in"][0], np.arange(5))
    batch = slice(1, 4)
    torch.testing.assert_close(fz_inputs(fzs, "in_fz", batch), normalize(raw[batch]), rtol=0, atol=0)
    torch.testing.assert_close(
        fz_inputs(fzs, "scaled_in_fz", batch), scale_crop(normalize(raw[batch]), 0.5), rtol=0, atol=0
    )
    pre = fz_floats(fzs.sources["pre"][0], np.arange(5))
    torch.testing.assert_close(
        fz_inputs(fzs, "shrunk_pre_fz", batch), shrink_pad(normalize(pre[batch]), SIDE // 2), rtol=0, atol=0
    )


def test_block_fzs_keep_the_channels_every_file_holds(tmp_path, capsys):
    write_fzs(tmp_path)
    write_one_fz(artifacts.fz_file(Tap("2.1", "post"), tmp_path), fz_images(3, 9), np.array([110, 30, 0]))
    fzs = load_block_fzs("2.1", tmp_path)
    assert fzs.channels.tolist() == [0, 30, 110]
    assert fzs.sources["post"][1].tolist() == [2, 1, 0]
    assert "using the 3 channels" in capsys.readouterr().err


def test_block_activations_pick_each_channels_own_image(random_model, tmp_path):
    write_fzs(tmp_path)
    fzs = load_block_fzs("2.1", tmp_path)
    acts = block_activations(taps_reader(random_model), fzs, batch_size=5, progress=False)
    assert acts.shape == (len(FZ_IMAGES), len(TAP_KINDS), len(CHANNELS))
    taps = [Tap("2.1", kind) for kind in TAP_KINDS]
    everything = slice(0, len(CHANNELS))
    for i, image in enumerate(FZ_IMAGES):
        values = forward_taps(random_model, fz_inputs(fzs, image, everything), taps, detach=True)
        for t, tap in enumerate(taps):
            expected = center(values[tap])[torch.arange(len(CHANNELS)), torch.from_numpy(CHANNELS)]
            np.testing.assert_allclose(acts[i, t], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_block_activations_thingsvision_equals_taps(random_model, extractor, tmp_path):
    write_fzs(tmp_path)
    fzs = load_block_fzs("2.1", tmp_path)
    ours = block_activations(taps_reader(random_model), fzs, batch_size=3, progress=False)
    theirs = block_activations(thingsvision_reader(extractor), fzs, batch_size=3, progress=False)
    np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------------------------------ the stages

PARAMS = """\
model: {{weights: "random:0", device: cpu}}
activations: {{extractor: {extractor}, batch_size: 8}}
criteria:
  blocks: [layer2_0, "2.1"]
  eq2_low: 2/3
  eq2_high: 3/2
ablate: {{blocks: ["2.1"]}}
"""


def run_cli(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["rsi"])
    return cli.main(list(argv))


def test_activations_then_criteria_end_to_end(random_model, extractor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(PARAMS.format(extractor="thingsvision"))
    write_fzs(artifacts.OUTPUTS)
    assert run_cli(monkeypatch, "activations", "--params", "params.yaml") == 0
    assert run_cli(monkeypatch, "rerun-fz") == 0  # criteria.rerun_fz 0: lists the channels hit only
    assert run_cli(monkeypatch, "criteria") == 0

    metrics = json.loads(Path("metrics/criteria.json").read_text())
    passing = json.loads(Path("outputs/criteria/passing.json").read_text())
    assert list(metrics) == ["layer2_0", "layer2_1", "total"]
    assert list(passing) == list(BLOCKS)
    totals = dict.fromkeys(("channels", "passing", "eq1_pass", "eq2_pass", "eq2_nonpositive"), 0)
    for block in BLOCKS:
        data = load_npz(artifacts.activations_file(block))
        assert str(data["weights"]).startswith("RANDOM") and str(data["extractor"]) == "thingsvision"
        acts, channels = data["acts"], data["channels"]
        np.testing.assert_array_equal(channels, CHANNELS)

        def act(image, tap, acts=acts):
            return acts[FZ_IMAGES.index(image), TAP_KINDS.index(tap)]

        # criteria.eq1_reading defaults to the authors' code: the difference over Pre_c(X̂_Pre_c)
        eq1 = eq1_authors_code(act("in_fz", "pre"), act("scaled_in_fz", "pre"), act("pre_fz", "pre"))
        eq2 = eq2_post_ratio(act("in_fz", "post"), act("pre_fz", "post"), 2 / 3, 3 / 2)
        passes = eq1 & eq2.passes
        expected = {
            "channels": len(channels),
            "passing": int(passes.sum()),
            "percent": round(100 * int(passes.sum()) / len(channels), 4),
            "eq1_pass": int(eq1.sum()),
            "eq2_pass": int(eq2.passes.sum()),
            "eq2_nonpositive": int(eq2.nonpositive.sum()),
        }
        got = metrics[f"layer{block.replace('.', '_')}"]
        assert {k: got[k] for k in expected} == expected
        assert passing[block] == [int(c) for c in channels[passes]]
        for key in totals:
            totals[key] += expected[key]
        # the stored activations are the taps' values (thingsvision and the copying hooks agree)
        reference = block_activations(
            taps_reader(random_model), load_block_fzs(block), batch_size=3, progress=False
        )
        np.testing.assert_array_equal(acts, reference)
    assert {k: metrics["total"][k] for k in totals} == totals
    assert all(metrics["total"][k] > 0 for k in ("eq1_pass", "eq2_pass", "eq2_nonpositive"))  # non-trivial
    table = Path("outputs/criteria/layer2_1.csv").read_text().splitlines()
    assert len(table) == 1 + len(CHANNELS) and table[0].startswith("channel,pre_of_in_fz,")

    # DVC reads the metrics file as it is
    Path("dvc.yaml").write_text("metrics:\n  - metrics/criteria.json\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q", "--no-scm"], check=True, env=env)
    shown = subprocess.run(
        [dvc, "metrics", "show", "--json"], check=True, env=env, capture_output=True, text=True
    )
    data = json.loads(shown.stdout)
    assert data[""]["data"]["metrics/criteria.json"]["data"] == metrics


def test_activations_extractor_taps_and_block_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(PARAMS.format(extractor="taps"))
    write_fzs(Path("runs/seed1"), blocks=("2.0",))
    assert run_cli(monkeypatch, "activations", "--outputs", "runs/seed1", "--block", "layer2_0") == 0
    data = load_npz(artifacts.activations_file("2.0", Path("runs/seed1")))
    assert data["acts"].shape == (len(FZ_IMAGES), len(TAP_KINDS), len(CHANNELS))
    assert str(data["extractor"]) == "taps"
    assert not artifacts.activations_file("2.1", Path("runs/seed1")).exists()


def test_activations_names_the_missing_fz_file_and_its_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(PARAMS.format(extractor="taps"))
    write_fzs(artifacts.OUTPUTS)
    artifacts.fz_file(Tap("2.0", "post")).unlink()
    assert run_cli(monkeypatch, "activations", "--block", "2.1") == 2
    error = capsys.readouterr().err
    line = error.strip().splitlines()[-1]  # the In FZ of 2.1 is 2.0's Post: its file and its stage
    assert line.startswith("rsi activations: error: outputs/fz/layer2_0/post.npz is missing")
    # the stage that writes it is 2.0's own, and the block must be listed in fz.blocks for it to exist
    assert "written by `rsi fz --block 2.0` (DVC stage 'fz@layer2_0'); list post under " in line
    assert line.endswith("fz.blocks.layer2_0.taps in the params file and run `dvc repro` first")
    assert not artifacts.activations_file("2.1").exists()


def test_activations_params():
    assert ActivationsParams() == ActivationsParams("thingsvision", 64, 0.5, 0.5)
    params = load_section(
        {"activations": {"extractor": "taps", "scale_fraction": 0.25}}, "activations", ActivationsParams
    )
    assert params.extractor == "taps" and params.scale_fraction == 0.25
    assert load_section({"activations": {"shrink_fraction": 0.34}}, "activations", ActivationsParams)
    for bad, message in [
        ({"extractor": "lucent"}, "one of"),
        ({"scale_fraction": 0}, "fraction"),
        ({"shrink_fraction": 0.33}, r"\(1/3, 1\]: the shrunk image is reflect-padded"),
        ({"batch_size": 0}, ">= 1"),
    ]:
        with pytest.raises(ParamsError, match=message):
            load_section({"activations": bad}, "activations", ActivationsParams)


@pytest.mark.parametrize("stage", ["fz", "stability", "pre-reading"])
def test_a_missing_fz_names_the_stage_that_writes_it_under_that_root(tmp_path, stage):
    """stability and pre-reading measure their own FZs: a missing one names them, not `rsi fz`."""
    from rsi.activations import require_block_fzs

    with pytest.raises(FileNotFoundError, match=rf"is missing: it is written by `rsi {stage}[` ]"):
        require_block_fzs("2.1", tmp_path, stage)
