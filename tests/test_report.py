"""`rsi report` on small fake stage outputs (the same builder as the figures tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_figures import write_fake_outputs

from rsi import paper
from rsi.ablate_params import AblateParams
from rsi.artifacts import ArtifactError
from rsi.artifacts.top_images import TopImageOverlap, read_top_images
from rsi.cli import main
from rsi.criteria import CriteriaParams
from rsi.paper import REFERENCE
from rsi.report import (
    IMAGE_POINTS,
    ExactCheck,
    is_possible_accuracy,
)

REPORT = Path("outputs/report.md")


@pytest.fixture
def fake_repo(tmp_path, monkeypatch) -> Path:
    write_fake_outputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _row(text: str, first_cell: str, after: str = "") -> list[str]:
    """The cells of the first table row starting with ``first_cell`` (after the line ``after``)."""
    if after:
        text = text.split(after, 1)[1]
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_report_puts_paper_numbers_beside_reproduced_ones(fake_repo):
    assert main(["report"]) == 0
    text = REPORT.read_text()

    row = _row(text, "2.1")  # first table: criteria counts
    assert row[1] == str(paper.PASSING_COUNTS["2.1"]) == "23"
    assert row[2] == "3" and row[3] == "8 of 128" and row[5] == "37.50"
    assert row[4].startswith("~18 (17.97)")
    assert _row(text, "3.1")[1:3] == ["46", "1"]
    assert _row(text, "1.1")[1:3] == ["6", "not run"]

    # ablation: every scale against the no-scale line, and the verdict on the paper's claim
    assert "| 10 % | 201 |" in text and "| 50 % | 112 |" in text  # authors' crop rule
    assert "5 of 5 scaled ratios lie below it: the paper's claim holds" in text
    assert "4 of 5 scaled ratios lie below it: the paper's claim does not hold" in text
    assert "**no**" in text
    assert "Block 3.1 (this run's channels): 1 of 5 scaled ablation ratios are not below the no-scale" in text
    assert "random sets accepted by the screening: 2 of 3 drawn" in text
    assert (
        "### Block 2.1: this run's channels" in text
        and "### Block 2.1: the authors' published channels" in text
    )
    assert (
        "| No Scale | 224 | 60.000 | 60.606 | 0.9900 ± 0.0020 |" in text
    )  # this run's set: no recorded value
    assert "| No Scale | 224 | 63.750 | 63.750 | 65.722 | 0.9700 ± 0.0020 |" in text  # the published set
    assert "Top-1 of the unablated model without scaling: 70.000 %." in text
    assert "not ablated (no accuracies): 1.1 (this run's channels: no passing channels)." in text
    assert "- Block 1.1 (this run's channels) was not ablated: no passing channels." in text
    assert _row(text, "data path")[1] == "— (generated in memory)"  # data.root is not read then
    # this run's lists come from the exact reading of Pre, the authors' from theirs: said under the set
    assert "This run's channels pass the criteria under the `exact` reading of Pre" in text
    # random weights on 20 generated images: the exact check is shown but not judged
    assert "Not comparable: random weights, generated images, 20 images, not 50,000" in text
    assert "exact" not in _row(text, "30 %")[-1] and "not comparable" in text

    # settings, differences in plain words, figures section absent (no figures made)
    assert "| FZ steps | 16 | 2560" in text
    assert "FZs were optimised for 16 steps, not the authors' 2560." in text
    assert "Only 20 evaluation images were used" in text
    assert "## Figures" not in text


def test_random_weights_and_generated_data_are_announced_first(fake_repo):
    assert main(["report"]) == 0
    head = REPORT.read_text().split("## ")[0]
    assert "**RANDOM WEIGHTS**" in head and "**GENERATED DATA**" in head


def test_no_banner_for_the_paper_weights(tmp_path, monkeypatch):
    write_fake_outputs(tmp_path, weights="data/resnet18-f37072fd.pth", data_source="folders")
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0
    text = REPORT.read_text()
    assert "RANDOM WEIGHTS" not in text and "GENERATED DATA" not in text
    assert "**SUBSET**" in text.split("## ")[0]  # 20 images, not 50,000


def test_custom_weights_are_not_judged_against_the_published_accuracies(tmp_path, monkeypatch):
    """Only IMAGENET1K_V1 (by content) can match the authors' recorded accuracies to the image."""
    weights = tmp_path / "finetuned.pth"
    weights.write_bytes(b"not the paper's weights")
    write_fake_outputs(tmp_path, weights=str(weights), data_source="folders")
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0
    text = REPORT.read_text()
    assert "Not comparable: custom weights " in text and ", not IMAGENET1K_V1" in text


