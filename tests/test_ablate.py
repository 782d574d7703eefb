"""rsi.ablate: accuracies equal a naive per-image computation, the intervention touches exactly the chosen
channels, the screening accepts and rejects as specified (boundaries, attempt order, the cap's message),
Eq. 3 and its SEM, DVC-safe outputs, and torchrun sharding equal to one process."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from test_figures import fake_natural
from torchvision import transforms as T

from rsi import ablate, cli, data, natural
from rsi.ablate import AblationError, Condition, eq3_ratio, screen
from rsi.ablate_params import AblateParams, ScreenParams
from rsi.artifacts.ablation import PLOT_FIELDS, SetMetrics, write_ablation
from rsi.artifacts.natural import write_natural
from rsi.config import ParamsError, load_section
from rsi.eval_set import load_eval
from rsi.model import load_resnet18
from rsi.taps import TAP_KINDS, Tap, forward_from, forward_taps
from rsi.transforms import IMAGENET_MEAN, IMAGENET_STD, ablation_view

CACHE, VIEW = 64, 56  # a small cache keeps the tests fast; the pipeline uses 256 / 224
PASSING = list(range(0, 128, 4))[:24]


# ----------------------------------------------------------------------------------------------- pure parts


def test_screen_boundaries():
    assert screen(50.0, 50.0, "no_higher")  # equal: no higher
    assert screen(49.0, 50.0, "no_higher")
    assert not screen(50.001, 50.0, "no_higher")
    assert not screen(50.0, 50.0, "lower")  # the paper text's strict "more damage"
    assert screen(49.999, 50.0, "lower")
    assert screen(51.0, 50.0, "within", 1.0)  # exactly one point above: accepted (authors' 3.1 rule)
    assert not screen(51.001, 50.0, "within", 1.0)
    assert screen(10.0, 50.0, "within", 1.0)  # one-sided: any lower accuracy is accepted
    assert screen(50.0, 50.0, "within", 0.0)
    # one point above, as counts out of 50,000 (float rounding must not flip the boundary)
    assert screen(100 * 32247 / 50000, 100 * 31747 / 50000, "within", 1.0)
    assert not screen(100 * 32248 / 50000, 100 * 31747 / 50000, "within", 1.0)
    with pytest.raises(ValueError, match="only 'within' takes a tolerance"):
        screen(1.0, 2.0, "no_higher", 1.0)
    with pytest.raises(ValueError, match="unknown screening rule"):
        screen(1.0, 2.0, "below")


def test_eq3_ratio_and_sem_on_known_numbers():
    mean, sem = eq3_ratio(50.0, [40.0, 50.0, 100.0])  # ratios 1.25, 1.0, 0.5
    assert mean == pytest.approx(2.75 / 3)
    deviations = np.array([1.25, 1.0, 0.5]) - 2.75 / 3
    assert sem == pytest.approx(np.sqrt((deviations**2).sum() / 2 / 3))  # ddof = 1
    assert sem == pytest.approx(stats.sem([1.25, 1.0, 0.5]))
    accs = [61.2, 60.9, 61.7, 62.0]
    assert eq3_ratio(60.0, accs) == pytest.approx(
        (np.mean(60.0 / np.array(accs)), stats.sem(60.0 / np.array(accs)))
    )
    assert eq3_ratio(50.0, [50.0, 50.0]) == (1.0, 0.0)
    assert eq3_ratio(50.0, [0.0, 50.0])[0] == np.inf


def test_random_sets_are_keyed_and_non_passing():
    non_passing = [c for c in range(128) if c not in PASSING]
    first = ablate.draw_random_set(non_passing, 24, 0, "2.1", 0)
    assert first == ablate.draw_random_set(non_passing, 24, 0, "layer2_1", 0)
    assert len(set(first)) == 24 and not set(first) & set(PASSING) and first == sorted(first)
    others = [
        ablate.draw_random_set(non_passing, 24, *key) for key in ((0, "2.1", 1), (1, "2.1", 0), (0, "3.1", 0))
    ]
    assert all(o != first for o in others)


def test_params_defaults_and_validation():
    params = load_section({}, "ablate", AblateParams)
    assert params.blocks == ("2.1", "3.1") and params.crop_rule == "authors_code" and params.trials == 10
    assert params.screening == {"2.1": ScreenParams("no_higher", 0.0), "3.1": ScreenParams("within", 1.0)}
    custom = load_section(
        {"ablate": {"blocks": ["3.1"], "screening": {"layer3_1": {"rule": "lower"}}, "percents": [25]}},
        "ablate",
        AblateParams,
    )
    assert custom.screening == {"3.1": ScreenParams("lower", 0.0)} and custom.percents == (25,)
    with pytest.raises(
        ParamsError, match=r"ablate\.screening has no entry for layer2_1, which ablate\.blocks lists"
    ):
        load_section({"ablate": {"screening": {"layer3_1": {"rule": "lower"}}}}, "ablate", AblateParams)
    with pytest.raises(ParamsError, match="takes no tolerance"):
        load_section(
            {"ablate": {"screening": {"layer2_1": {"rule": "no_higher", "tolerance": 1}}}},
            "ablate",
            AblateParams,
        )
    with pytest.raises(ParamsError, match="trials"):
        load_section({"ablate": {"trials": 1}}, "ablate", AblateParams)
    with pytest.raises(ParamsError, match="crop_rule"):
        load_section({"ablate": {"crop_rule": "text"}}, "ablate", AblateParams)


# ----------------------------------------------------------------------------------------------- screening


class FakeSet:
    """Stands in for an EvalSet when `evaluate` is faked."""

    size, view_size, generated = 256, 224, False

    def __len__(self) -> int:
        return 1000


def fake_accuracy(condition: Condition, crop: int) -> float:
    """Baseline 70 %, passing 50 %, a random set 49.0 … 51.0 % by its channels; less at smaller crops."""
    if condition.name == "baseline":
        base = 70.0
    elif condition.name == "passing":
        base = 50.0
    else:
        base = 49.0 + 0.5 * (sum(condition.channels) % 5)
    return base - (224 - crop) / 10


@pytest.fixture
def fake_evaluate(monkeypatch):
    calls = []

    def evaluate(model, eval_set, block, conditions, crops, **kwargs):
        calls.append((tuple(c.name for c in conditions), tuple(crops)))
        counts = [[round(fake_accuracy(c, crop) * 10) for c in conditions] for crop in crops]
        return np.array(counts, dtype=np.int64), 1000

    monkeypatch.setattr(ablate, "evaluate", evaluate)
    return calls


def run_fake(rule: str, tolerance: float = 0.0, **overrides):
    params = AblateParams(
        blocks=("2.1",),
        trials=3,
        screening={"2.1": ScreenParams(rule, tolerance)},
        max_attempts=60,
        **overrides,
    )
    return ablate.ablate_block(
        None, FakeSet(), "2.1", PASSING, np.linspace(0, 1, 128), params, progress=False
    )


@pytest.mark.parametrize(
    ("rule", "tolerance"), [("no_higher", 0.0), ("within", 1.0), ("within", 0.5), ("lower", 0.0)]
)
def test_screening_accepts_in_attempt_order(fake_evaluate, rule, tolerance):
    result = run_fake(rule, tolerance, screen_batch=4)
    attempts = result.attempts
    assert [a.attempt for a in attempts] == list(range(len(attempts)))
    for a in attempts:
        assert a.accepted == screen(a.no_scale_acc, 50.0, rule, tolerance)
        assert a.no_scale_acc == pytest.approx(49.0 + 0.5 * (sum(a.channels) % 5))
    accepted = [a for a in attempts if a.accepted]
    assert len(accepted) == 3 and attempts[-1].accepted  # stops at the third acceptance
    assert list(result.trials) == accepted
    if rule != "within" or tolerance < 1.0:
        assert not all(a.accepted for a in attempts)  # something was rejected
    means = np.linspace(0, 1, 128)
    assert result.trial_means[0] == pytest.approx(means[list(result.trials[0].channels)].tolist())
    assert result.scales[0].passing_acc == 50.0 and result.scales[0].baseline_acc == 70.0
    assert {p: s.crop for p, s in result.scales.items()} == {
        0: 224,
        10: 201,
        20: 179,
        30: 156,
        40: 134,
        50: 112,
    }


def test_screen_batch_does_not_change_the_outcome(fake_evaluate):
    results = [run_fake("no_higher", screen_batch=n) for n in (1, 3, 50)]
    assert results[0] == results[1] == results[2]
    # the prefix is shared: screening groups at no scale, then one sweep over all scales
    sweeps = [names for names, crops in fake_evaluate if crops == (201, 179, 156, 134, 112)]
    assert len(sweeps) == 3 and all(n[:2] == ("baseline", "passing") and len(n) == 5 for n in sweeps)
    assert all(crops in ((224,), (201, 179, 156, 134, 112)) for _, crops in fake_evaluate)


@pytest.mark.parametrize("on_failure", ["error", "skip"])
def test_attempt_cap_names_block_count_and_fix(fake_evaluate, monkeypatch, on_failure):
    """A set whose screening finds too few random sets stops the stage (error), or is skipped with that
    message (skip, the default): the other sets' results are kept and the report says why."""
    params = AblateParams(
        blocks=("2.1",),
        trials=3,
        screening={"2.1": ScreenParams("lower", 0.0)},
        max_attempts=4,
        on_screening_failure=on_failure,
    )
    assert AblateParams().on_screening_failure == "skip"
    rejected = lambda c, crop: 50.0 if c.name != "baseline" else 70.0  # noqa: E731 - nothing is lower
    monkeypatch.setattr(sys.modules[__name__], "fake_accuracy", rejected)
    if on_failure == "error":
        with pytest.raises(AblationError) as error:
            ablate.ablate_block(None, FakeSet(), "2.1", PASSING, np.zeros(128), params, progress=False)
        message = str(error.value)
    else:
        result = ablate.ablate_block(None, FakeSet(), "2.1", PASSING, np.zeros(128), params, progress=False)
        assert result.skipped is not None and result.skipped.startswith("screening failed: ablate 2.1")
        assert not result.scales and ablate.set_metrics(result) == SetMetrics(len(PASSING), 128)
        message = result.skipped
    for part in ("2.1", "only 0 of 3", "after 4 attempts", "'lower'", "ablate.max_attempts",
                 "ablate.screening.layer2_1", "ablate.trials"):  # fmt: skip
        assert part in message, part


