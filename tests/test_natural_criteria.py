"""rsi.natural_criteria (ours, not the paper's): both natural-image tests on hand-made responses, the
responses against a direct forward through rsi.taps on a seeded random model and generated images, the
stage's files and its off state, the report's section and the figure of the channels passing both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_figures import fake_natural, write_fake_eval
from test_natural import generated_cache

from rsi import artifacts, cli, natural, natural_criteria, natural_figures
from rsi.artifacts import ArtifactError
from rsi.artifacts.criteria import TABLE_COLUMNS, CriteriaTable, write_criteria_table
from rsi.artifacts.eval import read_eval
from rsi.artifacts.fz import FZFile, write_fz
from rsi.artifacts.natural import read_natural, write_natural
from rsi.artifacts.natural_criteria import (
    NaturalPassing,
    read_natural_criteria_block,
    read_natural_criteria_metrics,
    read_natural_passing,
    write_natural_passing,
)
from rsi.artifacts.passing import Passing
from rsi.artifacts.rerun import no_reruns, rerun_file, write_rerun
from rsi.criteria import CriteriaParams
from rsi.eval_set import load_eval
from rsi.figures import FZStore, NaturalStore
from rsi.report import _natural_criteria_section, run_labels
from rsi.taps import Tap, center, forward_taps
from rsi.transforms import ablation_view, scale_crop

CACHE = 64  # the pipeline's cache is 256 px; 64 keeps the forwards cheap (view 56, S crops 28)


# ------------------------------------------------------------------------------- Eq. 1 (natural)


def test_eq1_compares_the_mean_of_relu_with_the_mean_of_the_scaled_responses():
    pre = [[1.0, -3.0], [1.0, -3.0], [-1.0, -2.0], [-1.0, -2.0], [2.0, 2.0]]
    scaled = [[0.2, 0.9], [0.4, 0.4], [0.0, 0.0], [-0.1, 0.05], [2.0, 2.0]]
    # means: ReLU(pre) 0.5, 0.5, 0, 0, 2;  scaled 0.55, 0.4, 0, -0.025, 2
    np.testing.assert_array_equal(
        natural_criteria.natural_eq1_scale_gain(pre, scaled), [True, False, False, False, False]
    )
    np.testing.assert_array_equal(
        natural_criteria.natural_eq1_scale_gain(pre, scaled, strict=False), [True, False, True, False, True]
    )


def test_eq1_applies_relu_per_image_before_the_mean():
    # ReLU of the mean (-1) would be 0 and 0.4 > 0 would pass; the mean of ReLU is 0.5 > 0.4: fails
    assert not natural_criteria.natural_eq1_scale_gain([1.0, -3.0], [0.4, 0.4])
    assert natural_criteria.natural_eq1_scale_gain(torch.tensor([[-5.0, -1.0]]), torch.tensor([[0.0, 0.1]]))[
        0
    ]


# ------------------------------------------------------------------------------- Eq. 2 (natural)


def test_eq2_is_the_ratio_of_the_means_in_the_band():
    post_in = [[1.0, 1.0], [1.0, 2.0], [1.0, 2.0], [3.0, 0.0], [0.5, 0.5]]
    post_pre = [[1.0, 1.0], [1.0, 1.0], [2.0, 2.5], [1.0, 1.0], [2.0, 0.0]]
    # ratios of the means: 1, 1.5 (the upper bound), 1.5 / 2.25 = 2/3 (the lower bound), 1.5, 0.5
    result = natural_criteria.natural_eq2_post_ratio(post_in, post_pre)
    np.testing.assert_allclose(result.ratio, [1.0, 1.5, 2 / 3, 1.5, 0.5])
    np.testing.assert_array_equal(result.passes, [True, False, False, False, False])
    loose = natural_criteria.natural_eq2_post_ratio(post_in, post_pre, 2 / 3, 3 / 2, strict=False)
    np.testing.assert_array_equal(loose.passes, [True, True, True, True, False])
    assert not result.nonpositive.any()


def test_eq2_fails_a_mean_that_is_zero_or_negative():
    post_in = [[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]]
    post_pre = [[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0], [-2.0, 1.0]]
    result = natural_criteria.natural_eq2_post_ratio(post_in, post_pre, 1e-9, 1e9, strict=False)
    np.testing.assert_array_equal(result.passes, [False] * 4)
    np.testing.assert_array_equal(result.nonpositive, [True] * 4)
    assert result.ratio[0] == 0.0 and np.isnan(result.ratio[1:]).all()


def test_verdicts_and_overlap_with_the_fz_criteria():
    responses = {
        "pre_of_in_top": np.array([[1.0], [1.0], [1.0], [1.0]]),
        "pre_of_scaled_in_top": np.array([[2.0], [2.0], [0.0], [2.0]]),
        "post_of_in_top": np.array([[1.0], [1.0], [1.0], [5.0]]),
        "post_of_pre_top": np.array([[1.0], [1.2], [1.0], [1.0]]),
    }
    params = CriteriaParams(natural_images=True)
    verdicts = natural_criteria.natural_verdicts("2.1", responses, np.arange(4), params)
    assert verdicts.passing == [0, 1]  # 2 fails Eq. 1, 3 fails Eq. 2
    # the FZ criteria probed channels 0, 1, 3 and passed 1 and 3
    summary = natural_criteria.overlap(verdicts, [0, 1, 3], [1, 3])
    assert summary["passing"] == 2 and summary["eq1_pass"] == 3 and summary["eq2_pass"] == 3
    assert summary["fz_probed"] == 3 and summary["fz_passing"] == 2 and summary["both"] == 1
    assert summary["natural_passing_probed"] == 2 and summary["jaccard"] == pytest.approx(1 / 3, abs=1e-6)


# ------------------------------------------------------------------------------------ the responses


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return generated_cache(tmp_path_factory.mktemp("natural_criteria"), per_class=3, size=CACHE)


def direct(model, eval_set, index: int, taps: list[Tap], scaled: bool) -> dict[Tap, np.ndarray]:
    """Center neurons (C,) of one cached image through rsi.taps, as stage natural sees it (then S)."""
    images = torch.from_numpy(np.array(eval_set.images[index : index + 1])).permute(0, 3, 1, 2)
    resized = torch.from_numpy(eval_set.resized[index : index + 1].astype(np.int64))
    view = ablation_view(images, eval_set.view_size, eval_set.view_size, resized)
    if scaled:
        view = scale_crop(view, 0.5)
    with torch.no_grad():
        values = forward_taps(model, view, taps, detach=True)
    return {tap: center(values[tap])[0].numpy() for tap in taps}


def test_responses_equal_a_direct_forward_per_image(random_model, tiny_cache):
    eval_set = load_eval(tiny_cache / "outputs" / "eval")
    stats = natural.natural_pass(random_model, eval_set, ["2.1"], k=3, batch_size=4, progress=False)["2.1"]
    responses = natural_criteria.block_responses(
        random_model, eval_set, "2.1", stats.topk, scale_fraction=0.5, batch_size=4
    )
    pre, post = Tap("2.1", "pre"), Tap("2.1", "post")
    plain = [direct(random_model, eval_set, i, [pre, post], False) for i in range(len(eval_set))]
    scaled = [direct(random_model, eval_set, i, [pre], True)[pre] for i in range(len(eval_set))]
    in_top, pre_top = stats.topk[0], stats.topk[1]
    expected = {
        "pre_of_in_top": np.array([[plain[i][pre][c] for i in row] for c, row in enumerate(in_top)]),
        "pre_of_scaled_in_top": np.array([[scaled[i][c] for i in row] for c, row in enumerate(in_top)]),
        "post_of_in_top": np.array([[plain[i][post][c] for i in row] for c, row in enumerate(in_top)]),
        "post_of_pre_top": np.array([[plain[i][post][c] for i in row] for c, row in enumerate(pre_top)]),
    }
    for key in natural_criteria.RESPONSES:
        assert responses[key].shape == (128, 3), key
        np.testing.assert_allclose(responses[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # the Pre responses to the Pre tap's own top-k are the values stage natural ranked them by
    pre_of_pre_top = np.array([[plain[i][pre][c] for i in row] for c, row in enumerate(pre_top)])
    np.testing.assert_allclose(pre_of_pre_top, stats.topk_values[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(responses["pre_of_scaled_in_top"], responses["pre_of_in_top"])  # S did something


def test_top_k_outside_the_cache_is_an_error(random_model, tiny_cache):
    eval_set = load_eval(tiny_cache / "outputs" / "eval")
    topk = np.zeros((3, 128, 2), dtype=np.int64)
    topk[0, 0, 0] = len(eval_set)
    with pytest.raises(ValueError, match="re-run `rsi natural`"):
        natural_criteria.block_responses(random_model, eval_set, "2.1", topk)


# --------------------------------------------------------------------------------------- the stage


def write_params(natural_images: bool) -> None:
    params = {
        "model": {"weights": "random:0", "device": "cpu"},
        "criteria": {"blocks": ["layer2_1"], "natural_images": natural_images},
        "natural": {"blocks": ["layer2_1"], "k": 3, "batch_size": 4},
        "ablate": {"blocks": ["layer2_1"]},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))


def test_off_state_writes_empty_metrics_and_needs_no_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(False)
    Path("outputs/natural_criteria").mkdir(parents=True)
    Path("outputs/natural_criteria/passing.json").write_text('{"both": {"layer2_1": [3]}}')  # an earlier run
    assert cli.main(["natural-criteria"]) == 0  # no eval cache, no natural or criteria outputs
    assert json.loads(Path("metrics/criteria_natural.json").read_text()) == {}
    assert sorted(p.name for p in Path("outputs/natural_criteria").iterdir()) == [
        "README.txt",
        "passing.json",
    ]
    assert json.loads(Path("outputs/natural_criteria/passing.json").read_text()) == {
        "natural": {},
        "both": {},
    }
    assert _natural_criteria_section(Path("metrics/criteria_natural.json"), Path("outputs")) == []
    assert natural_figures.passing_both(Path("outputs")) == {}


def test_the_figure_needs_the_stage_output_even_when_off(tmp_path):
    with pytest.raises(ArtifactError) as error:
        natural_figures.passing_both(tmp_path)  # never ran: no guess that the stage was off
    message = str(error.value)
    path = tmp_path / "natural_criteria" / "passing.json"
    assert (
        "\n" not in message
        and message.startswith(f"{path} is missing")
        and "`rsi natural-criteria`" in message
    )


def fake_fz_criteria(probed: list[int], passing: list[int]) -> None:
    """outputs/criteria/layer2_1.csv with the columns every criteria table has (verdicts made up)."""
    rows = [[str(c), "nan", "True", "True", "False", "False", str(c in passing)] for c in probed]
    write_criteria_table(CriteriaTable(list(TABLE_COLUMNS), rows), artifacts.criteria_table("2.1"))


def test_stage_writes_verdicts_metrics_and_the_report_section(tiny_cache, monkeypatch):
    monkeypatch.chdir(tiny_cache)
    write_params(True)
    assert cli.main(["natural"]) == 0
    stored = read_natural("2.1")
    assert cli.main(["natural-criteria"]) == 2  # the FZ criteria's table is missing: one-line error
    fz_passing = [0, 1, 2, 3, 4, 5]
    fake_fz_criteria(list(range(8)), fz_passing)
    assert cli.main(["natural-criteria"]) == 0
    out = read_natural_criteria_block("2.1")
    params = CriteriaParams(natural_images=True)
    responses = {key: getattr(out, key) for key in natural_criteria.RESPONSES}
    verdicts = natural_criteria.natural_verdicts("2.1", responses, out.channels, params)
    np.testing.assert_array_equal(out.passes, verdicts.passes)
    assert out.pre_of_in_top.shape == (128, 3) and stored.topk.shape == (3, 128, 3)
    metrics = read_natural_criteria_metrics().blocks["2.1"]
    natural_probed = {c for c in verdicts.passing if c < 8}
    assert metrics["channels"] == 128 and metrics["passing"] == len(verdicts.passing)
    assert metrics["fz_probed"] == 8 and metrics["both"] == len(natural_probed & set(fz_passing))
    passing = read_natural_passing()
    assert passing.natural.blocks == {"2.1": verdicts.passing}
    assert passing.both.blocks == {"2.1": sorted(natural_probed & set(fz_passing))}
    assert json.loads(Path("outputs/natural_criteria/passing.json").read_text())["both"] == {
        "layer2_1": passing.both.blocks["2.1"]
    }
    section = "\n".join(_natural_criteria_section(Path("metrics/criteria_natural.json"), Path("outputs")))
    assert "ours, not the paper's" in section
    row = f"| 2.1 | 6 of 8 | {metrics['passing']} of 128 |"
    assert row in section and f"| {metrics['both']} | {metrics['jaccard']:.3f} |" in section


def test_the_figure_shows_the_channels_passing_both(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "outputs"
    for tap in (Tap("2.0", "post"), Tap("2.1", "pre")):
        path = artifacts.fz_file(tap, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        write_fz(path, FZFile(images, np.array([0, 2, 5, 7]), np.zeros(4), np.zeros(4)))
    write_natural("2.1", fake_natural(rng, 128), root)
    write_rerun(rerun_file("2.1", root), no_reruns(np.zeros(0), 0))
    write_fake_eval(artifacts.eval_dir(root), rng)
    both = NaturalPassing(Passing({"2.1": [2, 5, 9]}), Passing({"2.1": [2, 5], "3.1": []}))
    write_natural_passing(both, root)
    (root / "figures").mkdir()
    (root / "figures" / "natural_both_layer4_1.png").write_bytes(b"stale")
    labels = run_labels({"model": {"weights": "random:0"}, "data": {"source": "generated"}})
    natural = NaturalStore(root, read_eval(artifacts.eval_dir(root)).images)
    written = natural_figures.draw_natural_both(FZStore(root), natural, labels, dpi=40)
    assert [p.name for p in written] == ["natural_both_layer2_1.png"]
    assert sorted(p.name for p in (root / "figures").iterdir()) == ["natural_both_layer2_1.png"]
    from PIL import Image

    with Image.open(written[0]) as image:
        assert len(set(image.convert("L").getdata())) > 10


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        ("passing.json", '{"natural": {"layer2_1": [1]}}', "'both'"),
        ("metrics", '{"layer2_1": {"channels": 128}}', "'passing'"),
    ],
)
def test_each_natural_criteria_reader_names_the_file_the_stage_and_the_key(tmp_path, name, text, key):
    path = tmp_path / "natural_criteria" / "passing.json" if name == "passing.json" else tmp_path / "m.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ArtifactError) as error:
        read_natural_passing(tmp_path) if name == "passing.json" else read_natural_criteria_metrics(path)
    message = str(error.value)
    assert (
        "\n" not in message
        and message.startswith(f"{path}: no {key}")
        and "`rsi natural-criteria`" in message
    )