def test_lucent_reference_counts_side_by_side(fake_repo):
    reference = json.loads(Path("metrics/criteria.json").read_text())
    reference["layer2_1"].update(passing=5, percent=3.9062, channels=128)  # every channel probed
    Path("metrics/criteria_lucent_reference.json").write_text(json.dumps(reference))
    Path("outputs/reference/criteria").mkdir(parents=True, exist_ok=True)
    Path("outputs/reference/criteria/passing.json").write_text(json.dumps({"2.1": [13, 15, 18, 1, 2]}))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    first_table = text.split("## Criteria-passing channels")[1].split("\n\n")[1].splitlines()
    header = [cell.strip() for cell in first_table[0].strip("|").split("|")]
    assert header[:4] == [
        "block",
        "paper passing",
        "the authors' reading: comparable with the paper's counts",
        "exact reading (this run's FZs)",
    ]
    assert (
        "Jaccard with published (authors' reading)" in header
        and "Jaccard with published (exact reading)" in header
    )
    row = dict(zip(header, _row(text, "2.1"), strict=True))
    assert (row["paper passing"], row["the authors' reading: comparable with the paper's counts"]) == (
        "23",
        "5",
    )
    assert row["exact reading (this run's FZs)"] == "3" and row["authors' reading %"] == "3.91"
    # published 2.1 has 23 channels; the authors' reading shares 13, 15, 18 of 5: 3 / 25; the exact one
    # (channels 0-7 probed) none of the published channels among them
    assert row["Jaccard with published (authors' reading)"] == f"{3 / 25:.2f}"
    assert row["Jaccard with published (exact reading)"] == "0.00 (channels 0–7)"
    assert "Block 2.1: 5 pass with the `lucent_reference` Pre FZs against 3 with the exact Pre FZs." in text
    # the count compared with the paper's is the authors' reading's (DESIGN), not this run's exact one
    assert (
        "Block 2.1: 5 channels pass under the authors' reading of Pre (the count comparable with the paper's), "
        "23 in the paper." in text
    )
    assert "passing channels here with this run's exact Pre FZs" not in text


def test_jaccard_and_found_count_only_the_published_channels_probed():
    """Probing channels 0-15 of 2.1 and finding exactly the published ones there is full agreement."""
    from rsi.report import _channels_section, _jaccard_cell

    published = sorted(REFERENCE["channels"]["2.1"])
    in_range = [c for c in published if c < 16]
    paper_refs = {"ablation_channels_authors_code": {"2.1": published}, "channels": {"2.1": published}}
    paper_refs["channels_complete_blocks"] = ["2.1"]
    assert _jaccard_cell({"2.1": in_range}, "2.1", paper_refs, 16, 128) == "1.00 (channels 0–15)"
    assert _jaccard_cell({"2.1": in_range}, "2.1", paper_refs, 128, 128) == f"{len(in_range) / 23:.2f}"
    row = next(
        line
        for line in _channels_section({"2.1": in_range}, paper_refs, {"2.1": 16})
        if line.startswith("| 2.1")
    )
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3] == f"{len(in_range)} of {len(in_range)} probed (23 listed)" and cells[4] == "1.00"
    assert cells[6] == "—" or cells[6] == "[]"


