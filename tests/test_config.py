"""Every kind of bad params value gives one clear error naming the file, key, value and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from rsi.config import ParamsError, as_dict, check_blocks, load_section, read_params
from rsi.runtime import ModelParams


@dataclass(frozen=True)
class Inner:
    jitter: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class Section:
    steps: int = field(default=10, metadata={"min": 1})
    lr: float = 0.05
    mode: Literal["exact", "lucent_reference"] = "exact"
    blocks: tuple[str, ...] = field(default=("2.1",), metadata={"check": check_blocks})
    per_block: dict[str, Inner] = field(default_factory=dict)
    flag: bool = False


def load(section: dict) -> Section:
    return load_section({"s": section}, "s", Section)


def test_defaults_and_conversion():
    assert load({}) == Section()
    got = load({"lr": 1, "blocks": ["layer3_1", "2.0"], "per_block": {"layer2_1": {"jitter": 4}}})
    assert got.lr == 1.0 and isinstance(got.lr, float)
    assert got.blocks == ("3.1", "2.0")
    assert got.per_block == {"layer2_1": Inner(jitter=4)}
    assert as_dict(got)["blocks"] == ["3.1", "2.0"]


@dataclass(frozen=True)
class WithOptional:
    download: Inner | None = None


def test_explicit_null_of_an_optional_section_is_null_not_its_defaults():
    # `data.download: null` in params.yaml once became the default download (Imagenette) instead of none
    assert load_section({"s": {"download": None}}, "s", WithOptional).download is None
    assert load_section({"s": {}}, "s", WithOptional).download is None
    assert load_section({"s": {"download": {}}}, "s", WithOptional).download == Inner()
    assert load_section({"s": {"download": {"jitter": 2}}}, "s", WithOptional).download == Inner(jitter=2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_floats_must_be_finite(value):
    with pytest.raises(ParamsError, match=r"s\.lr = (nan|inf) is not allowed: expected a finite number"):
        load({"lr": value})


def test_unquoted_block_numbers_are_block_names_everywhere():
    from rsi.ablate import AblateParams
    from rsi.natural import NaturalParams

    raw = yaml.safe_load("ablate: {blocks: [2.1, 3.1]}\nnatural: {blocks: [3.0, layer4_1]}")
    assert load_section(raw, "ablate", AblateParams).blocks == ("2.1", "3.1")
    assert load_section(raw, "natural", NaturalParams).blocks == ("3.0", "4.1")


def test_null_entry_of_a_mapping_of_sections_is_an_error_not_defaults():
    with pytest.raises(
        ParamsError, match=r"s\.per_block\.layer3_1 = None is not allowed: expected a mapping"
    ):
        load({"per_block": {"layer3_1": None}})


def test_paper_params_download_nothing_and_name_the_missing_imagenet(tmp_path, monkeypatch):
    from rsi import data

    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    params = load_section(read_params(repo_params), "data", data.DataParams)
    assert params.download is None
    monkeypatch.chdir(tmp_path)
    missing = data.DataParams(root=str(tmp_path / "imagenet" / "val"))
    monkeypatch.setattr(data, "fetch_download", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    with pytest.raises(data.DataError, match=r"data\.root = '.*imagenet/val': no such folder"):
        data.prepare(missing, tmp_path / "eval", progress=False)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"stepz": 3}, "params.yaml: unknown key s.stepz; allowed keys of s: steps, lr, mode"),
        ({"steps": "many"}, "params.yaml: s.steps = 'many' is not allowed: expected an integer"),
        ({"steps": 2.5}, "s.steps = 2.5 is not allowed: expected an integer"),
        ({"steps": True}, "s.steps = True is not allowed: expected an integer"),
        ({"steps": 0}, "s.steps = 0 is not allowed: expected a value >= 1"),
        ({"lr": "fast"}, "s.lr = 'fast' is not allowed: expected a finite number"),
        ({"mode": "lucent"}, "s.mode = 'lucent' is not allowed: expected one of 'exact', 'lucent_reference'"),
        ({"blocks": ["2.1", "5.3"]}, "s.blocks = ('2.1', '5.3') is not allowed: unknown block '5.3'"),
        ({"blocks": ["2.1", "layer2_1"]}, "a block is listed twice"),
        ({"blocks": "2.1"}, "s.blocks = '2.1' is not allowed: expected a list of str"),
        ({"per_block": {"layer2_1": {"jitter": -1}}}, "s.per_block.layer2_1.jitter = -1"),
        ({"per_block": {"layer2_1": {"jiter": 4}}}, "unknown key s.per_block.layer2_1.jiter"),
        ({"flag": "yes"}, "s.flag = 'yes' is not allowed: expected true or false"),
    ],
)
def test_bad_values_name_key_value_and_allowed(section, message):
    with pytest.raises(ParamsError) as error:
        load(section)
    assert message in str(error.value)


def test_section_must_be_a_mapping():
    with pytest.raises(ParamsError, match="s = 3 is not allowed: expected a mapping with keys steps"):
        load_section({"s": 3}, "s", Section)


def test_model_device_check():
    assert load_section({"model": {"device": "cuda:1"}}, "model", ModelParams).device == "cuda:1"
    with pytest.raises(ParamsError, match="model.device = 'gpu' is not allowed: expected 'auto'"):
        load_section({"model": {"device": "gpu"}}, "model", ModelParams)


def test_read_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        read_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fz: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        read_params(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        read_params(listing)
