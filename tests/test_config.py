"""Every kind of bad params value gives one clear error naming the file, key, value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from rsi.config import ParamsError, as_dict, check_blocks, load_section, read_params
from rsi.fz import FZParams, load_fz_params
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
    from rsi.ablate_params import AblateParams
    from rsi.natural_params import NaturalParams

    raw = yaml.safe_load("ablate: {blocks: [2.1, 3.1]}\nnatural: {blocks: [3.0, layer4_1]}")
    assert load_section(raw, "ablate", AblateParams).blocks == ("2.1", "3.1")
    assert load_section(raw, "natural", NaturalParams).blocks == ("3.0", "4.1")


def test_keys_read_below_the_stages_load_as_their_sections_do():
    """natural.blocks (for ablate) and activations.scale_fraction (for natural-criteria) are read by
    rsi.config with the checks and defaults of rsi.natural_params.NaturalParams and
    rsi.activations.ActivationsParams, ignoring the section's other keys."""
    from rsi.activations import ActivationsParams
    from rsi.config import PROBED_BLOCKS, load_scale_fraction, natural_blocks
    from rsi.natural_params import NaturalParams

    raw = yaml.safe_load(
        "natural: {blocks: [3.0, layer4_1], k: 3}\nactivations: {scale_fraction: 0.25, batch_size: 8}"
    )
    assert natural_blocks(raw) == load_section(raw, "natural", NaturalParams).blocks == ("3.0", "4.1")
    assert (
        load_scale_fraction(raw) == load_section(raw, "activations", ActivationsParams).scale_fraction == 0.25
    )
    assert natural_blocks({}) == NaturalParams().blocks == PROBED_BLOCKS
    assert load_scale_fraction({}) == ActivationsParams().scale_fraction == 0.5
    with pytest.raises(
        ParamsError,
        match=r"x.yaml: activations.scale_fraction = 0.0 is not allowed: expected a fraction of the image",
    ):
        load_scale_fraction({"activations": {"scale_fraction": 0}}, source="x.yaml")
    with pytest.raises(ParamsError, match=r"natural.blocks.*listed twice"):
        natural_blocks({"natural": {"blocks": ["2.1", "layer2_1"]}})


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


def test_a_missing_imagenet_names_the_params_file_the_key_and_the_fix(tmp_path, monkeypatch, capsys):
    from rsi import cli

    (tmp_path / "run.yaml").write_text("data: {root: nowhere/val}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare-data", "--params", "run.yaml"]) == 2
    assert capsys.readouterr().err == (
        "rsi prepare-data: error: run.yaml: data.root = 'nowhere/val': no such folder (class folders "
        "<root>/<wnid>/*.JPEG): mount ImageNet's validation set there (docker run -v "
        "$IMAGENET:/data/imagenet, README 'Data and weights') or set data.root to where it is\n"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"stepz": 3},
            "params.yaml: unknown key s.stepz (did you mean s.steps?); allowed keys of s: steps, lr, mode",
        ),
        ({"xyz": 3}, "params.yaml: unknown key s.xyz; allowed keys of s: steps, lr, mode"),
        ({"steps": "many"}, "params.yaml: s.steps = 'many' is not allowed: expected an integer"),
        ({"steps": 2.5}, "s.steps = 2.5 is not allowed: expected an integer"),
        ({"steps": True}, "s.steps = True is not allowed: expected an integer"),
        ({"steps": 0}, "s.steps = 0 is not allowed: expected a value >= 1"),
        ({"lr": "fast"}, "s.lr = 'fast' is not allowed: expected a finite number"),
        ({"mode": "lucent"}, "s.mode = 'lucent' is not allowed: expected one of 'exact', 'lucent_reference'"),
        ({"blocks": ["2.1", "5.3"]}, "s.blocks = ['2.1', '5.3'] is not allowed: unknown block '5.3'"),
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