def test_eq1_readings_are_counted_and_the_fz_each_test_reads_is_named(fake_repo):
    criteria = json.loads(Path("metrics/criteria.json").read_text())
    criteria["layer2_1"].update(pre_of_pre_fz_nonpositive=4, eq1_readings_differ=3, passing_readings_differ=2)
    Path("metrics/criteria.json").write_text(json.dumps(criteria))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    assert "### Eq. 1 as the authors computed it" in text and "This run reads Eq. 1 as `authors_code`" in text
    assert _row(text, "2.1")[:2] == ["2.1", "23"]
    assert "| 2.1 | this run's Pre FZs | 4 | 3 | 2 |" in text
    assert "Eq. 1 and Eq. 2 see different images" not in text
    assert (
        "Eq. 1 reads X̂_In (Pre_c(X̂_In) and Pre_c(S(X̂_In))) and, as the authors' code divided by it, the sign"
        in text
    )
    assert "Eq. 2 reads Post_c(X̂_In) and Post_c(X̂_Pre)" in text
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["criteria"]["eq1_reading"] = "paper_text"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 0
    assert "Eq. 1 reads X̂_In only (Pre_c(X̂_In) and Pre_c(S(X̂_In))), so the Pre reading does not touch it" in (
        REPORT.read_text()
    )


def test_the_channels_the_authors_would_have_re_rendered_are_counted_per_reading_of_pre(fake_repo):
    criteria = json.loads(Path("metrics/criteria.json").read_text())
    params = yaml.safe_load(Path("params.yaml").read_text())
    cases = [
        (0, {"authors_rerun": 2}, "| 2.1 | this run's Pre FZs | 2 | 0 | 8 |", "(`criteria.rerun_fz: 0`, the default)"),
        (3, {"authors_rerun": 2, "rerun_replaced": 1}, "| 2.1 | this run's Pre FZs | 2 | 1 | 8 |",
         "seeds seed + 1 … + 3 (draws of their own) until"),
    ]  # fmt: skip
    for tries, counts, row, how in cases:
        criteria["layer2_1"].update(counts)
        Path("metrics/criteria.json").write_text(json.dumps(criteria))
        params["criteria"]["rerun_fz"] = tries
        Path("params.yaml").write_text(yaml.safe_dump(params))
        assert main(["report"]) == 0
        text = REPORT.read_text()
        assert "### Channels the authors re-rendered" in text and how in text
        assert row in text and "| 3.1 | this run's Pre FZs | 0 | 0 | 6 |" in text


def test_exact_check_in_points_and_images():
    assert round(IMAGE_POINTS, 12) == 0.002
    same = ExactCheck(61.394, 61.394)
    assert same.exact and same.images == pytest.approx(0) and same.verdict() == "exact"
    two = ExactCheck(56.226, 56.222)  # two images apart
    assert two.points == pytest.approx(0.004) and two.images == pytest.approx(2.0)
    assert not two.exact and two.verdict() == "not exact (2.0 images)"
    one = ExactCheck(59.392, 59.39)  # exactly one image: not under one image
    assert one.images == pytest.approx(1.0) and not one.exact
    # 63.493 (the authors' 3.1 no-scale value) is no accuracy over 50,000 images: 31,746.5 correct
    assert not is_possible_accuracy(63.493) and is_possible_accuracy(63.75) and is_possible_accuracy(46.704)
    typo = ExactCheck(63.494, 63.493)  # half an image from the recorded value: exact, and flagged
    assert typo.exact and typo.images == pytest.approx(0.5)
    assert typo.verdict() == "exact; 63.493 is no multiple of 0.002: no accuracy over 50,000 images (a typo)"
    assert all(
        is_possible_accuracy(acc)
        for block, values in paper.PASSING_ABLATION_ACCURACY.items()
        for acc in (values["no_scale"], *values["scaled"])
        if (block, acc) != ("3.1", 63.493)
    )


def test_the_report_judges_the_published_accuracies_on_the_paper_data(fake_repo):
    index = json.loads(Path("outputs/eval/index.json").read_text())
    index["files"] = [f"{i}.JPEG" for i in range(50_000)]  # the report counts the files of index.json
    decoder = "Pillow 13.0.0, libjpeg-turbo 3.2.0 (libjpeg 6.2 API)"
    index |= {"source": "folders", "generated": False, "decoder": decoder}
    Path("outputs/eval/index.json").write_text(json.dumps(index))
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["model"]["weights"] = "torchvision"  # IMAGENET1K_V1 (checked by hash when loaded)
    params["data"]["source"] = "folders"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    assert "5 of 6 match the authors' recorded values exactly (under one image)." in text
    # the decoders differ: said in the settings and among the differences, since pixels can differ
    assert _row(text, "JPEG decoder")[1:] == [decoder, "IJG libjpeg 9e (the authors' environment.yml)"]
    assert f"- The JPEGs were decoded by {decoder}; the authors' environment decoded them with IJG" in text
    section = text.split("### Block 2.1: the authors' published channels")[1].split("Exact check")[1]
    assert _row(section, "No Scale")[-1] == "exact"
    assert _row(section, "30 %")[-4:] == ["56.222", "+0.004", "+2.0", "not exact (2.0 images)"]
    # and the summary of differences names the miss on the one result DESIGN calls exact
    assert (
        "- Block 2.1 (the authors' published channels): 1 of 6 accuracies differ from the authors' "
        "recorded values, by up to 2 images (the exact check, §4)." in text
    )


