"""The artifact end to end: `dvc repro` in a temporary copy of the repository (demo profile, offline, tiny
sizes), incremental re-runs, `dvc metrics diff`, figures and report, and the demo's params."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rsi import launch
from rsi.demo_params import demo_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "TQDM_DISABLE": "1",
    }
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def ran_stages(log: str) -> set[str]:
    """The stages a `dvc repro` log shows running, but data-listing, which runs every time (always_changed:
    it lists data.root, which DVC cannot watch) and changes its output only when the images do."""
    return set(re.findall(r"Running stage '([^']+)'", log)) - {"data-listing"}


def settled(log: str) -> bool:
    """A `dvc repro` that re-ran nothing: only data-listing ran, and prepare-data found its digest unchanged."""
    return ran_stages(log) == set() and "Stage 'prepare-data' didn't change, skipping" in log


def tiny_params() -> dict:
    params = demo_params(REPO / "params.demo.yaml", base_file=REPO / "params.yaml", offline=True)
    params["fz"].update(steps=3, image_size=32, max_channels=6, batch_channels=6)
    params["data"]["generated"] = {"classes": 3, "per_class": 2, "size": 64}
    params["activations"]["extractor"] = "taps"  # thingsvision is checked against the taps elsewhere
    params["ablate"].update(trials=2, batch_size=8)
    params["figures"]["channels"] = {"layer2_1": [0]}
    params["criteria"]["compare_pre_readings"] = False  # a test below switches it on
    return params


def copy_checkout(root: Path) -> None:
    """The files a clone would have, including not yet committed ones (the code under test)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)


def git_workspace(root: Path, params: dict) -> Path:
    """A clone-like copy of the checkout at ``root``, ``params`` as its params.yaml, committed."""
    copy_checkout(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "start"], root)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A git clone-like copy of the checkout, with the tiny offline profile as params.yaml."""
    return git_workspace(tmp_path_factory.mktemp("repo"), tiny_params())


@pytest.fixture(scope="module")
def first_run(workspace) -> str:
    return run(["dvc", "repro"], workspace)


def test_dvc_repro_runs_every_stage(workspace, first_run):
    expected = {
        "prepare-data",
        "fz@layer2_0",
        "fz@layer2_1",
        "activations",
        "rerun-fz",
        "criteria",
        "natural",
    }
    expected |= {
        "ablate",
        "whole-channel",
        "figures",
        "report",
        "stability@0",
        "pre-reading",
        "natural-criteria",
    }
    assert ran_stages(first_run) == expected
    for path in ("metrics/criteria.json", "metrics/ablation.json", "metrics/data.json", "outputs/report.md"):
        assert (workspace / path).is_file(), path
    assert "Running stage 'data-listing'" in first_run
    assert settled(run(["dvc", "repro"], workspace))


def test_result_stages_record_full_float32(workspace, first_run):
    """TF32 off in every result stage (PyTorch's default leaves cuDNN TF32 on): each records the flags."""
    off = {"cudnn_allow_tf32": False, "matmul_allow_tf32": False}
    for path in ("outputs/activations/layer2_1.npz", "outputs/natural/layer2_1.npz"):
        with np.load(workspace / path) as stored:
            assert {key: bool(stored[key]) for key in off} == off, path
    assert json.loads((workspace / "outputs/criteria/settings.json").read_text())["numerics"] == off
    assert json.loads((workspace / "outputs/whole_channel/settings.json").read_text())["numerics"] == off
    ablation = json.loads((workspace / "metrics/ablation.json").read_text())
    assert {key: ablation[key] for key in off} == {key: 0 for key in off}


def test_figures_and_report_come_out_of_the_run_labelled(workspace, first_run):
    pngs = sorted((workspace / "outputs/figures").glob("*.png"))
    assert pngs, "no figure was drawn"
    for png in pngs:
        with Image.open(png) as image:
            width, height = image.size
            assert width >= 300 and height >= 300, (png.name, image.size)
            assert len(set(image.convert("L").getdata())) > 10, f"{png.name} is blank"
    report = (workspace / "outputs/report.md").read_text()
    assert "RANDOM WEIGHTS" in report and "GENERATED" in report.upper()
    # the demo profile ablates block 2.1's published list: Fig. 2 is drawn even if no channel passes here
    assert "fig2_ablation.png" in {png.name for png in pngs}
    assert "### Block 2.1: the authors' published channels" in report


def test_changing_a_criteria_bound_reruns_only_criteria_and_downstream(workspace, first_run):
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "first run"], workspace)
    before = json.loads((workspace / "metrics/criteria.json").read_text())
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["criteria"].update(eq2_low=1e-9, eq2_high=1e9, strict=False)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = run(["dvc", "repro"], workspace)
    stages = ran_stages(log)
    assert "criteria" in stages and "report" in stages
    assert not stages & {"prepare-data", "fz@layer2_0", "fz@layer2_1", "activations", "natural"}
    after = json.loads((workspace / "metrics/criteria.json").read_text())
    assert after != before
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], workspace))
    changed = diff["metrics/criteria.json"]
    assert any(key.endswith("eq2_pass") for key in changed), changed