def test_a_random_network_needs_a_whole_number_seed():
    """random:abc was taken for a file name and failed only when a stage loaded it ("no such file")."""
    assert load_section({"model": {"weights": "random:7"}}, "model", ModelParams).weights == "random:7"
    assert load_section({"model": {"weights": "data/w.pth"}}, "model", ModelParams).weights == "data/w.pth"
    with pytest.raises(ParamsError) as error:
        load_section({"model": {"weights": "random:abc"}}, "model", ModelParams)
    assert str(error.value) == (
        "params.yaml: model.weights = 'random:abc' is not allowed: a random network's seed is a whole number"
        " >= 0: random:<seed>, e.g. random:0"
    )


def test_an_fz_block_key_with_a_dot_is_refused_before_dvc_fails_on_it():
    """`dvc repro` stage fz@2.1 declares fz.blocks.2.1, which DVC reads as nesting and cannot find."""
    with pytest.raises(ParamsError) as error:
        load_fz_params({"fz": {"blocks": {"2.1": {"taps": ["pre"], "jitter": 4}}}})
    assert "block key '2.1' has a dot, which DVC reads as nesting" in str(error.value)
    assert str(error.value).endswith("write it as layer2_1")
    assert list(load_fz_params({"fz": {"blocks": {"layer2_1": {"taps": ["pre"], "jitter": 4}}}}).blocks) == [
        "layer2_1"
    ]


def test_model_device_check():
    assert load_section({"model": {"device": "cuda:1"}}, "model", ModelParams).device == "cuda:1"
    with pytest.raises(ParamsError, match="model.device = 'gpu' is not allowed: expected 'auto'"):
        load_section({"model": {"device": "gpu"}}, "model", ModelParams)


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """`dvc exp run -S fz.lr=0.00005` writes ``5e-05`` (ruamel, YAML 1.2): a float for DVC, and for rsi
    too (PyYAML's YAML 1.1 read a string, and rsi refused it); ``yes`` is no boolean in YAML 1.2."""
    path = tmp_path / "params.yaml"
    path.write_text("fz:\n  lr: 5e-05\n  tf32: yes\n")
    assert read_params(path) == {"fz": {"lr": 5e-05, "tf32": "yes"}}
    with pytest.raises(ParamsError, match=r"fz.tf32 = 'yes' is not allowed"):
        load_section(read_params(path), "fz", FZParams)
    path.write_text("fz:\n  lr: 0.05\n  steps: 8\n  lr: 0.1\n")  # PyYAML kept the last one silently
    with pytest.raises(ParamsError) as error:
        read_params(path)
    assert str(error.value) == (
        f"{path}: line 4: key 'lr' is given twice (also on line 2); DVC refuses such a file too: keep one"
    )


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


# ----------------------------------------------------------------------------------------------- the CLI

REPO = Path(__file__).resolve().parents[1]


def test_every_section_of_the_shipped_params_is_known_and_every_known_one_loads():
    from rsi import cli

    for name in ("params.yaml", "params.demo.yaml"):
        assert set(yaml.safe_load((REPO / name).read_text())) <= set(cli.SECTIONS), name
    cli.validate_params(str(REPO / "params.yaml"))  # the registry's targets all exist and accept the paper


def test_the_demo_params_file_reads_back_as_the_same_values(tmp_path, capsys):
    """rsi.demo_params writes YAML 1.2, as DVC and rsi read it: PyYAML wrote the string ``1e5`` bare, a
    float for YAML 1.2, so the demo would have computed with another value than its profile gave."""
    from rsi import demo_params as module
    from rsi.config import dump_dvc_yaml

    values = {"model": {"weights": "1e5", "device": "cpu"}, "fz": {"lr": 5e-05, "tf32": False}, "n": None}
    (tmp_path / "values.yaml").write_text(dump_dvc_yaml(values))
    assert read_params(tmp_path / "values.yaml") == values
    assert list(read_params(tmp_path / "values.yaml")) == ["model", "fz", "n"]  # its own key order
    module.main(["--base", str(REPO / "params.yaml"), str(REPO / "params.demo.yaml"), "--offline"])
    (tmp_path / "demo.yaml").write_text(capsys.readouterr().out)
    expected = module.demo_params(REPO / "params.demo.yaml", base_file=REPO / "params.yaml", offline=True)
    assert read_params(tmp_path / "demo.yaml") == expected


