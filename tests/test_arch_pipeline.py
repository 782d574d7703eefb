"""`dvc repro` of the resnet34 profile, demo-sized (random weights, generated images, one block that only
resnet34 has), through every stage, with the arch named in the FZ settings, dvc.lock and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_pipeline import git_workspace, ran_stages, run

from rsi.demo_params import demo_params

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tiny_resnet34_params() -> dict:
    """params.resnet34.yaml offline, cut to block 1.2 (absent from resnet18; its In is 1.1's Post)."""
    params = demo_params(REPO / "params.resnet34.yaml", base_file=REPO / "params.yaml", offline=True)
    params["fz"].update(steps=2, image_size=32, max_channels=2, batch_channels=2)
    params["fz"]["blocks"] = {
        "layer1_1": {"taps": ["post"], "jitter": 0},
        "layer1_2": {"taps": ["pre", "post"], "jitter": 0},
    }
    params["data"]["generated"] = {"classes": 2, "per_class": 2, "size": 64}
    params["activations"]["extractor"] = "taps"
    for section in ("criteria", "natural", "figures"):
        params[section]["blocks"] = ["layer1_2"]
    params["natural"]["batch_size"] = 4
    params["ablate"].update(blocks=["layer1_2"], percents=[50], trials=2, max_attempts=4, batch_size=4)
    params["ablate"]["screening"] = {"layer1_2": {"rule": "within", "tolerance": 100.0}}
    params["figures"]["channels"] = {"layer1_2": [0]}
    return params


@pytest.fixture(scope="module")
def resnet34_run(tmp_path_factory) -> tuple[Path, str]:
    root = git_workspace(tmp_path_factory.mktemp("resnet34"), tiny_resnet34_params())
    return root, run(["dvc", "repro"], root)


def test_a_resnet34_profile_runs_every_stage_labelled_with_its_arch(resnet34_run):
    root, log = resnet34_run
    assert ran_stages(log) == {
        "prepare-data", "fz@layer1_1", "fz@layer1_2", "activations", "stability@0", "rerun-fz", "criteria",
        "pre-reading", "natural", "natural-criteria", "ablate", "whole-channel", "figures", "report",
    }  # fmt: skip
    settings = json.loads((root / "outputs/fz/layer1_2/settings.json").read_text())
    assert settings["weights_label"] == "resnet34 RANDOM WEIGHTS (not the paper's model)"
    assert settings["taps"]["pre"]["arch"] == "resnet34"
    assert "(module layer1.2.bn2)" in settings["taps"]["pre"]["objective"]
    assert json.loads((root / "metrics/criteria.json").read_text())["layer1_2"]["channels"] == 2
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for stage in ("fz@layer1_2", "activations", "natural", "natural-criteria", "ablate", "figures", "report"):
        assert lock[stage]["params"]["params.yaml"]["model.arch"] == "resnet34", stage
    report = (root / "outputs/report.md").read_text()
    assert report.startswith("# Scale invariance in the residual stream of ResNet34: reproduced vs paper")
    assert "**RESNET34**" in report and "a seeded random ResNet34" in report
    assert "| 1.2 | not in the paper |" in report
    assert (root / "outputs/figures/fig1_layer1_2_c000.png").is_file()