def test_changing_one_blocks_jitter_rerenders_only_that_block(workspace, first_run):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["fz"]["blocks"]["layer2_1"]["jitter"] = 8
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran_stages(run(["dvc", "repro"], workspace))
    assert "fz@layer2_1" in stages and "activations" in stages
    assert "fz@layer2_0" not in stages and "prepare-data" not in stages and "natural" not in stages


def test_a_second_fz_seed_reports_stability_without_rerendering_the_main_run(workspace, first_run):
    run(["dvc", "repro"], workspace)  # settle whatever an earlier test changed
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["criteria"]["seeds"] = [0, 1]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran_stages(run(["dvc", "repro"], workspace))
    assert {"stability@1", "criteria"} <= stages
    # stability@0 re-runs (it reads criteria.seeds) but only rewrites its note: the main run is not redone
    assert not stages & {"fz@layer2_0", "fz@layer2_1", "activations"}
    assert (workspace / "outputs/stability/seed0/main_run.txt").is_file()
    assert not (workspace / "outputs/stability/seed0/fz").exists()
    assert (workspace / "outputs/stability/seed1/fz/layer2_1/pre.npz").is_file()
    stability = json.loads((workspace / "metrics/criteria.json").read_text())["stability"]["layer2_1"]
    assert {"passing_seed0", "passing_seed1", "jaccard_seed0_seed1"} <= set(stability)


def test_comparing_pre_readings_adds_the_lucent_reference_counts_to_the_report(workspace, first_run):
    run(["dvc", "repro"], workspace)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["criteria"]["compare_pre_readings"] = True
    params["criteria"]["seeds"] = [0, 1]  # the counts comparable with the paper's get a spread too
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran_stages(run(["dvc", "repro"], workspace))
    assert {"pre-reading", "report"} <= stages
    assert not stages & {"fz@layer2_0", "fz@layer2_1", "activations", "natural", "ablate"}
    reference = json.loads((workspace / "metrics/criteria_lucent_reference.json").read_text())
    assert reference["layer2_1"]["channels"] == 6
    spread = reference["stability"]["layer2_1"]
    assert {"passing_seed0", "passing_seed1", "jaccard_seed0_seed1"} <= set(spread)
    assert spread["passing_seed0"] == reference["layer2_1"]["passing"]
    seed1 = workspace / "outputs/reference/stability/seed1"
    assert json.loads((seed1 / "fz/layer2_1/settings.json").read_text())["seed"] == 1
    for tap in ("post", "pre"):  # Post is stage stability's seed-1 FZ, Pre this reading's own
        same = (seed1 / f"fz/layer2_1/{tap}.npz").read_bytes() == (
            workspace / f"outputs/stability/seed1/fz/layer2_1/{tap}.npz"
        ).read_bytes()
        assert same == (tap == "post"), tap
    assert json.loads((seed1 / "criteria/passing.json").read_text()).keys() == {"2.1"}
    settings = json.loads((workspace / "outputs/reference/fz/layer2_1/settings.json").read_text())
    assert "2.1/post" in json.dumps(settings)  # the Pre objective read the block output, as lucent did
    # this reading's own record of the authors' re-render case (criteria.rerun_fz 0: listed, none replaced)
    from rsi.artifacts.rerun import read_rerun, rerun_file

    record = read_rerun(rerun_file("2.1", workspace / "outputs/reference"))
    assert record.tries == 0 and record.channels.size == 0
    assert reference["layer2_1"]["authors_rerun"] == record.hits.size
    report = (workspace / "outputs/report.md").read_text()
    assert "the authors' reading: comparable with the paper's counts" in report
    assert "Under the authors' reading of Pre (stage pre-reading: the counts comparable" in report
    assert json.loads((workspace / "outputs/reference/criteria/passing.json").read_text()).keys() == {"2.1"}
    counts = (workspace / "outputs/reference/criteria/passing_counts.csv").read_text().splitlines()
    passing = reference["layer2_1"]["passing"]
    assert counts == ["block,channels,passing,percent", f"2.1,6,{passing},{round(100 * passing / 6, 4)}"]


