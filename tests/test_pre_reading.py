"""`rsi pre-reading` by hand: what it needs from the other stages, named."""

from __future__ import annotations

from pathlib import Path

import yaml

from rsi.cli import main


def test_a_further_seeds_missing_fzs_name_stage_stability(tmp_path, monkeypatch, capsys):
    """With criteria.seeds [0, 1], seed 1's In and Post FZs are stage stability's: run by hand before
    it, pre-reading says so before it renders anything."""
    params = {
        "seed": 0,
        "model": {"weights": "random:0", "device": "cpu"},
        "fz": {
            "steps": 2,
            "image_size": 32,
            "max_channels": 2,
            "batch_channels": 2,
            "blocks": {
                "layer2_0": {"taps": ["post"], "jitter": 0},
                "layer2_1": {"taps": ["pre", "post"], "jitter": 4},
            },
        },
        "activations": {"extractor": "taps"},
        "criteria": {"blocks": ["layer2_1"], "seeds": [0, 1], "compare_pre_readings": True},
    }
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["fz", "--block", "all", "--no-progress"]) == 0
    assert main(["pre-reading"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "rsi pre-reading: error: outputs/stability/seed1/fz/layer2_0/post.npz is missing: stage stability@1 "
        "writes it (criteria.seeds lists 1); run `dvc repro stability@1` (or `rsi stability --seed 1`) first"
    )
    assert not Path("outputs/reference/fz").exists()  # before any rendering
