"""model.arch across the stages: block names checked against the arch, the ResNet34/50 profiles, FZ settings
that keep resnet18's bytes, and reports that name the arch and say "not in the paper"."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsi import fz
from rsi.ablate_params import AblateParams
from rsi.activations import ActivationsParams
from rsi.channel_plan import FiguresParams
from rsi.config import ParamsError, load_section
from rsi.criteria import CriteriaParams
from rsi.demo_params import demo_params
from rsi.labels import RunLabels
from rsi.natural import NaturalParams
from rsi.paper import REFERENCE
from rsi.report import NOT_IN_PAPER, _banner, _criteria_section, paper_for
from rsi.runtime import ModelParams
from rsi.taps import Tap, block_key, block_names

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {
    "model": ModelParams,
    "fz": fz.FZParams,
    "activations": ActivationsParams,
    "criteria": CriteriaParams,
    "natural": NaturalParams,
    "ablate": AblateParams,
    "figures": FiguresParams,
}


def test_block_lists_are_checked_against_model_arch():
    raw = {"model": {"arch": "resnet34"}, "criteria": {"blocks": ["layer3_5", "1.2"]}}
    assert load_section(raw, "criteria", CriteriaParams).blocks == ("3.5", "1.2")
    raw["model"]["arch"] = "resnet18"
    with pytest.raises(ParamsError) as caught:
        load_section(raw, "criteria", CriteriaParams)
    assert str(caught.value) == (
        "params.yaml: criteria.blocks = ['layer3_5', '1.2'] is not allowed: unknown block 'layer3_5': blocks "
        "of resnet18 are 1.0, 1.1, 2.0, 2.1, 3.0, 3.1, 4.0, 4.1 (or layerL_K)"
    )


def test_fz_block_keys_follow_the_arch():
    blocks = {
        "layer3_4": {"taps": ["post"], "jitter": 16},
        "layer3_5": {"taps": ["pre", "post"], "jitter": 16},
    }
    raw = {"model": {"arch": "resnet34"}, "fz": {"blocks": blocks}}
    assert set(fz.load_fz_params(raw).blocks) == {"layer3_4", "layer3_5"}
    with pytest.raises(
        ParamsError,
        match="unknown block key 'layer3_4': keys of resnet18 are layer1_0, "
        "layer1_1, layer2_0, layer2_1, layer3_0, layer3_1, layer4_0, layer4_1",
    ):
        fz.load_fz_params({"fz": {"blocks": blocks}})


def test_an_unknown_arch_is_refused_by_any_section_that_names_blocks():
    with pytest.raises(
        ParamsError, match="model.arch = 'resnet20' is not allowed: expected one of resnet18, "
    ):
        load_section({"model": {"arch": "resnet20"}}, "criteria", CriteriaParams)


def test_unquoted_yaml_floats_that_lose_a_block_are_refused():
    """YAML reads 3.10 as 3.1: in resnet101 (3.0…3.22) that is ambiguous, in resnet18 2.1 is not."""
    with pytest.raises(ParamsError, match="3.1 is ambiguous in resnet101: YAML reads an unquoted 3.10"):
        load_section({"model": {"arch": "resnet101"}, "natural": {"blocks": [3.1]}}, "natural", NaturalParams)
    assert load_section({"natural": {"blocks": [2.1]}}, "natural", NaturalParams).blocks == ("2.1",)


def _jitter(block: str) -> int:
    """The ResNet18 rule (params.yaml), carried over by stage."""
    layer, index = map(int, block.split("."))
    return {1: 0, 2: 0 if index == 0 else 4, 3: 4 if index == 0 else 16, 4: 16}[layer]


@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_profiles_overlay_params_yaml_with_every_block_of_their_arch(arch):
    params = demo_params(REPO / f"params.{arch}.yaml", base_file=REPO / "params.yaml")
    loaded = {name: load_section(params, name, cls) for name, cls in SECTIONS.items()}
    assert loaded["model"].arch == arch and loaded["model"].weights == "torchvision"
    names = block_names(arch)
    blocks = loaded["fz"].blocks
    assert list(blocks) == [block_key(b) for b in names]
    for block in names:
        expected = (
            ("post",)
            if block == "1.0"
            else ("in", "pre", "post")
            if block.endswith(".0")
            else ("pre", "post")
        )
        assert blocks[block_key(block)].taps == expected, block
        assert blocks[block_key(block)].jitter == _jitter(block), block
    assert loaded["criteria"].blocks == loaded["natural"].blocks == names[1:]
    assert set(loaded["ablate"].screening) == set(loaded["ablate"].blocks) == {"2.1", "3.1"}
    assert loaded["fz"].steps == 2560 and loaded["fz"].lr == 0.05  # params.yaml's paper settings kept
    # the rule reproduces params.yaml's own resnet18 blocks
    base = fz.load_fz_params(demo_params(REPO / "params.yaml", base_file=REPO / "params.yaml")).blocks
    assert {key: value.jitter for key, value in base.items()} == {
        block_key(b): _jitter(b) for b in block_names()
    }


def test_fz_settings_name_the_arch_only_when_it_is_not_resnet18():
    """resnet18's settings files and resume hashes leave the arch out; another arch never shares them."""
    params = fz.FZParams()
    paper = fz.TapSpec.of(Tap("2.1", "pre"), params, seed=0, weights="random:0")
    assert "arch" not in paper.settings() and "arch" not in paper.describe()
    assert set(paper.settings()) == {
        "block", "kind", "seed", "weights", "steps", "lr", "image_size", "transforms", "jitter",
        "pre_reading", "storage", "tf32", "batch_channels", "cuda_backward", "objective",
    }  # fmt: skip
    other = fz.TapSpec.of(Tap("2.1", "pre"), params, seed=0, weights="random:0", arch="resnet50")
    assert other.settings()["arch"] == "resnet50"
    assert other.hash() != paper.hash()
    assert "(module layer2.1.bn3)" in other.describe()["objective"]
    assert "(module layer2.1.bn2)" in paper.describe()["objective"]


def test_the_report_names_the_arch_and_has_no_paper_numbers_for_it():
    labels = RunLabels("random:0", True, False, "resnet34")
    banner = "\n".join(_banner(labels, None))
    assert "a seeded random ResNet34" in banner and "**RESNET34**" in banner
    paper = paper_for("resnet34")
    criteria = {"1.2": {"channels": 64, "passing": 3, "percent": 4.6875, "eq1_pass": 5, "eq2_pass": 9}}
    table = "\n".join(_criteria_section(criteria, None, paper, arch="resnet34"))
    assert f"| 1.2 | {NOT_IN_PAPER} | 3 | 64 of 64 | {NOT_IN_PAPER} |" in table
    assert "| 2.1 |" not in table  # the paper's ResNet18 rows are not shown beside another network
    assert paper_for("resnet18") == REFERENCE
    assert "RESNET" not in "\n".join(_banner(RunLabels("torchvision", False, False), 100))


def test_published_channel_sets_are_resnet18_only():
    """The authors' lists name ResNet18 channels: ablating them in another network is refused up front."""
    raw = {"model": {"arch": "resnet34"}, "ablate": {"channel_sets": ["run", "published"]}}
    with pytest.raises(ParamsError, match=r"model.arch is resnet34: set ablate.channel_sets: \[run\]"):
        load_section(raw, "ablate", AblateParams)
    raw["ablate"]["channel_sets"] = ["run"]
    assert load_section(raw, "ablate", AblateParams).channel_sets == ("run",)