def test_natural_image_criteria_add_their_counts_to_the_report(workspace, first_run):
    run(["dvc", "repro"], workspace)  # settle whatever an earlier test changed
    assert json.loads((workspace / "metrics/criteria_natural.json").read_text()) == {}  # off: nothing
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["criteria"]["natural_images"] = True
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran_stages(run(["dvc", "repro"], workspace))
    assert {"natural-criteria", "figures", "report"} <= stages
    # criteria (and pre-reading) declare the whole criteria section: they re-run, their outputs do not change
    assert not stages & {"fz@layer2_0", "fz@layer2_1", "activations", "natural", "ablate"}
    natural = json.loads((workspace / "metrics/criteria_natural.json").read_text())["layer2_1"]
    assert natural["channels"] == 128 and natural["fz_probed"] == 6
    report = (workspace / "outputs/report.md").read_text()
    assert "## Natural-image criteria (ours, not the paper's)" in report
    assert f"| 2.1 | {natural['fz_passing']} of 6 | {natural['passing']} of 128 |" in report


def test_two_processes_per_stage_write_the_locked_bytes(workspace, first_run):
    """launch.nproc_per_node: 2 (two gloo workers per sharded stage, rsi.launch) reruns nothing, and the
    sharded stages forced under it, with no finished chunks to reuse, write what dvc.lock recorded; the
    first fz stage pools the other stale block's FZs (launch.fz_pool), whose own stage then only assembles."""
    run(["dvc", "repro"], workspace)  # settle whatever an earlier test changed
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    before = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    params["launch"] = {"nproc_per_node": 2}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(["dvc", "repro"], workspace)) == set()
    shutil.rmtree(workspace / "outputs" / ".resume")
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    del lock["stages"]["fz@layer2_1"]  # as if never run: DVC will run it (rsi.launch.outdated_stages)
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    # launch.fz_pool: stale (the default): the first fz stage also renders that block's chunks
    log = run(["dvc", "repro", "--force", "--single-item", "fz@layer2_0"], workspace)
    assert "also rendering the chunks of 1 other block(s) whose fz stage will run too (layer2_1)" in log, log
    chunks = sorted((workspace / "outputs" / ".resume" / "fz").glob("*/layer2_1/*/*/chunk_*.npz"))
    made = [path.stat().st_mtime_ns for path in chunks]
    assert len(chunks) == 2  # pre and post, one chunk of 6 channels each
    # stability@1 and pre-reading relaunch too (off in these params); their activations once differed from
    # one process's because workers ran one thread each (CPU rounding depends on it): rsi.launch.worker_threads
    sharded = ["fz@layer2_1", "natural", "ablate"]
    log = run(["dvc", "repro", "--force", "--single-item", *sharded], workspace)
    assert ran_stages(log) == set(sharded) and log.count("2 process(es) per node") == len(sharded)
    assert "also rendering" not in log  # layer2_0 is fresh
    assert [path.stat().st_mtime_ns for path in chunks] == made  # fz@layer2_1 only assembled them
    after = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    for name in ["fz@layer2_0", *sharded]:  # every output's hash as one process wrote it
        assert after[name]["outs"] == before[name]["outs"], name
    del params["launch"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_speed_only_keys_rerun_nothing(workspace, first_run):
    run(["dvc", "repro"], workspace)  # settle whatever an earlier test changed
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["fz"]["chunk_batches"] = 2
    params["ablate"]["screen_batch"] = 3
    params["data"]["workers"] = 1
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(["dvc", "repro"], workspace)) == set()


