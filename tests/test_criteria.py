"""Eq. 1, Eq. 2, the mirror test and criteria stability on hand-made numbers; the criteria stage on
hand-made activation files (no model)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsi import artifacts, cli, paper
from rsi.artifacts import FZ_IMAGES, ArtifactError
from rsi.artifacts.activations import Activations, write_activations
from rsi.artifacts.criteria import (
    read_criteria_metrics,
    read_criteria_table,
    read_seed_passing,
    stability_file,
    write_criteria_metrics,
)
from rsi.artifacts.passing import Passing, read_passing, write_passing
from rsi.config import ParamsError, load_section
from rsi.criteria import (
    CriteriaParams,
    authors_rerun_case,
    criteria_metrics,
    eq1_authors_code,
    eq1_scale_gain,
    eq2_post_ratio,
    evaluate_block,
    jaccard,
    mirror_shrink_gain,
    parse_fraction,
    passing_channels,
    stability,
)
from rsi.taps import TAP_KINDS

# ---------------------------------------------------------------------------------------------- Eq. 1


def test_eq1_relu_of_pre_below_pre_of_scaled():
    pre_of_in_fz = [1.0, 1.0, -2.0, -2.0, 0.0, 3.0, -3.0]
    pre_of_scaled = [2.0, 1.0, 0.5, 0.0, 0.0, 2.0, -1.0]
    #                 gain  equal ReLU  0>0  0>0   loss  both negative: -1 > ReLU(-3) = 0 is false
    strict = [True, False, True, False, False, False, False]
    loose = [True, True, True, True, True, False, False]
    assert eq1_scale_gain(pre_of_in_fz, pre_of_scaled).tolist() == strict
    assert eq1_scale_gain(pre_of_in_fz, pre_of_scaled, strict=False).tolist() == loose


def test_eq1_negative_pre_is_clipped_not_compared_raw():
    # Without the ReLU, -1 > -3 would pass: a gain in the negative domain is no gain.
    assert not eq1_scale_gain(-3.0, -1.0)
    assert eq1_scale_gain(-3.0, 0.01)


def test_eq1_matches_the_authors_clipped_difference():
    rng = np.random.default_rng(0)
    base, scaled = rng.normal(size=(2, 1000))
    authors = np.clip(scaled, 0, None) - np.clip(base, 0, None) > 0
    np.testing.assert_array_equal(eq1_scale_gain(base, scaled), authors)


def test_eq1_takes_tensors():
    result = eq1_scale_gain(torch.tensor([0.5, -1.0]), torch.tensor([1.0, -0.5]))
    assert result.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------- Eq. 2


NUMERATOR = [2.0, 3.0, 1.0, 1.0, 0.0, 1.0, -1.0, -1.0]
DENOMINATOR = [3.0, 2.0, 1.0, 0.0, 1.0, -1.0, 1.0, -1.0]
#              =2/3 =3/2  1    /0   0/1  /neg  neg/  neg/neg (ratio 1, but both <= 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_eq2_boundaries_fail_strict_and_pass_loose(dtype):
    num, den = np.asarray(NUMERATOR, dtype), np.asarray(DENOMINATOR, dtype)
    strict = eq2_post_ratio(num, den)
    loose = eq2_post_ratio(num, den, strict=False)
    assert strict.passes.tolist() == [False, False, True, False, False, False, False, False]
    assert loose.passes.tolist() == [True, True, True, False, False, False, False, False]
    assert strict.ratio[0] == 2 / 3 and strict.ratio[1] == 3 / 2


def test_eq2_nonpositive_post_fails_and_is_counted():
    result = eq2_post_ratio(NUMERATOR, DENOMINATOR, strict=False)
    assert result.nonpositive.tolist() == [False, False, False, True, True, True, True, True]
    assert int(result.nonpositive.sum()) == 5
    assert not result.passes[result.nonpositive].any()
    # a denominator <= 0 gives no ratio; a numerator <= 0 over a positive denominator gives its ratio
    assert np.isnan(result.ratio[[3, 5, 7]]).all()
    assert result.ratio[4] == 0.0 and result.ratio[6] == -1.0


def test_eq2_bounds_are_parameters_and_take_fractions():
    result = eq2_post_ratio([1.0, 1.0, 1.0], [2.0, 1.9, 0.5], low="1/2", high="2")
    assert result.passes.tolist() == [False, True, False]
    assert eq2_post_ratio([1.0], [2.0], low="1/2", high="2", strict=False).passes.tolist() == [True]


def test_parse_fraction():
    assert parse_fraction("2/3") == 2 / 3
    assert parse_fraction(" 3/2 ") == 1.5
    assert parse_fraction(0.5) == 0.5
    assert parse_fraction(1) == 1.0
    for bad in ("two thirds", "1/0", 0, -1.0, "-2/3", True):
        with pytest.raises(ValueError):
            parse_fraction(bad)


# ----------------------------------------------------------------------------- mirror test, sets, Jaccard


def test_mirror_is_in_of_shrunk_pre_fz_above_relu_of_in_of_pre_fz():
    in_of_pre_fz = [1.0, -1.0, 2.0, 1.0]
    in_of_shrunk = [2.0, 0.1, 1.0, 1.0]
    assert mirror_shrink_gain(in_of_pre_fz, in_of_shrunk).tolist() == [True, True, False, False]
    assert mirror_shrink_gain(in_of_pre_fz, in_of_shrunk, strict=False).tolist() == [True, True, False, True]


def test_passing_channels_needs_every_mask():
    channels = np.array([4, 7, 9, 12])
    assert passing_channels(channels, [True, True, False, True], [True, False, True, True]) == [4, 12]
    assert passing_channels(channels) == [4, 7, 9, 12]
    with pytest.raises(ValueError, match="does not match"):
        passing_channels(channels, [True, False])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({1, 2, 3}, {2, 3, 4}, 0.5),
        ([1, 2, 3], [3, 2, 1], 1.0),
        ({1, 2}, {3, 4}, 0.0),
        (set(), {1}, 0.0),
        (set(), set(), 1.0),
        ({5, 6, 7, 8}, {8}, 0.25),
    ],
)
def test_jaccard(a, b, expected):
    assert jaccard(a, b) == expected
    assert jaccard(b, a) == expected


def test_stability_counts_and_overlaps():
    passing = {
        0: {"2.1": [1, 2, 3], "3.1": []},
        1: {"2.1": [2, 3, 4], "3.1": []},
        2: {"2.1": [1, 2, 3, 4], "3.1": []},
    }
    out = stability(passing)
    assert set(out) == {"2.1", "3.1"}
    block = out["2.1"]
    assert (block["passing_seed0"], block["passing_seed1"], block["passing_seed2"]) == (3, 3, 4)
    assert block["jaccard_seed0_seed1"] == 0.5
    assert block["jaccard_seed0_seed2"] == 0.75
    assert block["jaccard_seed1_seed2"] == 0.75
    assert block["jaccard_mean"] == round((0.5 + 0.75 + 0.75) / 3, 6)
    assert block["jaccard_min"] == 0.5
    assert block["passing_all_seeds"] == 2
    assert out["3.1"]["jaccard_mean"] == 1.0 and out["3.1"]["passing_all_seeds"] == 0
    assert all("." not in key for entry in out.values() for key in entry)


def test_eq1_authors_code_divides_by_pre_of_the_pre_fz():
    # difference mean(clip(Pre(S(X̂_In)), 0)) - mean(clip(Pre(X̂_In), 0)) per channel: +1, -1, 0, +1, -1, 0, +1
    base = [1.0, 2.0, -1.0, 0.0, 1.0, -3.0, 0.5]
    scaled = [2.0, 1.0, -2.0, 1.0, 0.0, -1.0, 1.5]
    pre_pre = [3.0, 3.0, 3.0, -2.0, -2.0, 0.0, 0.0]
    #          positive: the text's test  negative: inverts  zero: 0/0 = nan fails, +1/0 = +inf passes
    paper_text = [True, False, False, True, False, False, True]
    authors = [True, False, False, False, True, False, True]
    assert eq1_scale_gain(base, scaled).tolist() == paper_text
    assert eq1_authors_code(base, scaled, pre_pre).tolist() == authors
    assert eq1_authors_code(1.0, 0.0, 0.0).tolist() is False  # -1 / 0 = -inf: fails
    # non-strict: quotient >= 0, so a zero difference passes unless the quotient is nan
    loose = eq1_authors_code(base, scaled, pre_pre, strict=False).tolist()
    assert loose == [True, False, True, False, True, False, True]


def test_eq1_authors_code_is_their_float32_arithmetic():
    rng = np.random.default_rng(3)
    base, scaled, pre_pre = rng.normal(size=(3, 2000)).astype(np.float32)
    pre_pre[:50] = 0.0
    scaled[:25], base[:25] = -1.0, -2.0  # both clipped to 0: 0 / 0
    with np.errstate(all="ignore"):  # their line 428 on numpy float32 scalars, then `> 0`
        theirs = [
            (np.mean(np.clip(s, 0, None)) - np.mean(np.clip(b, 0, None))) / np.float32(p) > 0
            for b, s, p in zip(base, scaled, pre_pre, strict=True)
        ]
    assert eq1_authors_code(base, scaled, pre_pre).tolist() == [bool(t) for t in theirs]
    positive = pre_pre > 0
    same = eq1_authors_code(base, scaled, pre_pre) == eq1_scale_gain(base, scaled)
    assert same[positive].all() and not same[pre_pre < 0].all()


# ------------------------------------------------------------------------------------ block evaluation


def make_acts(pre_in, pre_scaled, post_in, post_pre, in_pre=None, in_shrunk=None, pre_pre=None) -> np.ndarray:
    """A (len(FZ_IMAGES), 3, C) activations array holding the given criteria inputs and noise elsewhere;
    Pre_c(X̂_Pre_c) is 1 unless given (so both readings of Eq. 1 agree)."""
    count = len(pre_in)
    acts = np.random.default_rng(1).normal(size=(len(FZ_IMAGES), len(TAP_KINDS), count)).astype(np.float32)
    pre, post, tap_in = TAP_KINDS.index("pre"), TAP_KINDS.index("post"), TAP_KINDS.index("in")
    acts[FZ_IMAGES.index("in_fz"), pre] = pre_in
    acts[FZ_IMAGES.index("scaled_in_fz"), pre] = pre_scaled
    acts[FZ_IMAGES.index("in_fz"), post] = post_in
    acts[FZ_IMAGES.index("pre_fz"), post] = post_pre
    acts[FZ_IMAGES.index("pre_fz"), pre] = 1.0 if pre_pre is None else pre_pre
    if in_pre is not None:
        acts[FZ_IMAGES.index("pre_fz"), tap_in] = in_pre
        acts[FZ_IMAGES.index("shrunk_pre_fz"), tap_in] = in_shrunk
    return acts


# channels 10..15:   passes   Eq.1 fails  Eq.2 boundary  Post 0   passes    negative Pre
PRE_IN = [1.0, 1.0, 0.0, 0.0, 0.5, -1.0]
PRE_SCALED = [2.0, 0.5, 1.0, 1.0, 0.6, 0.2]
POST_IN = [1.0, 1.0, 2.0, 0.0, 1.2, 1.0]
POST_PRE = [1.0, 1.0, 3.0, 1.0, 1.0, 1.2]
IN_PRE = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
IN_SHRUNK = [1.0, 1.0, 1.0, 1.0, 0.5, 1.0]
CHANNELS = np.arange(10, 16)


def test_evaluate_block_wires_the_activations_to_the_criteria():
    acts = make_acts(PRE_IN, PRE_SCALED, POST_IN, POST_PRE, IN_PRE, IN_SHRUNK)
    result = evaluate_block("2.1", acts, CHANNELS)
    assert result.eq1.tolist() == [True, False, True, True, True, True]
    assert result.eq2.tolist() == [True, True, False, False, True, True]
    assert result.eq2_nonpositive.tolist() == [False, False, False, True, False, False]
    assert result.mirror.tolist() == [True, True, True, True, False, True]
    assert result.passing == [10, 14, 15]
    assert result.summary() == {
        "channels": 6,
        "passing": 3,
        "percent": 50.0,
        "eq1_pass": 5,
        "eq2_pass": 4,
        "eq2_nonpositive": 1,
        "mirror_pass": 5,
        "authors_rerun": 0,
        "rerun_replaced": 0,
        "pre_of_pre_fz_nonpositive": 0,
        "eq1_readings_differ": 0,
        "passing_readings_differ": 0,
    }
    with_mirror = evaluate_block("2.1", acts, CHANNELS, mirror_criterion=True)
    assert with_mirror.passing == [10, 15]
    loose = evaluate_block("2.1", acts, CHANNELS, strict=False)
    assert loose.passing == [10, 12, 14, 15]
    with pytest.raises(ValueError, match="expected"):
        evaluate_block("2.1", acts[:, :, :3], CHANNELS)


def test_the_channels_the_authors_re_rendered_are_those_with_both_post_responses_at_most_zero():
    # stream_inspect.py l. 424 asserts Post(X̂_Pre) >= 0 or Post(X̂_In) >= 0 on pre-ReLU sums; here Post is
    # post-ReLU, so "both negative" shows as both 0 (a -0.0 from a clamp included)
    post_in = [0.0, 1.0, 0.0, 0.0, 2.0]
    post_pre = [0.0, 0.0, 3.0, -0.0, 1.0]
    assert authors_rerun_case(post_in, post_pre).tolist() == [True, False, False, True, False]
    acts = make_acts(PRE_IN[:5], PRE_SCALED[:5], post_in, post_pre)
    result = evaluate_block("2.1", acts, CHANNELS[:5])
    assert result.summary()["authors_rerun"] == 2
    assert not result.eq2[[0, 3]].any()  # such a channel fails Eq. 2 anyway


def test_both_readings_of_eq1_are_counted_per_block():
    # channels 10..15 as above, with Pre_c(X̂_Pre_c): positive, negative, zero, negative, negative, positive
    pre_pre = [1.0, -1.0, 0.0, -0.5, -2.0, 1.0]
    acts = make_acts(PRE_IN, PRE_SCALED, POST_IN, POST_PRE, pre_pre=pre_pre)
    authors = evaluate_block("2.1", acts, CHANNELS)  # the default reading: the authors' code
    text = evaluate_block("2.1", acts, CHANNELS, eq1_reading="paper_text")
    assert text.eq1.tolist() == [True, False, True, True, True, True]
    # the negative ones invert (11 gains nothing, so passes; 13 and 14 gain, so fail); zero: +1/0 = inf
    assert authors.eq1.tolist() == [True, True, True, False, False, True]
    assert authors.passing == [10, 11, 15] and text.passing == [10, 14, 15]
    for result in (authors, text):
        summary = result.summary()
        assert summary["pre_of_pre_fz_nonpositive"] == 4
        assert summary["eq1_readings_differ"] == 3 and summary["passing_readings_differ"] == 2
    assert authors.passes_other.tolist() == text.passes.tolist()
    with pytest.raises(ValueError, match="eq1_reading"):
        evaluate_block("2.1", acts, CHANNELS, eq1_reading="text")


def test_metrics_have_numbers_only_and_dvc_safe_keys(tmp_path):
    acts = make_acts(PRE_IN, PRE_SCALED, POST_IN, POST_PRE)
    results = [evaluate_block("2.1", acts, CHANNELS), evaluate_block("3.1", acts[:, :, :4], CHANNELS[:4])]
    write_criteria_metrics(criteria_metrics(results), tmp_path / "criteria.json")
    out = json.loads((tmp_path / "criteria.json").read_text())
    assert list(out) == ["layer2_1", "layer3_1", "total"]
    assert out["total"]["channels"] == 10 and out["total"]["passing"] == 3 + 1
    assert out["total"]["percent"] == 40.0
    for entry in out.values():
        assert all("." not in key for key in entry)
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in entry.values())


# ------------------------------------------------------------------------------------------------ params


def test_criteria_params_defaults_match_the_paper():
    params = CriteriaParams()
    assert params.blocks == paper.PROBED_BLOCKS
    assert (params.eq2_low, params.eq2_high, params.strict, params.mirror_criterion) == (
        2 / 3,
        3 / 2,
        True,
        False,
    )
    assert params.roots() == {0: artifacts.OUTPUTS}
    assert params.eq1_reading == "authors_code"  # what produced the paper's counts
    with pytest.raises(ParamsError, match="eq1_reading"):
        load_section({"criteria": {"eq1_reading": "text"}}, "criteria", CriteriaParams)


def test_criteria_params_from_yaml_values():
    raw = {
        "criteria": {
            "blocks": ["layer2_1", "3.1", 2.0],
            "eq2_low": "2/3",
            "eq2_high": 1.5,
            "seeds": [3, 4],
            "seed_root": "runs/s{seed}",
        }
    }
    params = load_section(raw, "criteria", CriteriaParams)
    assert params.blocks == ("2.1", "3.1", "2.0")
    assert params.eq2_low == 2 / 3 and params.eq2_high == 1.5
    assert params.roots() == {3: Path("outputs"), 4: Path("runs/s4")}  # the first seed is the main run


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"blocks": ["5.1"]}, "unknown block"),
        ({"blocks": ["2.1", "layer2_1"]}, "listed twice"),
        ({"eq2_low": "a lot"}, "fraction"),
        ({"eq2_low": 1.5, "eq2_high": "2/3"}, "must be below"),
        ({"seeds": [1, 1]}, "listed twice"),
        ({"seeds": []}, "at least one seed"),
        ({"seed_root": "outputs/seed"}, "{seed}"),
        ({"seed_root": "stab/{seed}/{run}"}, "only the placeholder '{seed}' may appear"),
        ({"strict": "yes"}, "true or false"),
        ({"mirror": True}, "unknown key"),
    ],
)
def test_criteria_params_errors(section, message):
    with pytest.raises(ParamsError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_section({"criteria": section}, "criteria", CriteriaParams)


# ---------------------------------------------------------------------------- the stage, no model needed


def write_acts(root: Path, block: str, acts: np.ndarray, channels: np.ndarray) -> None:
    record = Activations(
        acts=acts,
        channels=channels,
        fz_images=FZ_IMAGES,
        taps=TAP_KINDS,
        weights="RANDOM WEIGHTS (not the paper's model)",
        extractor="taps",
        scale_fraction=0.5,
        shrink_fraction=0.5,
        numerics={"cudnn_allow_tf32": False, "matmul_allow_tf32": False},
    )
    write_activations(artifacts.activations_file(block, root), record)


def run_cli(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["rsi"])
    return cli.main(list(argv))


def test_criteria_stage_writes_tables_lists_and_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("criteria:\n  blocks: [layer2_1]\nablate: {blocks: ['2.1']}\n")
    write_acts(artifacts.OUTPUTS, "2.1", make_acts(PRE_IN, PRE_SCALED, POST_IN, POST_PRE), CHANNELS)
    assert run_cli(monkeypatch, "rerun-fz") == 0  # criteria.rerun_fz is 0: records, renders nothing
    assert run_cli(monkeypatch, "criteria") == 0
    assert read_passing(Path("outputs/criteria/passing.json")) == Passing({"2.1": [10, 14, 15]})
    data = read_criteria_metrics()
    assert data.blocks["2.1"]["passing"] == 3 and data.total["passing"] == 3
    assert data.stability is None and data.numerics is None
    table = read_criteria_table(artifacts.criteria_table("2.1"))
    assert (table.channels, table.passing) == (list(CHANNELS), [10, 14, 15])
    with open("outputs/criteria/layer2_1.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["channel"]) for r in rows] == list(CHANNELS)
    assert [r["passes"] for r in rows] == ["True", "False", "False", "False", "True", "True"]
    assert rows[2]["eq2_ratio"] == repr(2 / 3) and float(rows[3]["post_of_in_fz"]) == 0.0
    assert {"pre_of_in_fz", "pre_of_scaled_in_fz", "post_of_in_fz", "post_of_pre_fz", "eq1", "eq2"} <= set(
        rows[0]
    )
    settings = json.loads(Path("outputs/criteria/settings.json").read_text())
    assert settings["activations"]["seed0"]["2.1"]["weights"].startswith("RANDOM")


def test_criteria_stage_across_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(
        "criteria:\n  blocks: ['2.1']\n  seeds: [0, 1]\n  seed_root: runs/seed{seed}\nablate: {blocks: ['2.1']}\n"
    )
    acts = make_acts(PRE_IN, PRE_SCALED, POST_IN, POST_PRE)
    write_acts(Path("outputs"), "2.1", acts, CHANNELS)  # the main run
    other = acts.copy()
    other[FZ_IMAGES.index("in_fz"), TAP_KINDS.index("post"), 0] = 5.0  # channel 10 fails Eq. 2 in seed 1
    write_acts(Path("runs/seed1"), "2.1", other, CHANNELS)
    assert run_cli(monkeypatch, "rerun-fz") == 0
    assert run_cli(monkeypatch, "criteria") == 0
    data = json.loads(Path("metrics/criteria.json").read_text())
    assert data["stability"]["layer2_1"]["passing_seed0"] == 3
    assert data["stability"]["layer2_1"]["passing_seed1"] == 2
    assert data["stability"]["layer2_1"]["jaccard_mean"] == round(2 / 3, 6)
    assert json.loads(Path("outputs/criteria/passing.json").read_text()) == {"2.1": [10, 14, 15]}
    lists = read_seed_passing(stability_file())
    assert lists.seeds == [0, 1] and lists.passing[1] == {"2.1": [14, 15]}
    assert read_criteria_metrics().stability["2.1"]["passing_seed1"] == 2


@pytest.mark.parametrize(
    ("path", "text", "key"),
    [
        ("metrics/criteria.json", '{"layer2_1": {"channels": 8}}', "'total'"),
        ("metrics/criteria.json", '{"layer2_1": {"channels": 8}, "total": {}}', "'passing'"),
        ("outputs/criteria/stability.json", '{"seeds": [0, 1], "passing": {"seed0": {}}}', "'seed1'"),
        ("outputs/criteria/layer2_1.csv", "channel,eq1,eq2,passes\n", "'eq2_ratio'"),
    ],
)
def test_each_criteria_reader_names_the_file_the_stage_and_the_missing_key(
    tmp_path, monkeypatch, path, text, key
):
    monkeypatch.chdir(tmp_path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    reader = {
        "metrics/criteria.json": read_criteria_metrics,
        "outputs/criteria/stability.json": read_seed_passing,
        "outputs/criteria/layer2_1.csv": read_criteria_table,
    }[path]
    with pytest.raises(ArtifactError) as error:
        reader(Path(path))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: no {key}") and "`rsi criteria`" in message


def test_passing_json_is_read_as_criteria_writes_it(tmp_path):
    path = tmp_path / "passing.json"
    write_passing(Passing({"2.1": [3, 1], "3.1": []}), path)
    assert path.read_text() == '{\n  "2.1": [\n    3,\n    1\n  ],\n  "3.1": []\n}\n'
    assert read_passing(path).blocks == {"2.1": [3, 1], "3.1": []}  # file order
    path.write_text('{"layer2_1": [3]}')
    with pytest.raises(
        ArtifactError, match=r"passing\.json: key 'layer2_1' is not a block as `rsi criteria`"
    ):
        read_passing(path)
    with pytest.raises(ArtifactError, match=r"is missing: it is written by `rsi pre-reading`"):
        read_passing(tmp_path / "nowhere.json", stage="pre-reading")


def test_criteria_stage_names_the_missing_activations(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("criteria:\n  blocks: ['2.1']\nablate: {blocks: ['2.1']}\n")
    assert run_cli(monkeypatch, "criteria") == 2
    error = capsys.readouterr().err
    assert "outputs/activations/layer2_1.npz is missing" in error
    assert "`rsi activations` (DVC stage 'activations')" in error


def test_paper_reference_values_are_consistent():
    assert set(paper.PASSING_COUNTS) == set(paper.PROBED_BLOCKS)
    for block, channels in paper.PUBLISHED_PASSING.items():
        assert len(channels) == len(set(channels)) == paper.PASSING_COUNTS[block]
        assert all(0 <= c < paper.BLOCK_CHANNELS[block] for c in channels)
        assert abs(paper.passing_percent_exact(block) - paper.PASSING_PERCENT[block]) < 0.5
    assert set(paper.EXEMPLARY_CHANNELS["3.1"]) <= set(paper.PUBLISHED_PASSING["3.1"])
    assert set(paper.FIGURE3_LABELS["2.1"]) <= set(paper.PUBLISHED_PASSING["2.1"])
    for block in ("2.1", "3.1"):
        accuracy = paper.PASSING_ABLATION_ACCURACY[block]
        assert len(accuracy["scaled"]) == len(paper.ABLATION_SCALES)
        assert list(accuracy["scaled"]) == sorted(accuracy["scaled"], reverse=True)
        assert max(accuracy["scaled"]) < accuracy["no_scale"]


def test_a_stability_seed_outside_criteria_seeds_names_the_file_and_the_fix(tmp_path, monkeypatch, capsys):
    from rsi import cli

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("model: {weights: 'random:0', device: cpu}\ncriteria: {seeds: [0, 1]}\n")
    assert cli.main(["stability", "--seed", "5"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(
        "params.yaml: --seed 5 is not in criteria.seeds [0, 1]: add it there (dvc.yaml's stability@<seed> "
        "stages follow that list) or give one of those"
    ), error