def test_classes_present_counts_the_labels_of_the_images_used(fake_repo):
    """index.json's class map can name more classes than the images hold (a label map, a subset) or none
    (a flat layout with numeric labels): the report counts the labels."""
    index = json.loads(Path("outputs/eval/index.json").read_text())
    for classes in ({}, {f"n{i:08d}": i for i in range(1000)}):
        Path("outputs/eval/index.json").write_text(json.dumps(index | {"classes": classes}))
        assert main(["report"]) == 0
        assert _row(REPORT.read_text(), "classes present")[1:] == ["4", "1000"]  # labels 0..3


def test_channel_overlap_with_the_authors_lists(fake_repo):
    passing = {"2.1": [13, 15, 99], "3.1": [2]}
    Path("outputs/criteria/passing.json").write_text(json.dumps(passing))
    counts = json.loads(Path("metrics/criteria.json").read_text())
    counts["layer2_1"]["channels"] = 128  # the whole block probed: every published channel counts
    Path("metrics/criteria.json").write_text(json.dumps(counts))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| 2.1 | 3 |")]
    assert lines, text
    cells = [cell.strip() for cell in lines[0].strip("|").split("|")]
    listed = len(REFERENCE["channels"]["2.1"])
    assert cells[3] == f"2 of {listed}" and cells[5] == "[13, 15]" and cells[6] == "[99]"


def test_partial_author_lists_get_no_overlap_score(fake_repo):
    # the paper names 2.0's channel 50 only as a figure label: no Jaccard, no "passing here only"
    Path("outputs/criteria/passing.json").write_text(json.dumps({"2.0": [50, 7], "2.1": [13]}))
    assert main(["report"]) == 0
    (line,) = [
        row for row in REPORT.read_text().splitlines() if row.startswith("| 2.0 |") and "partial" in row
    ]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[2] == "1 (partial)" and cells[3] == "1 of 1" and cells[5] == "[50]"
    assert cells[4] == "—" and cells[6] == "—"


def test_missing_input_names_the_file_and_the_stage(fake_repo, capsys):
    Path("metrics/criteria.json").unlink()
    assert main(["report"]) == 2
    error = capsys.readouterr().err
    assert "metrics/criteria.json is missing" in error and "rsi criteria" in error
    assert not REPORT.exists()


def test_stability_across_seeds_is_shown(fake_repo):
    criteria = json.loads(Path("metrics/criteria.json").read_text())
    criteria["stability"] = {"layer2_1": {"passing_seed0": 3, "passing_seed1": 4, "jaccard_mean": 0.5}}
    Path("metrics/criteria.json").write_text(json.dumps(criteria))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    assert "### Stability across FZ seeds" in text
    assert "| 2.1 | 3 | 4 | 0.500 |" in text
    assert "Under the authors' reading of Pre" not in text  # stage pre-reading did not run
    reference = json.loads(Path("metrics/criteria.json").read_text())
    reference["stability"] = {"layer2_1": {"passing_seed0": 6, "passing_seed1": 2, "jaccard_mean": 0.25}}
    Path("metrics/criteria_lucent_reference.json").write_text(json.dumps(reference))
    Path("outputs/reference/criteria").mkdir(parents=True, exist_ok=True)
    Path("outputs/reference/criteria/passing.json").write_text(json.dumps({"2.1": [1, 2]}))
    assert main(["report"]) == 0
    section = REPORT.read_text().split("### Stability across FZ seeds")[1].split("\n## ")[0]
    reading = "Under the authors' reading of Pre (stage pre-reading: the counts comparable with the paper's):"
    ours = "Under this run's reading of Pre (`fz.pre_reading`):"
    order = [ours, "| 2.1 | 3 | 4 | 0.500 |", reading, "| 2.1 | 6 | 2 | 0.250 |"]
    assert [section.index(text) for text in order] == sorted(section.index(text) for text in order)


