"""`rsi rerun-fz`: the authors' re-render of channels whose two Post responses are both <= 0 (DESIGN.md)."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_criteria import make_acts, write_acts

from rsi import artifacts, cli, rerun
from rsi.artifacts import FZ_IMAGES
from rsi.artifacts.activations import read_activations
from rsi.artifacts.criteria import read_criteria_metrics, read_criteria_table
from rsi.artifacts.fz import FZFile, write_fz
from rsi.artifacts.rerun import read_rerun, rerun_file
from rsi.criteria import rerun_hits, with_reruns
from rsi.taps import TAP_KINDS, Tap

POST = TAP_KINDS.index("post")


def test_the_hits_and_the_replacement_of_their_columns():
    # channels 10..13: both Post responses 0 (a hit), only one 0, neither, both 0 again
    acts = make_acts([1.0] * 4, [2.0] * 4, [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0])
    channels = np.arange(10, 14)
    assert rerun_hits(acts, channels).tolist() == [10, 13]
    new = np.full((len(FZ_IMAGES), len(TAP_KINDS), 1), 7.0)
    replaced_acts, replaced = with_reruns(acts, channels, np.array([13]), new)
    assert replaced.tolist() == [False, False, False, True]
    assert (replaced_acts[:, :, 3] == 7.0).all() and np.array_equal(replaced_acts[:, :, :3], acts[:, :, :3])
    with pytest.raises(ValueError, match=r"re-rendered channels \[99\] are not among the block's 4 channels"):
        with_reruns(acts, channels, np.array([99]), new)


def test_each_hit_is_re_rendered_with_the_next_seeds_until_it_escapes(monkeypatch):
    """Seeds seed+1, seed+2, … in turn, only for the channels still hit; the first escape replaces."""
    escapes_at = {3: 6, 5: 7, 8: 99}  # the FZ seed whose rendering escapes (8 never does within 3 tries)
    calls = []

    def rendered(model, tap, fz, channels, seed, weights, device):
        calls.append((tap.kind, list(channels), seed))
        images = np.full((len(channels), 3, 4, 4), seed, dtype=np.uint8)
        return FZFile(images, np.asarray(channels), np.zeros(len(channels)), np.zeros(len(channels)))

    def activations(read, fzs, params, progress):
        seeds = fzs.sources["pre"][0].images[:, 0, 0, 0].astype(int)
        escaped = np.array([seed >= escapes_at[c] for c, seed in zip(fzs.channels, seeds, strict=True)])
        acts = np.zeros((len(FZ_IMAGES), len(TAP_KINDS), len(seeds)), dtype=np.float32)
        acts[FZ_IMAGES.index("pre_fz"), POST] = escaped * seeds  # Post_c(X̂_Pre_c) > 0 once escaped
        return acts

    post = FZFile(np.zeros((10, 3, 4, 4), np.uint8), np.arange(10), np.zeros(10), np.zeros(10))
    monkeypatch.setattr(rerun, "_rendered", rendered)
    monkeypatch.setattr(rerun, "measure_block", activations)
    monkeypatch.setattr(rerun, "read_fz", lambda path: post)
    record = rerun.rerun_block(
        None, "2.1", np.array([3, 5, 8]), None, rerun.ActivationsParams(), None,
        seed=4, tries=3, weights="random:0", device="cpu",
    )  # fmt: skip
    assert calls == [
        ("post", [3, 5, 8], 5), ("pre", [3, 5, 8], 5),  # the In of 2.1 is 2.0's Post FZ
        ("post", [3, 5, 8], 6), ("pre", [3, 5, 8], 6),
        ("post", [5, 8], 7), ("pre", [5, 8], 7),
    ]  # fmt: skip
    assert record.hits.tolist() == [3, 5, 8] and record.tries == 3
    assert record.channels.tolist() == [3, 5] and record.seeds.tolist() == [6, 7]
    assert record.acts[FZ_IMAGES.index("pre_fz"), POST].tolist() == [6.0, 7.0]
    # the escaping renderings' FZs, for the figures
    assert record.in_images[:, 0, 0, 0].tolist() == record.pre_images[:, 0, 0, 0].tolist() == [6, 7]


def _stage_inputs(root: Path, hits: list[int]) -> None:
    """Stage activations' file of block 2.1 (channels 0..5, ``hits`` with both Post responses 0) and a Post
    FZ file, as stages fz and activations write them."""
    n = 6
    post_in = [0.0 if c in hits else 1.0 for c in range(n)]
    write_acts(root, "2.1", make_acts([1.0] * n, [2.0] * n, post_in, post_in), np.arange(n))
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    write_fz(
        artifacts.fz_file(Tap("2.1", "post"), root), FZFile(images, np.arange(n), np.zeros(n), np.zeros(n))
    )


def _params(rerun_fz: int) -> str:
    return yaml.safe_dump(
        {
            "model": {"weights": "random:0", "device": "cpu"},
            "fz": {"steps": 2, "image_size": 32, "batch_channels": 4,
                   "blocks": {"layer2_0": {"taps": ["post"], "jitter": 0},
                              "layer2_1": {"taps": ["pre", "post"], "jitter": 4}}},
            "activations": {"extractor": "taps", "batch_size": 4},
            "criteria": {"blocks": ["layer2_1"], "rerun_fz": rerun_fz},
            "ablate": {"blocks": ["layer2_1"]},
        }
    )  # fmt: skip


def test_the_stage_re_renders_and_the_criteria_use_the_new_activations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rsi"])
    _stage_inputs(Path("outputs"), hits=[1, 4])
    Path("params.yaml").write_text(_params(rerun_fz=0))
    assert cli.main(["rerun-fz"]) == 0 and cli.main(["criteria"]) == 0
    off = read_rerun(rerun_file("2.1"))
    assert off.hits.tolist() == [1, 4] and off.channels.size == 0 and off.tries == 0
    assert read_criteria_metrics().blocks["2.1"]["authors_rerun"] == 2
    assert read_criteria_metrics().blocks["2.1"]["rerun_replaced"] == 0

    Path("params.yaml").write_text(_params(rerun_fz=2))
    assert cli.main(["rerun-fz"]) == 0 and cli.main(["criteria"]) == 0
    record = read_rerun(rerun_file("2.1"))
    assert record.hits.tolist() == [1, 4] and record.tries == 2
    assert set(record.seeds.tolist()) <= {1, 2} and set(record.channels.tolist()) <= {1, 4}
    assert record.channels.size  # random weights: a fresh rendering's Post responses are not both 0
    assert record.in_images.shape == record.pre_images.shape == (record.channels.size, 3, 32, 32)
    assert record.in_images.dtype == np.uint8  # as stage fz stores FZs (fz.storage: uint8)
    assert rerun_hits(record.acts, record.channels).size == 0  # every replacement escapes the case
    metrics = read_criteria_metrics().blocks["2.1"]
    assert metrics["rerun_replaced"] == record.channels.size
    assert metrics["authors_rerun"] == 2  # the hits of the first rendering, replaced or not
    table = read_criteria_table(artifacts.criteria_table("2.1"))
    assert table.channels == list(range(6))
    with open(artifacts.criteria_table("2.1")) as handle:
        rows = {int(row["channel"]): row for row in csv.DictReader(handle)}
    for j, channel in enumerate(record.channels):  # the criteria judged the re-rendered activations
        expected = record.acts[FZ_IMAGES.index("pre_fz"), POST, j]
        assert float(rows[int(channel)]["post_of_pre_fz"]) == pytest.approx(float(expected), rel=1e-6)
    stored = read_activations(artifacts.activations_file("2.1"))
    assert stored.acts[FZ_IMAGES.index("in_fz"), POST, 1] == 0.0  # stage activations' file is untouched


def test_a_re_render_is_not_stage_stabilitys_rendering_of_that_seed(random_model):
    """Stage stability renders seed + 1 with the plain keys: a re-render at seed + 1 draws its own noise and
    transforms (draw_stream), or a replaced channel's verdict would be its seed-1 verdict."""
    from test_fz import tiny

    from rsi import fz as fzmod
    from rsi.fz import TapSpec

    plain = TapSpec.of(Tap("2.1", "pre"), tiny(steps=0), seed=1, weights="random:0")
    rerendered = replace(plain, draw_stream=rerun.RERUN_STREAM)
    images = [
        fzmod._optimise_batch(random_model, s, [3], torch.device("cpu"))[0] for s in (plain, rerendered)
    ]
    assert not np.array_equal(images[0].numpy(), images[1].numpy())
    assert "draw_stream" not in plain.settings() and rerendered.settings()["draw_stream"] == "rerun"
    assert plain.hash() != rerendered.hash()


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"tries": 3}, "was made with criteria.rerun_fz = 3, not 0"),
        ({"hits": np.array([1])}, "lists the hits [1], the activations have [1, 4]"),
    ],
    ids=["other_tries", "other_hits"],
)
def test_criteria_refuses_a_rerun_record_of_another_run(tmp_path, monkeypatch, capsys, record, why):
    from rsi.artifacts.rerun import no_reruns, write_rerun

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rsi"])
    _stage_inputs(Path("outputs"), hits=[1, 4])
    Path("params.yaml").write_text(_params(rerun_fz=0))
    write_rerun(rerun_file("2.1"), replace(no_reruns(np.array([1, 4]), 0), **record))
    assert cli.main(["criteria"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"rsi criteria: error: outputs/rerun/layer2_1.npz {why}: it belongs to another run; run "
        "`rsi rerun-fz` (`dvc repro` does)\n"
    )
