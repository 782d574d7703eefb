"""rsi.artifacts.ablation, the ablate stage's file contract: the writer's bytes are those the stage wrote
before its results were typed, the reader returns what the writer was given, and a file lacking anything
the writer always writes fails with one line naming the file, the stage and the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_ablate import PASSING, FakeSet, fake_evaluate  # noqa: F401 - fake_evaluate is a fixture

from rsi import ablate
from rsi.ablate_params import AblateParams, ScreenParams
from rsi.artifacts import ArtifactError, MissingArtifactError
from rsi.artifacts.ablation import (
    AblationMetrics,
    BlockMetrics,
    ScaleMetrics,
    SetMetrics,
    read_ablation_metrics,
    write_ablation,
)

SETTINGS = {
    "images": 1000,
    "random_weights": True,
    "generated_data": False,
    "crop_rule": "authors_code",
    "numerics": {"cudnn_allow_tf32": False, "matmul_allow_tf32": False},
}
# sha256 of the three files rsi.ablate wrote at cdd939d (untyped records, ablate_block unsplit) for
# fake_results(): the split and the typed records change no byte
# the unsplit stage's bytes; ablation.json since with each set's trials_below (the per-trial §4 check)
UNSPLIT_SHA256 = {
    "ablation.json": "73b208bc26b2870781c2b531f931a259634a9762e5d29296492c3bc46c0cd7ac",
    "ablation_ratio.csv": "7288cab88fcc22d37c01c50764f24327f31fe7afe788376cbe68d1ba2e428fae",
    "trials.json": "eb09e6eba072abf0733c81897061a42436a5b8858cf429afc066d50592f6b7a2",
}


def fake_results() -> list:
    """Two sets of 2.1 (run, published), one of 3.1, each by another screening rule, and a skipped 1.1."""
    results = []
    for block, rule, tolerance, batch, name in [
        ("2.1", "within", 1.0, 4, "run"),
        ("2.1", "no_higher", 0.0, 3, "published"),
        ("3.1", "lower", 0.0, 2, "run"),
    ]:
        params = AblateParams(
            blocks=(block,),
            trials=3,
            screening={block: ScreenParams(rule, tolerance)},
            max_attempts=60,
            screen_batch=batch,
            channel_sets=("run",),
        )
        means = np.linspace(0, 1, 128 if block == "2.1" else 256)
        results.append(
            ablate.ablate_block(
                None, FakeSet(), block, PASSING, means, params, progress=False, seed=5, channel_set=name
            )
        )
    params = AblateParams(blocks=("2.1",), trials=2)
    results.append(ablate.ablate_block(None, FakeSet(), "1.1", [], np.zeros(64), params, progress=False))
    return results


def write(directory: Path, results: list) -> AblationMetrics:
    metrics = ablate.ablation_metrics(results, SETTINGS)
    write_ablation(
        metrics,
        results,
        SETTINGS,
        metrics_path=directory / "ablation.json",
        plots_path=directory / "ablation_ratio.csv",
        trials_path=directory / "trials.json",
    )
    return metrics


@pytest.mark.usefixtures("fake_evaluate")
def test_the_files_are_byte_identical_to_the_unsplit_stage(tmp_path):
    write(tmp_path, fake_results())
    digests = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in UNSPLIT_SHA256}
    assert digests == UNSPLIT_SHA256


@pytest.mark.usefixtures("fake_evaluate")
def test_the_reader_returns_what_the_writer_was_given(tmp_path):
    metrics = write(tmp_path, fake_results())
    assert read_ablation_metrics(tmp_path / "ablation.json") == metrics
    assert metrics.listed() == [("2.1", "run"), ("2.1", "published"), ("3.1", "run"), ("1.1", "run")]
    assert metrics.blocks["1.1"] == BlockMetrics({}, {"run": SetMetrics(n_passing=0, n_channels=64)})
    series = metrics.series()
    assert list(series) == ["2.1", "3.1"] and list(series["2.1"]) == ["run", "published"]
    run = series["2.1"]["run"]
    assert run.scales == (0, 10, 20, 30, 40, 50) and run.no_scale_ratio == run.ratio[0]
    assert run.baseline_acc[0] == 70.0 and (run.trials, run.n_passing, run.n_channels) == (3, 24, 128)


def test_an_undefined_ratio_is_null_in_the_file_and_nan_in_the_series(tmp_path):
    scales = {p: ScaleMetrics(50.0, 0.0, None, None) for p in (0, 10)}
    metrics = AblationMetrics(
        images=10,
        random_weights=True,
        generated_data=True,
        numerics=SETTINGS["numerics"],
        blocks={"2.1": BlockMetrics({0: 60.0, 10: 55.0}, {"run": SetMetrics(3, 128, 2, 2, scales)})},
    )
    write_ablation(
        metrics,
        [],
        {},
        metrics_path=tmp_path / "ablation.json",
        plots_path=tmp_path / "ablation_ratio.csv",
        trials_path=tmp_path / "trials.json",
    )
    assert (
        json.loads((tmp_path / "ablation.json").read_text())["layer2_1"]["run"]["scale_10"]["ratio"] is None
    )
    assert (tmp_path / "ablation_ratio.csv").read_text().splitlines()[
        2
    ] == "2.1,run,10,2.1 run · 10 %,,,,50.0"
    series = read_ablation_metrics(tmp_path / "ablation.json").series()["2.1"]["run"]
    assert (
        all(np.isnan(series.ratio))
        and np.isnan(series.no_scale_ratio)
        and series.baseline_acc == (60.0, 55.0)
    )


def _broken(tmp_path: Path, edit) -> str:
    """The one-line error of the reader on the written demo-like file after ``edit(data)``."""
    path = tmp_path / "ablation.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as error:
        read_ablation_metrics(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and "`rsi ablate`" in message
    return message


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda d: d.pop("images"), "no 'images'"),
        (lambda d: d.pop("matmul_allow_tf32"), "no 'matmul_allow_tf32'"),
        (lambda d: d["layer2_1"].pop("baseline_acc"), "no 'layer2_1.baseline_acc'"),
        (lambda d: d["layer2_1"]["baseline_acc"].pop("scale_30"), "no 'layer2_1.baseline_acc.scale_30'"),
        (lambda d: d["layer2_1"]["published"].pop("trials"), "no 'layer2_1.published.trials'"),
        (lambda d: d["layer3_1"]["run"].pop("no_scale"), "no 'layer3_1.run.no_scale'"),
        (lambda d: d["layer1_1"]["run"].pop("n_channels"), "no 'layer1_1.run.n_channels'"),
        # the shapes the report used to tolerate: none is written by rsi ablate
        (lambda d: d["layer2_1"]["run"]["scale_10"].pop("ratio"), "no 'layer2_1.run.scale_10.ratio'"),
        (
            lambda d: d["layer2_1"]["run"]["scale_10"].update(
                random_acc=d["layer2_1"]["run"]["scale_10"].pop("random_acc_mean")
            ),
            "no 'layer2_1.run.scale_10.random_acc_mean'",
        ),
        (lambda d: d["layer2_1"]["run"].update(scale_0={}), "unexpected key 'layer2_1.run.scale_0'"),
        (lambda d: d.update({"2.1": d.pop("layer2_1")}), "unexpected key '2.1'"),
        (lambda d: d.update(blocks={"layer2_1": d.pop("layer2_1")}), "unexpected key 'blocks'"),
        (lambda d: d.update(layer2_1=d["layer2_1"]["run"]), "unexpected key 'layer2_1.n_passing'"),
    ],
)
@pytest.mark.usefixtures("fake_evaluate")
def test_a_file_without_a_key_the_writer_writes_fails_naming_file_stage_and_key(tmp_path, edit, names):
    write(tmp_path, fake_results())
    message = _broken(tmp_path, edit)
    assert names in message, message
    assert "remake it with `dvc repro --force ablate`" in message


def test_a_missing_file_names_the_stage(tmp_path):
    with pytest.raises(
        MissingArtifactError, match=r"ablation.json is missing: it is written by `rsi ablate`"
    ):
        read_ablation_metrics(tmp_path / "ablation.json")


def test_a_file_that_is_not_json_names_the_file_and_the_stage(tmp_path):
    path = tmp_path / "ablation.json"
    path.write_text('{"images": 1,')
    with pytest.raises(
        ArtifactError,
        match=r"ablation.json: not JSON \(.*\); remake it with `dvc repro --force ablate` \(or `rsi ablate`\)$",
    ):
        read_ablation_metrics(path)