def test_a_jaccard_over_empty_passing_sets_is_no_stability(fake_repo):
    """rsi.criteria.stability calls two empty sets equal (Jaccard 1.0, as metrics/ keeps it); in the
    report's table that would read as a perfectly stable block, so such a pair prints —, and the mean
    and min are over the other pairs (— when none is left)."""
    criteria = json.loads(Path("metrics/criteria.json").read_text())
    counts = {"passing_seed0": 0, "passing_seed1": 0, "passing_seed2": 0}
    pairs = {"jaccard_seed0_seed1": 1.0, "jaccard_seed0_seed2": 1.0, "jaccard_seed1_seed2": 1.0}
    criteria["stability"] = {
        "layer4_1": counts | pairs | {"jaccard_mean": 1.0, "jaccard_min": 1.0, "passing_all_seeds": 0},
        "layer2_1": counts
        | {"passing_seed1": 2}
        | pairs
        | {"jaccard_seed0_seed1": 0.0, "jaccard_seed1_seed2": 0.0}
        | {"jaccard_mean": 0.333333, "jaccard_min": 0.0, "passing_all_seeds": 0},
    }
    Path("metrics/criteria.json").write_text(json.dumps(criteria))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    none = "— (none pass)"
    assert f"| 4.1 | 0 | 0 | 0 | {none} | {none} | {none} | {none} | {none} | 0 |" in text
    # seeds 0 and 2 pass nothing: their pair is no agreement; the mean is over the other two (0.0, 0.0)
    assert f"| 2.1 | 0 | 2 | 0 | 0.000 | {none} | 0.000 | 0.000 | 0.000 | 0 |" in text


def test_the_outputs_root_is_a_flag(fake_repo):
    Path("outputs").rename("elsewhere")
    assert main(["report", "--outputs", "elsewhere"]) == 0
    assert not REPORT.exists() and "| 2.1 | 23 | 3 |" in Path("elsewhere/report.md").read_text()