def test_blocks_without_passing_channels_are_skipped(fake_evaluate):
    params = AblateParams(blocks=("2.1",), trials=2)
    result = ablate.ablate_block(None, FakeSet(), "2.1", [], np.zeros(128), params, progress=False)
    assert result.skipped == "no passing channels" and not fake_evaluate
    assert not result.scales and not result.attempts and result.screening is None
    assert ablate.set_metrics(result) == SetMetrics(n_passing=0, n_channels=128)
    with pytest.raises(ParamsError, match="no entry for layer2_0"):
        ablate.ablate_block(None, FakeSet(), "2.0", [1], np.zeros(128), params, progress=False)


def test_a_block_the_criteria_never_probed_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("ablate: {blocks: ['2.1', '3.1']}\n")
    passing = Path("outputs/criteria/passing.json")
    passing.parent.mkdir(parents=True)
    passing.write_text(json.dumps({"2.1": [1, 2]}))
    assert cli.main(["ablate"]) == 2
    message = capsys.readouterr().err
    for part in ("ablate.blocks lists 3.1", "passing.json does not cover (probed: 2.1)", "criteria.blocks"):
        assert part in message, message


def test_a_block_the_natural_pass_does_not_measure_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("ablate: {blocks: ['2.1', '3.1']}\nnatural: {blocks: ['2.1']}\n")
    passing = Path("outputs/criteria/passing.json")
    passing.parent.mkdir(parents=True)
    passing.write_text(json.dumps({"2.1": [1], "3.1": [2]}))
    assert cli.main(["ablate"]) == 2
    message = capsys.readouterr().err
    assert "ablate.blocks lists 3.1, whose mean activations the natural stage does not measure" in message
    assert "add them to natural.blocks" in message
    assert len(message.strip().splitlines()) == 1, message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"weights": "custom weights 0123abcd"}, "was made with custom weights 0123abcd, this run's model.weights "
         "is RANDOM WEIGHTS (not the paper's model)"),
        ({"count": 999}, "was measured on 999 images, the evaluation cache holds 1000"),
    ],
    ids=["other_weights", "other_images"],
)  # fmt: skip
def test_mean_activations_of_another_run_are_refused(tmp_path, monkeypatch, capsys, change, expected):
    """The means a mean ablation writes come from stage natural: a file of other weights or another image
    set (stages run by hand after a change) is an error naming it, not a silent stale value."""
    monkeypatch.setattr(ablate, "load_eval", lambda path: FakeSet())
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("model: {weights: 'random:0', device: cpu}\nablate: {blocks: ['2.1']}\n")
    Path("outputs/criteria").mkdir(parents=True)
    Path("outputs/criteria/passing.json").write_text(json.dumps({"2.1": [1]}))
    stats = fake_natural(np.random.default_rng(0), 128, images=len(FakeSet()))
    write_natural("2.1", replace(stats, **change))
    assert cli.main(["ablate"]) == 2
    message = capsys.readouterr().err
    assert "outputs/natural/layer2_1.npz " + expected in message, message
    assert "re-run `rsi natural`" in message and len(message.strip().splitlines()) == 1, message