@pytest.mark.parametrize("offline", [False, True])
def test_the_demo_profiles_pass_the_whole_file_validation(tmp_path, offline):
    from rsi import cli
    from rsi.demo_params import demo_params

    params = demo_params(REPO / "params.demo.yaml", base_file=REPO / "params.yaml", offline=offline)
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(params))
    cli.validate_params(str(tmp_path / "demo.yaml"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (  # a misspelled section was ignored: its stage ran the paper defaults
            lambda p: p.update(fzz=p.pop("fz")),
            "bad.yaml: unknown section 'fzz' (did you mean fz?); known sections: seed, model, fz,",
        ),
        (lambda p: p.update(critera={}), "bad.yaml: unknown section 'critera' (did you mean criteria?)"),
        (lambda p: p.update(xyzzy=1), "bad.yaml: unknown section 'xyzzy' (is it misspelled?)"),
        (  # these failed only when the criteria / ablate stage ran, after prepare-data and every FZ
            lambda p: p["criteria"].update(eq2_low="3/2", eq2_high="2/3"),
            "bad.yaml: criteria.eq2_low = 1.5 must be below criteria.eq2_high = 0.666667",
        ),
        (
            lambda p: p["ablate"].update(percents=[10, 150]),
            "bad.yaml: ablate.percents = [10, 150] is not allowed: expected a value <= 99",
        ),
        (lambda p: p["ablate"].update(percents=[0]), "bad.yaml: ablate.percents = [0] is not allowed"),
        (lambda p: p.update(seed=-1), "bad.yaml: seed = -1 is not allowed"),
        (  # a check on a mapping of sections names the entry, not the dataclasses' reprs
            lambda p: p["fz"].update(blocks={"layer2_1": {"taps": ["in", "post"], "jitter": 4}}),
            "bad.yaml: fz.blocks is not allowed: layer2_1: the In of block 2.1 is block 2.0's Post",
        ),
    ],
)
def test_any_bad_section_stops_every_stage_before_it_computes(tmp_path, monkeypatch, capsys, edit, message):
    from rsi import cli, data

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "run", lambda args: pytest.fail("prepare-data ran on a bad params file"))
    assert cli.main(["prepare-data", "--params", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rsi prepare-data: error: {message}") and err.count("\n") == 1, err
    assert "BlockFZParams" not in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(seed=1),
         "criteria.seeds[0] = 0 must be the main run's seed (seed: 1); list the main seed first"),
        (lambda p: p["fz"]["blocks"].pop("layer3_0"),
         "criteria.blocks lists 3.0, whose X̂_In is the FZ of 3.0/in, which fz.blocks does not render: add in "
         "to fz.blocks.layer3_0.taps, or remove 3.0 from criteria.blocks"),
        (lambda p: p["fz"]["blocks"]["layer3_0"].update(taps=["in", "pre"]),  # 3.0's Post is 3.1's In
         "criteria.blocks lists 3.0, whose X̂_Post is the FZ of 3.0/post, which fz.blocks does not render"),
        (lambda p: p["criteria"].update(blocks=["layer2_1"]),
         "ablate.blocks lists 3.1, which criteria.blocks does not probe, so it has no passing channels to "
         "ablate (ablate.channel_sets has run): add them to criteria.blocks, or remove them from ablate.blocks"),
        (lambda p: p["natural"].update(blocks=["layer2_1"]),
         "ablate.blocks lists 3.1, whose mean activations the natural stage does not measure (natural.blocks: "
         "2.1): add them to natural.blocks"),
        (lambda p: p["fz"].update(pre_reading="lucent_reference"),
         "criteria.compare_pre_readings re-renders the Pre FZs as lucent read bn2 beside the exact ones, but "
         "fz.pre_reading is already lucent_reference: set fz.pre_reading: exact, or "
         "criteria.compare_pre_readings: false"),
        (lambda p: p["criteria"].update(blocks=["layer2_1", "layer3_1"]) or p["figures"].update(channels={"layer4_1": [0]}),
         "figures draws 4.1 (figures.blocks / figures.channels), which criteria.blocks does not probe"),
        (lambda p: p["natural"].update(blocks=["layer2_1", "layer3_1"]),
         "natural.blocks lacks 1.1, 2.0, 3.0, 4.0, 4.1, whose top natural images the figures (or "
         "criteria.natural_images) need: add them to natural.blocks"),
    ],
    ids=["seeds", "in_not_rendered", "post_not_rendered", "ablate_unprobed", "ablate_unmeasured", "pre_reading",
         "figures_unprobed", "figures_unmeasured"],
)  # fmt: skip
def test_sections_that_contradict_each_other_fail_before_any_stage_computes(
    tmp_path, monkeypatch, capsys, change, message
):
    """Each section can be valid alone and the pipeline still fail hours later (criteria probing a block
    whose FZs fz.blocks never renders stops stage activations after every FZ): under DVC (which sets
    DVC_STAGE) every stage checks the sections against each other first, so even `rsi prepare-data`
    refuses in seconds. By hand a stage needs only its own sections: prepare-data goes on to its data."""
    from rsi import cli

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    change(params)
    params["data"]["root"] = "nowhere"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert cli.main(["prepare-data"]) == 2
    assert "data.root = 'nowhere': no such folder" in capsys.readouterr().err
    monkeypatch.setenv("DVC_STAGE", "prepare-data")
    assert cli.main(["prepare-data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsi prepare-data: error: params.yaml: " + message) and err.count("\n") == 1, err
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["criteria"]["blocks"] = params["natural"]["blocks"] = params["ablate"]["blocks"] = ["layer2_1"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cli.validate_params("params.yaml")  # consistent again: a probed subset, ablated and measured


def test_errors_name_the_params_file_given(tmp_path, monkeypatch, capsys):
    from rsi import cli

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["fz"]["blocks"] = {
        "layer2_0": {"taps": ["post"], "jitter": 0},
        "layer2_1": {"taps": ["pre", "post"], "jitter": 4},
    }
    params["criteria"]["blocks"] = params["natural"]["blocks"] = params["ablate"]["blocks"] = ["layer2_1"]
    params["data"].update(source="flat", ground_truth=None)
    # named like a section: the file is named once, not twice
    (tmp_path / "fz.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["fz", "--params", "fz.yaml", "--block", "3.1"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "rsi fz: error: fz.yaml: fz.blocks has no key layer3_1 (block 3.1); configured: layer2_0, layer2_1\n"
    )
    assert cli.main(["prepare-data", "--params", "fz.yaml"]) == 2  # a stage's own check across keys
    assert capsys.readouterr().err.startswith("rsi prepare-data: error: fz.yaml: data.source = 'flat' needs")


def test_stages_without_params_need_no_params_file(tmp_path, monkeypatch):
    from rsi import cli, weights_cli

    monkeypatch.chdir(tmp_path)  # no params.yaml here (the image build runs fetch-weights like this)
    ran = []
    monkeypatch.setattr(weights_cli, "run", ran.append)
    assert cli.main(["fetch-weights", "--out", "w.pth"]) == 0 and len(ran) == 1


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from rsi import cli, data

    (tmp_path / "params.yaml").write_text("seed: 0\n")
    monkeypatch.chdir(tmp_path)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "run", interrupted)
    assert cli.main(["prepare-data"]) == 130
    assert capsys.readouterr().err == (
        "rsi prepare-data: interrupted; finished chunks are kept, rerun to resume\n"
    )


def test_importing_the_fz_transforms_prints_no_torch_jit_warning_and_filters_nothing_globally():
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('always'); import rsi.fz_transforms\n"
        "print(sum(f[1] is not None and 'jit\\.script' in f[1].pattern for f in warnings.filters))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "FutureWarning" not in done.stderr, done.stderr  # kornia's import scripts silently
    assert done.stdout.strip() == "0"  # the filter was scoped to that import: none is left afterwards


def test_rsi_help_imports_no_torch():
    """`rsi --help` lists the stages without importing torch (seconds per call before); a stage's own
    module, and torch with it, is imported only for that stage."""
    code = (
        "import sys\nfrom rsi import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "rerun-fz" in out and out.strip().endswith("[]"), out