def test_the_report_prints_only_declared_params(fake_repo):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["fz"]["chunk_batches"] = 7  # speed only: not declared, so not printed
    params["ablate"]["screen_batch"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    assert "| `steps` | 16 |" in text and "| `crop_rule` | authors_code |" in text
    assert "chunk_batches" not in text and "screen_batch" not in text and "`device`" not in text


def test_report_params_are_validated(fake_repo, capsys):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["report"] = {"decimals": 0}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 2
    assert "report.decimals" in capsys.readouterr().err


def test_settings_params_yaml_omits_show_the_stages_own_defaults(fake_repo):
    params = yaml.safe_load(Path("params.yaml").read_text())
    for section, key in (("ablate", "channel_sets"), ("ablate", "tf32"), ("criteria", "eq1_reading")):
        params.setdefault(section, {}).pop(key, None)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 0
    text = REPORT.read_text()  # one default: the dataclass field's, not a copy in report.py
    assert _row(text, "ablation channel sets")[1] == "[" + ", ".join(AblateParams().channel_sets) + "]"
    assert _row(text, "Eq. 1 reading")[1] == CriteriaParams().eq1_reading
    assert _row(text, "TF32 on CUDA (ablate)")[1] == str(AblateParams().tf32)
    assert f"reads Eq. 1 as `{CriteriaParams().eq1_reading}`" in text


def test_fz_and_ablation_settings_params_yaml_omits_are_the_rendered_and_the_defaults(fake_repo):
    """A params file without fz.steps, fz.pre_reading, fz.image_size, fz.lr, ablate.crop_rule and
    ablate.trials (rsi report --params by hand) reads the FZs' settings.json and the ablation defaults,
    and does not call the exact check not comparable over a missing crop rule."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    assert main(["report"]) == 0
    full = REPORT.read_text()
    for key in ("steps", "pre_reading", "image_size", "lr"):
        params["fz"].pop(key, None)
    for key in ("crop_rule", "trials"):
        params["ablate"].pop(key, None)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 0
    text = REPORT.read_text()
    for row in ("FZ steps", "FZ Pre reading", "FZ image size / lr"):
        assert _row(text, row) == _row(full, row) and "—" not in _row(text, row)[1], row
    assert _row(text, "ablation crop rule")[1] == AblateParams().crop_rule
    assert _row(text, "ablation trials")[1] == str(AblateParams().trials)
    assert "crop rule None" not in text


def test_the_report_names_the_devices_and_says_cpu_floats_are_not_the_authors(fake_repo):
    """DESIGN: CPU and GPU floats differ; the report names the device (fz settings.json, trials.json)."""
    import torch

    from rsi.runtime import describe_device

    assert describe_device("cpu") == f"cpu ({torch.get_num_threads()} threads)"
    assert main(["report"]) == 0
    text = REPORT.read_text()
    row = _row(text, "device")
    assert row[1].startswith("FZs ") and row[1].endswith("cpu (2 threads); ablation: cpu (2 threads)")
    assert row[2] == "a CUDA GPU (model not stated), torch 2.0"
    assert "ran on the CPU; the authors ran on a CUDA GPU, and CPU and GPU floats differ" in text


def test_every_setting_that_departs_from_the_paper_is_listed(fake_repo):
    """The README's own experiment (criteria.eq2_high) and the other keys with a paper value are named."""
    assert main(["report"]) == 0
    differences = REPORT.read_text().split("## What differs from the paper")[1].split("\n## ")[0]
    assert "`criteria.eq2_low`" not in differences  # 0.6667: the paper's 2/3 to four places
    assert "`ablate.trials` is 2 here; the paper's is 10 (§4)." in differences
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["criteria"].update(eq2_high=2.0, strict=False)
    params["fz"].update(transforms="lucent_standard", storage="float32")
    params["ablate"]["screening"] = {
        "3.1": {"rule": "within", "tolerance": 5.0},
        "2.1": {"rule": "no_higher"},
    }
    params["natural"] = {"k": 4}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["report"]) == 0
    differences = REPORT.read_text().split("## What differs from the paper")[1].split("\n## ")[0]
    for line in (
        "`criteria.eq2_high` is 2.0000 here; the paper's is 1.5000 (Eq. 2).",
        "`criteria.strict` is False here; the paper's is True (Eq. 1 and Eq. 2 are strict inequalities).",
        "`fz.transforms` is lucent_standard here; the paper's is authors_code",
        "`fz.storage` is float32 here; the paper's is uint8",
        "`natural.k` is 4 here; the paper's is 9 (Fig. 1: the top 9 images).",
        "`ablate.screening` for 3.1 accepts random sets by `within` (tolerance 5); the authors' was `within` (1; §4).",
    ):
        assert line in differences, line
    assert "`ablate.screening` for 2.1" not in differences


def test_the_per_trial_consistency_of_the_paper_claim_is_reported(fake_repo):
    assert main(["report"]) == 0
    assert (
        'Trial by trial (§4: "consistent across scale percentages and different random channel samples"): '
        "in 1 of 2 trials every scaled ratio lies below that trial's own no-scale ratio."
        in REPORT.read_text()
    )


def test_top_image_overlap_reads_section_3_on_hand_made_lists():
    from rsi.report import top_image_overlap

    topk = np.array(
        [
            [[1, 2, 3], [4, 5, 6]],  # In
            [[7, 8, 9], [4, 10, 11]],  # Pre: channel 0 shares none with In, channel 1 shares image 4
            [[1, 7, 12], [13, 14, 15]],  # Post: channel 0 mixes In's 1, Pre's 7 and a novel 12
        ]
    )
    assert top_image_overlap(topk, [0, 1], k=3) == TopImageOverlap(
        k=3, channels=2, in_pre_shared_mean=0.5, in_pre_disjoint=1, post_from_in_or_pre_mean=1.0
    )
    assert top_image_overlap(topk, [0], k=2).post_from_in_or_pre_mean == 2.0  # Post's 1, 7 of 1, 2, 7, 8