def test_outputs_are_dvc_safe(fake_evaluate, tmp_path):
    result = run_fake("within", 1.0)
    published = replace(run_fake("within", 1.0), channel_set="published")
    settings = {"images": 1000, "random_weights": True, "generated_data": False, "crop_rule": "authors_code"}
    settings["numerics"] = {"cudnn_allow_tf32": False, "matmul_allow_tf32": False}
    record = ablate.ablation_metrics([result, published], settings)
    write_ablation(
        record,
        [result, published],
        settings,
        metrics_path=tmp_path / "metrics" / "ablation.json",
        plots_path=tmp_path / "plots" / "ablation_ratio.csv",
        trials_path=tmp_path / "outputs" / "ablation" / "trials.json",
    )
    metrics = json.loads((tmp_path / "metrics" / "ablation.json").read_text())
    assert metrics == record.to_json()

    def leaves(tree, path=""):
        for key, value in tree.items():
            assert re.fullmatch(r"[A-Za-z0-9_]+", key), key  # no dots: DVC reads them as nesting
            if isinstance(value, dict):
                yield from leaves(value, f"{path}.{key}")
            else:
                yield f"{path}.{key}", value

    names = dict(leaves(metrics))
    for name, value in names.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), name
    # one line per number a reader compares: no per-trial accuracies, no paper values, no settings
    assert all(not re.search(r"trial_|paper|crop", name) for name in names), names
    assert metrics["cudnn_allow_tf32"] == 0 and metrics["matmul_allow_tf32"] == 0
    assert metrics["layer2_1"]["baseline_acc"]["no_scale"] == 70.0
    for channel_set in ("run", "published"):
        block = metrics["layer2_1"][channel_set]
        for percent, entry in result.scales.items():
            key = "no_scale" if percent == 0 else f"scale_{percent}"
            assert set(block[key]) == {"passing_acc", "random_acc_mean", "ratio", "sem"}
            assert (block[key]["ratio"], block[key]["sem"]) == pytest.approx(
                eq3_ratio(entry.passing_acc, entry.random_accs)
            )
    with open(tmp_path / "plots" / "ablation_ratio.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(PLOT_FIELDS) and len(rows) == 12
    assert [(r["channel_set"], int(r["scale"])) for r in rows[:7]] == [
        ("run", p) for p in (0, 10, 20, 30, 40, 50)
    ] + [("published", 0)]
    assert rows[1]["label"] == "2.1 run · 10 %" and rows[6]["label"] == "2.1 published · 00 % (no scale)"
    assert float(rows[1]["ratio"]) == pytest.approx(metrics["layer2_1"]["run"]["scale_10"]["ratio"])
    assert float(rows[1]["no_scale_ratio"]) == pytest.approx(metrics["layer2_1"]["run"]["no_scale"]["ratio"])
    trials = json.loads((tmp_path / "outputs" / "ablation" / "trials.json").read_text())
    assert trials["settings"]["random_weights"] is True
    assert trials["blocks"]["layer2_1"]["run"]["trials"][0]["channels"] == list(result.trials[0].channels)
    assert trials["blocks"]["layer2_1"]["published"]["channel_set"] == "published"


def test_channel_sets_are_checked_and_published_needs_a_published_list():
    params = load_section({}, "ablate", AblateParams)
    assert params.channel_sets == ("run", "published") and params.tf32 is False
    only_run = load_section(
        {
            "ablate": {
                "blocks": ["layer2_0"],
                "channel_sets": ["run"],
                "screening": {"layer2_0": {"rule": "lower"}},
            }
        },
        "ablate",
        AblateParams,
    )
    assert only_run.channel_sets == ("run",)
    with pytest.raises(ParamsError) as error:
        load_section({"ablate": {"blocks": ["layer2_0", "layer2_1"]}}, "ablate", AblateParams)
    message = str(error.value)
    assert "\n" not in message
    for part in ("published", "no channel list for layer2_0", "only for layer2_1, layer3_1", "ablate.blocks",
                 "ablate.channel_sets"):  # fmt: skip
        assert part in message, message
    with pytest.raises(ParamsError, match="unknown channel set 'paper'"):
        load_section({"ablate": {"channel_sets": ["run", "paper"]}}, "ablate", AblateParams)
    with pytest.raises(ParamsError, match="listed twice"):
        load_section({"ablate": {"channel_sets": ["run", "run"]}}, "ablate", AblateParams)


def test_a_block_without_a_published_list_is_a_one_line_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("ablate: {blocks: ['2.0'], channel_sets: [published]}\n")
    assert cli.main(["ablate"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the authors published no channel list for layer2_0 (only for layer2_1, layer3_1)" in line


# ----------------------------------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """12 generated JPEGs (3 classes), a 64 px cache, and a seeded random ResNet18 whose BatchNorm statistics
    are set from these images (so predictions differ between images and conditions; an uncalibrated random
    net predicts one class for everything). Labels are set so that accuracies are far from 0."""
    directory = tmp_path_factory.mktemp("ablate")
    listing = data.list_folders(
        data.write_generated_folders(directory / "val", data.GeneratedParams(classes=3, per_class=4, size=40))
    )
    data.decode_to_cache(listing, directory / "eval", size=CACHE, progress=False)
    eval_set = load_eval(directory / "eval")
    model = load_resnet18("random:0")
    views = ablation_view(torch.from_numpy(np.array(eval_set.images)).permute(0, 3, 1, 2), VIEW, VIEW)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(views)
    model.eval()
    with torch.no_grad():
        predictions = model(views).argmax(1).numpy()
    labels = np.where(np.arange(12) % 3 == 0, 999, predictions)  # 8 of 12 right when unablated
    np.save(directory / "eval" / "labels.npy", labels.astype(np.int64))
    return directory, model, load_eval(directory / "eval")


def naive_accuracy(model, root: Path, items, labels, block, channels, means, crop) -> float:
    """The authors' way, one image at a time: PIL Resize(64) → CenterCrop(crop) → [Resize(56)] → ToTensor →
    Normalize, every step on the PIL image as their transforms.Compose ran it, the full torchvision
    forward, a forward hook replacing the block output's chosen channels."""
    layer, index = (int(x) for x in block.split("."))
    chosen = torch.tensor(channels, dtype=torch.long)
    values = torch.tensor([means[c] for c in channels], dtype=torch.float32)

    def hook(module, inputs, output):
        output = output.clone()
        output[:, chosen] = values[None, :, None, None]
        return output

    handle = getattr(model, f"layer{layer}")[index].register_forward_hook(hook) if channels else None
    correct = 0
    try:
        for item, label in zip(items, labels, strict=True):
            image = T.CenterCrop(crop)(T.Resize(CACHE)(Image.open(root / item).convert("RGB")))
            if crop != VIEW:
                image = T.Resize(VIEW)(image)
            tensor = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(image))
            with torch.no_grad():
                correct += int(model(tensor[None]).argmax(1).item() == label)
    finally:
        if handle is not None:
            handle.remove()
    return 100.0 * correct / len(items)


def ablate_tiny(tiny, rule: str, tolerance: float, screen_batch: int):
    """Block 2.1 of the tiny network ablated at no scale, 10 % and 50 % with 2 trials: (Post means, result)."""
    _, model, eval_set = tiny
    means = natural.natural_pass(model, eval_set, ["2.1"], batch_size=5, progress=False)["2.1"].mean[2]
    params = AblateParams(
        blocks=("2.1",),
        percents=(10, 50),
        trials=2,
        screening={"2.1": ScreenParams(rule, tolerance)},
        max_attempts=40,
        screen_batch=screen_batch,
        batch_size=5,
        channel_sets=("run",),
    )
    return means, ablate.ablate_block(model, eval_set, "2.1", PASSING, means, params, seed=0, progress=False)


def test_accuracies_equal_naive_computation(tiny):
    directory, model, eval_set = tiny
    means, result = ablate_tiny(tiny, "within", 100.0, screen_batch=2)
    items, labels = eval_set.index["files"], eval_set.labels

    def naive(channels, crop):
        return naive_accuracy(model, directory / "val", items, labels, "2.1", list(channels), means, crop)

    seen = set()
    for entry in result.scales.values():
        assert entry.baseline_acc == naive([], entry.crop)
        assert entry.passing_acc == naive(PASSING, entry.crop)
        for trial, accuracy in zip(result.trials, entry.random_accs, strict=True):
            assert accuracy == naive(trial.channels, entry.crop)
        seen.update([entry.baseline_acc, entry.passing_acc, *entry.random_accs])
    assert result.scales[0].baseline_acc == pytest.approx(100 * 8 / 12)
    assert len(seen) >= 3  # the conditions and scales do change predictions: the comparison has teeth
    assert [s.crop for s in result.scales.values()] == [56, 50, 28]


# what ablate_block returned at cdd939d, before screening and the sweep were split: per attempt its number,
# no-scale correct count of 12 images and verdict; per scale percent the crop and the correct counts
# (baseline, passing, each trial); the accepted sets' channels
UNSPLIT_ATTEMPTS = [(0, 2, False), (1, 2, False), (2, 2, False), (3, 3, False), (4, 3, False),
                    (5, 2, False), (6, 1, True), (7, 3, False), (8, 0, True)]  # fmt: skip
UNSPLIT_SCALES = {0: (56, 8, 2, [1, 0]), 10: (50, 1, 2, [0, 0]), 50: (28, 0, 0, [0, 0])}
UNSPLIT_TRIALS = {
    6: [1, 2, 9, 10, 18, 21, 35, 63, 69, 70, 73, 74, 83, 86, 90, 94, 95, 97, 99, 100, 111, 112, 122, 123],
    8: [6, 18, 25, 27, 29, 30, 35, 51, 55, 57, 59, 62, 65, 74, 81, 83, 85, 86, 89, 95, 105, 114, 118, 125],
}


def test_the_split_stage_equals_the_unsplit_one_on_a_network(tiny):
    """screen_random_sets + scale_sweep give what the single ablate_block gave (same draws, same order,
    same rejections) on the seeded network, with a strict rule that rejects most attempts."""
    _, result = ablate_tiny(tiny, "lower", 0.0, screen_batch=3)
    count = lambda accuracy: round(accuracy * 12 / 100)  # noqa: E731 - percent of 12 images
    assert [(a.attempt, count(a.no_scale_acc), a.accepted) for a in result.attempts] == UNSPLIT_ATTEMPTS
    assert {a.attempt: list(a.channels) for a in result.trials} == UNSPLIT_TRIALS
    scales = {
        p: (s.crop, count(s.baseline_acc), count(s.passing_acc), [count(a) for a in s.random_accs])
        for p, s in result.scales.items()
    }
    assert scales == UNSPLIT_SCALES and list(result.scales) == [0, 10, 50]


def test_intervention_changes_exactly_the_chosen_channels(tiny):
    _, model, eval_set = tiny
    images = ablation_view(torch.from_numpy(np.array(eval_set.images[:4])).permute(0, 3, 1, 2), 50, VIEW)
    tap = Tap("2.1", "post")
    post = forward_taps(model, images, [tap], detach=True)[tap]
    before = post.clone()
    means = np.linspace(0.1, 2.0, 128)
    chosen = [3, 17, 64, 127]
    ablated = Condition.mean_ablation("x", chosen, means).apply(post)
    assert torch.equal(post, before)  # the shared prefix output is not modified in place
    changed = (ablated != post).flatten(2).any(-1).any(0)
    assert changed.nonzero().flatten().tolist() == chosen
    for c in chosen:
        assert torch.all(ablated[:, c] == torch.tensor(means[c], dtype=torch.float32))
    assert Condition("baseline").apply(post) is post
    # what layer3 receives in a full forward with the hook is what the suffix receives
    received = {}
    hooks = [
        model.layer2[1].register_forward_hook(lambda m, i, o: ablated),
        model.layer3[0].register_forward_pre_hook(lambda m, i: received.__setitem__("x", i[0].clone())),
    ]
    try:
        with torch.no_grad():
            full = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(received["x"], ablated)
    torch.testing.assert_close(forward_from(model, "2.1", ablated), full)


# ----------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tiny, tmp_path, monkeypatch):
    """`rsi natural` and `rsi ablate` under torchrun with 2 CPU ranks (gloo) write what one process writes."""
    directory, _, eval_set = tiny
    # labels the plain random:0 model (which the CLI loads) gets right for 2 of 3 images
    shared = tmp_path / "eval"
    shared.mkdir()
    for name in ("images.npy", "resized.npy", "index.json"):
        (shared / name).write_bytes((directory / "eval" / name).read_bytes())
    views = ablation_view(torch.from_numpy(np.array(eval_set.images)).permute(0, 3, 1, 2), VIEW, VIEW)
    with torch.no_grad():
        predictions = load_resnet18("random:0")(views).argmax(1).numpy()
    np.save(shared / "labels.npy", np.where(np.arange(12) % 3 == 0, 999, predictions).astype(np.int64))
    params = (
        "seed: 3\nmodel: {weights: 'random:0', device: cpu}\n"
        "natural: {blocks: ['2.1'], k: 4, batch_size: 4}\n"
        "ablate: {blocks: ['2.1'], channel_sets: [run], percents: [30], trials: 2, screen_batch: 3, batch_size: 4,"
        " max_attempts: 9,"
        " screening: {layer2_1: {rule: within, tolerance: 100.0}}}\n"
    )
    results = {}
    for ranks in (1, 2):
        work = tmp_path / f"ranks{ranks}"
        (work / "outputs" / "criteria").mkdir(parents=True)
        (work / "outputs" / "eval").symlink_to(shared, target_is_directory=True)
        (work / "outputs" / "criteria" / "passing.json").write_text(json.dumps({"2.1": PASSING}))
        (work / "params.yaml").write_text(params)
        if ranks == 1:  # one process: in this interpreter
            monkeypatch.chdir(work)
            assert cli.main(["natural"]) == 0 and cli.main(["ablate"]) == 0
        else:  # torchrun, once per stage (a process group is set up once per worker)
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            for stage in ("natural", "ablate"):
                command = [torchrun, "--standalone", f"--nproc_per_node={ranks}", "-m", "rsi.cli", stage]
                done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stderr[-3000:]
        stored = np.load(work / "outputs" / "natural" / "layer2_1.npz")
        results[ranks] = (
            {k: stored[k] for k in ("mean", "topk", "topk_values")},
            json.loads((work / "metrics" / "ablation.json").read_text()),
            json.loads((work / "outputs" / "ablation" / "trials.json").read_text())["blocks"],
        )
    (one_natural, one_metrics, one_trials), (two_natural, two_metrics, two_trials) = results[1], results[2]
    np.testing.assert_allclose(two_natural["mean"], one_natural["mean"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(two_natural["topk"], one_natural["topk"])
    np.testing.assert_allclose(two_natural["topk_values"], one_natural["topk_values"], rtol=1e-6)
    assert two_metrics == one_metrics  # counts all-reduced: a rank that saw everything would double them
    assert two_trials == one_trials
    assert one_metrics["layer2_1"]["baseline_acc"]["no_scale"] == pytest.approx(100 * 8 / 12)


def test_the_stage_runs_in_full_float32_and_ablates_the_published_set(
    fake_evaluate, tf32_flags, tmp_path, monkeypatch
):
    """`rsi ablate` turns TF32 off before it computes (PyTorch leaves cuDNN TF32 on by default; the flags are
    settable without CUDA) and ablates rsi.paper's 2.1 list with random controls drawn outside it."""
    seen = []
    inner = ablate.evaluate

    def evaluate(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return inner(*args, **kwargs)

    monkeypatch.setattr(ablate, "evaluate", evaluate)
    monkeypatch.setattr(ablate, "load_eval", lambda path: FakeSet())
    monkeypatch.setattr(ablate, "load_model", lambda weights, arch: torch.nn.Identity())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # restored by tf32_flags
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(
        "model: {weights: 'random:0', device: cpu}\nnatural: {blocks: ['2.1']}\ncriteria: {blocks: ['2.1']}\n"
        "ablate: {blocks: ['2.1'], channel_sets: [published], trials: 2}\n"
    )
    Path("outputs/criteria").mkdir(parents=True)
    Path("outputs/criteria/passing.json").write_text(json.dumps({"2.1": []}))
    natural_stats = fake_natural(np.random.default_rng(0), 128, images=len(FakeSet()))
    write_natural("2.1", natural_stats)
    assert cli.main(["ablate"]) == 0
    assert seen and set(seen) == {(False, False)}
    metrics = json.loads(Path("metrics/ablation.json").read_text())
    assert metrics["cudnn_allow_tf32"] == 0 and metrics["matmul_allow_tf32"] == 0
    assert list(metrics["layer2_1"]) == ["baseline_acc", "published"]
    record = json.loads(Path("outputs/ablation/trials.json").read_text())["blocks"]["layer2_1"]["published"]
    published = set(ablate.paper.PUBLISHED_PASSING["2.1"])
    assert set(record["passing"]) == published and len(record["trials"]) == 2
    for trial in record["attempts"]:
        assert len(trial["channels"]) == 23 and not set(trial["channels"]) & published
    # DESIGN: a mean ablation writes each channel's mean center-neuron Post (row 2: In, Pre, Post), not
    # its Pre mean, which can be negative
    post = natural_stats.mean[TAP_KINDS.index("post")]
    assert record["passing_means"] == [float(post[c]) for c in record["passing"]]
    for trial in record["trials"]:
        assert trial["means"] == [float(post[c]) for c in trial["channels"]]
    assert record["trials"][0]["channels"] != ablate.draw_random_set(
        sorted(set(range(128)) - published), 23, 0, "2.1", record["trials"][0]["attempt"]
    )  # keyed by the set's name too: not the draw a run set of the same channels would get


def test_the_tf32_switch_is_torch_2_0s_default_convolutions_only(tf32_flags):
    """`ablate.tf32` / `natural.tf32` try the authors' torch 2.0 arithmetic: TF32 cuDNN convolutions, float32
    matmuls (the final fc), as torch has defaulted since 1.12; off is full float32 for both."""
    from rsi.runtime import full_float32

    assert full_float32(True) == {"cudnn_allow_tf32": True, "matmul_allow_tf32": False}
    assert full_float32(False) == {"cudnn_allow_tf32": False, "matmul_allow_tf32": False}


def test_trials_below_no_scale_counts_the_trials_consistent_at_every_scale():
    """Per trial t: passing_acc_p / random_acc_(t,p) < passing_acc_0 / random_acc_(t,0) at every p."""
    from rsi.artifacts.ablation import ScaleResult

    scales = {
        0: ScaleResult(224, 70.0, 60.0, (60.0, 50.0, 40.0)),  # no-scale ratios 1.0, 1.2, 1.5
        10: ScaleResult(201, 65.0, 45.0, (50.0, 40.0, 30.0)),  # 0.9, 1.125, 1.5 (not below)
        20: ScaleResult(179, 60.0, 40.0, (50.0, 35.0, 0.0)),  # 0.8, 1.143, inf
    }
    assert ablate.trials_below_no_scale(scales) == 2  # trials 0 and 1; trial 2 fails at 10 % and 20 %
    scales[20] = ScaleResult(179, 60.0, 40.0, (50.0, 30.0, 30.0))  # 0.8, 1.333: trial 1 fails at 20 %
    assert ablate.trials_below_no_scale(scales) == 1
    scales[0] = ScaleResult(224, 70.0, 60.0, (0.0, 50.0, 40.0))  # trial 0's no-scale ratio is inf: no claim
    assert ablate.trials_below_no_scale(scales) == 0