def test_batch_sizes_are_declared(workspace, first_run):
    """Batch sizes change float rounding (DESIGN: batch geometry is declared): DVC sees them as changed."""
    run(["dvc", "repro"], workspace)  # settle whatever an earlier test changed
    original = (workspace / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["activations"]["batch_size"] = 3
    params["natural"]["batch_size"] = 3
    params["ablate"]["batch_size"] = 5
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], workspace))
    assert {"activations", "natural", "ablate"} <= set(status), status
    stages = list(yaml.safe_load((workspace / "dvc.lock").read_text())["stages"])
    # rsi's reading of dvc.lock is DVC's (status also lists .dvc files, such as data.dvc)
    assert set(launch.outdated_stages(stages, workspace)) == set(status) & set(stages)
    (workspace / "params.yaml").write_text(original)


def test_changing_the_channel_sets_reruns_only_ablate_figures_and_report(workspace, first_run):
    run(["dvc", "repro"], workspace)  # settle whatever an earlier test changed
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "before channel sets"], workspace)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], workspace))
    (rendered,) = [p for p in plots["data"]["plots/ablation_ratio.csv"] if p["type"] == "vega"]
    spec = json.dumps(rendered["content"], ensure_ascii=False)
    assert "Eq. 3 ablation ratio" in spec and "2.1 published · 00 % (no scale)" in spec
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    assert params["ablate"]["channel_sets"] == ["run", "published"]
    params["ablate"]["channel_sets"] = ["published"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(["dvc", "repro"], workspace)) == {"ablate", "figures", "report"}
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], workspace))["metrics/ablation.json"]
    assert any(key.startswith("layer2_1.run.") for key in diff), diff  # this run's set is gone


def test_dvc_yaml_declares_only_existing_params():
    """Every params key a stage declares exists in params.yaml (DVC fails on missing ones)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            node = params
            for part in str(key).replace("${key}", "layer2_1").split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: params key {key} missing"
                node = node[part]


def test_demo_params_overlay_the_paper_settings():
    online = demo_params(REPO / "params.demo.yaml", base_file=REPO / "params.yaml", weights="w.pth")
    assert online["model"]["weights"] == "w.pth"
    assert online["fz"]["lr"] == 0.05 and online["fz"]["transforms"] == "authors_code"  # from params.yaml
    assert set(online["fz"]["blocks"]) == {"layer2_0", "layer2_1"}  # replaced whole, not merged
    assert online["criteria"]["eq2_low"] == "2/3"
    offline = demo_params(REPO / "params.demo.yaml", base_file=REPO / "params.yaml", offline=True)
    assert offline["model"]["weights"] == "random:0"
    assert offline["data"]["source"] == "generated" and offline["data"]["download"] is None


def test_dvc_re_decodes_the_images_when_they_change_under_the_same_root(tmp_path):
    """data.root is a path to DVC: images added there, or a class index edited in place, changed nothing
    it compared, and the pipeline went on with the old cache. Stage data-listing (always run) lists them;
    prepare-data re-runs when, and only when, its digest changes."""
    from test_data import WNIDS, make_folders

    images = make_folders(tmp_path / "val", per_class=1)
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{wnid} {index}\n" for index, wnid in enumerate(WNIDS)))
    params = tiny_params()
    params["data"].update(source="folders", root=str(images), class_index=str(classes))
    workspace = git_workspace(tmp_path / "repo", params)
    assert ran_stages(run(["dvc", "repro", "prepare-data"], workspace)) == {"prepare-data"}
    assert settled(run(["dvc", "repro", "prepare-data"], workspace))
    make_folders(tmp_path / "more", per_class=1, wnids=WNIDS[:1])
    shutil.copy(tmp_path / "more" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG", images / WNIDS[0] / "added.JPEG")
    assert ran_stages(run(["dvc", "repro", "prepare-data"], workspace)) == {"prepare-data"}
    assert json.loads((workspace / "metrics/data.json").read_text())["images"] == 4
    classes.write_text("".join(f"{wnid} {index + 5}\n" for index, wnid in enumerate(WNIDS)))
    assert ran_stages(run(["dvc", "repro", "prepare-data"], workspace)) == {"prepare-data"}
    assert sorted(set(np.load(workspace / "outputs/eval/labels.npy").tolist())) == [5, 6, 7]
    assert settled(run(["dvc", "repro", "prepare-data"], workspace))
    images.rename(tmp_path / "unmounted")  # the images' disk is away: runs that need none go on
    log = run(["dvc", "repro", "prepare-data"], workspace)
    assert settled(log) and "is not there; keeping outputs/data_listing.json" in log