def test_the_report_reads_the_top_images_of_the_passing_channels(fake_repo):
    from rsi.artifacts.natural import read_natural
    from rsi.report import top_image_overlap

    assert main(["report"]) == 0
    text = REPORT.read_text()
    passing = json.loads(Path("outputs/criteria/passing.json").read_text())
    found = top_image_overlap(read_natural("2.1", Path("outputs")).topk, passing["2.1"])
    row = _row(text, "2.1", after="### Top natural images of the passing channels")
    assert row[1:] == [
        str(len(passing["2.1"])),
        f"{found.in_pre_shared_mean:.2f} of 9",
        f"{found.in_pre_disjoint} of {len(passing['2.1'])}",
        f"{found.post_from_in_or_pre_mean:.2f} of 9",
    ]
    # the same numbers in metrics/top_images.json, for dvc metrics diff (means to 6 places)
    written = read_top_images()
    assert set(written) == {block for block, channels in passing.items() if channels}
    assert written["2.1"].channels == found.channels and written["2.1"].k == 9
    assert written["2.1"].in_pre_disjoint == found.in_pre_disjoint
    assert written["2.1"].in_pre_shared_mean == round(found.in_pre_shared_mean, 6)
    assert json.loads(Path("metrics/top_images.json").read_text())["layer2_1"]["channels"] == found.channels


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"2.1": {}}', "key '2.1' is not a block key as `rsi report` writes it"),
        ('{"layer2_1": {"k": 9}}', "no 'channels', 'in_pre_shared_mean'"),
        ('{"layer2_1": [1]}', "is not a mapping of k, channels"),
    ],
)
def test_top_images_metrics_that_rsi_report_did_not_write_are_named(tmp_path, content, message):
    path = tmp_path / "top_images.json"
    path.write_text(content)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        read_top_images(path)


def test_fz_jitter_other_than_the_authors_is_listed(fake_repo):
    """The authors' jitter per block is rsi.fz's default; a tap rendered with another is named."""
    from rsi.fz import DEFAULT_BLOCKS
    from rsi.taps import parse_block

    assert {parse_block(key): block.jitter for key, block in DEFAULT_BLOCKS.items()} == dict(
        paper.AUTHORS_JITTER
    )
    assert main(["report"]) == 0
    text = REPORT.read_text()  # the fake FZs: jitter 4, the authors' for 2.1, not for 3.1 (16)
    assert "The 2.1/pre FZs were rendered" not in text
    assert "The 3.1/pre FZs were rendered with jitter 4; the authors' batch_process.sh used 16." in text
    path = Path("outputs/fz/layer2_1/settings.json")
    settings = json.loads(path.read_text())
    settings["taps"]["pre"]["jitter"] = 16
    path.write_text(json.dumps(settings))
    assert main(["report"]) == 0
    assert (
        "The 2.1/pre FZs were rendered with jitter 16; the authors' batch_process.sh used 4."
        in REPORT.read_text()
    )


def test_what_the_run_leaves_out_of_or_adds_to_the_papers_scope_is_listed():
    """Blocks probed and ablated, the mirror test, the sweep and the published lists' exact check."""
    from rsi.report import _value_differences

    assert _value_differences({}) == []  # the defaults are the paper's scope
    raw = {
        "criteria": {"blocks": ["layer2_1", "3.1"], "mirror_criterion": True},
        "ablate": {"blocks": ["2.1"], "percents": [10, 30], "channel_sets": ["run"]},
    }
    assert _value_differences(raw) == [
        "This run probed 2.1, 3.1 (`criteria.blocks`); §3 probed 1.1, 2.0, 2.1, 3.0, 3.1, 4.0, 4.1, and a "
        "block not probed has no count here.",
        "`criteria.mirror_criterion` is on: a channel must also pass the authors' unreported mirror test, so "
        "the counts are not the paper's Eq. 1 and Eq. 2 counts.",
        "3.1 not ablated (`ablate.blocks`); §4 and Fig. 2 ablate 2.1 and 3.1.",
        "`ablate.percents` is [10, 30] here; Fig. 2 sweeps [10, 20, 30, 40, 50] %.",
        "`ablate.channel_sets` leaves out `published`: the one check that must match the paper to the image "
        "(the authors' published 2.1 and 3.1 lists mean-ablated) was not run.",
    ]
