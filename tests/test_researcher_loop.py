"""The researcher's loop: the passing-counts plot `dvc plots show/diff` draws beside the paper's, and the
demo as a git repository with a baseline, where `dvc exp run -S …`, `dvc exp show`, `dvc metrics diff`
and `dvc plots diff` work (slow: the whole offline demo at tiny sizes)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_pipeline import copy_checkout, settled, tiny_params

from rsi import paper
from rsi.artifacts.criteria import write_passing_counts
from rsi.criteria import evaluate_block, passing_counts

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAPER_COUNTS = REPO / "paper" / "passing_counts.csv"
PLOT = "passing_counts"


def _env(home: Path) -> dict[str, str]:
    """A user with no git identity and no global or system git config (as on a fresh laptop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return {
        **env,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "DVC_NO_ANALYTICS": "1",
        "TQDM_DISABLE": "1",
    }


def run(args: list[str], cwd: Path, home: Path) -> str:
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(args, cwd=cwd, env=_env(home), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _plot_values(rendered: dict) -> list[dict]:
    (plot,) = rendered["data"][PLOT]
    assert plot["type"] == "vega"
    return plot["content"]["data"]["values"]


def test_the_paper_counts_file_is_the_papers_section_3():
    rows = _rows(PAPER_COUNTS)
    assert [r["block"] for r in rows] == list(paper.PROBED_BLOCKS)
    for row in rows:
        block = row["block"]
        assert int(row["passing"]) == paper.PASSING_COUNTS[block]
        assert int(row["channels"]) == paper.BLOCK_CHANNELS[block]
        assert float(row["percent"]) == round(paper.passing_percent_exact(block), 4)


def test_the_passing_counts_plot_renders_beside_the_papers(tmp_path):
    # the criteria stage's writer, on two hand-made blocks: 2.1 with 1 of 4 channels passing, 3.1 with 0 of 2
    acts = np.ones((5, 3, 4), dtype=np.float32)
    acts[1, 1, 0] = 2.0  # channel 0: Pre(S(X̂_In)) > Pre(X̂_In) (Eq. 1); Post ratio 1 (Eq. 2)
    results = [evaluate_block("2.1", acts, [0, 1, 2, 3]), evaluate_block("3.1", np.ones((5, 3, 2)), [0, 1])]
    table = tmp_path / "outputs" / "criteria" / "passing_counts.csv"
    write_passing_counts(passing_counts(results), table)
    assert table.read_text().splitlines() == [
        "block,channels,passing,percent",
        "2.1,4,1,25.0",
        "3.1,2,0,0.0",
    ]

    # stage pre-reading's counts (the authors' reading of Pre): 2.1 with 2 of 4 channels passing
    acts[1, 1, 1] = 2.0
    reference = tmp_path / "outputs" / "reference" / "criteria" / "passing_counts.csv"
    write_passing_counts(passing_counts([evaluate_block("2.1", acts, [0, 1, 2, 3])]), reference)

    (tmp_path / "paper").mkdir()
    shutil.copy(PAPER_COUNTS, tmp_path / "paper" / "passing_counts.csv")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    home = tmp_path / "home"
    run(["dvc", "init", "--no-scm", "-q"], tmp_path, home)
    rendered = json.loads(run(["dvc", "plots", "show", "--json", PLOT], tmp_path, home))
    values = _plot_values(rendered)
    by_file = {}
    for value in values:
        by_file.setdefault(value["filename"], {})[value["block"]] = float(value["percent"])
    assert by_file == {
        "outputs/criteria/passing_counts.csv": {"2.1": 25.0, "3.1": 0.0},
        "outputs/reference/criteria/passing_counts.csv": {"2.1": 50.0},
        "paper/passing_counts.csv": {
            b: round(paper.passing_percent_exact(b), 4) for b in paper.PROBED_BLOCKS
        },
    }
    content = rendered["data"][PLOT][0]["content"]
    assert content["title"]["text"].startswith("Criteria-passing channels per block")
    encoding = content["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("percent", "block")
    assert encoding["x"]["title"].startswith("channels passing Eq. 1 and Eq. 2")
    assert encoding["column"]["field"] == "filename"  # this run | the paper, side by side
    assert encoding["yOffset"]["field"] == "rev"  # one bar per revision in a diff
    # with criteria.compare_pre_readings off, stage pre-reading writes the header only: no bars, no error
    write_passing_counts([], reference)
    values = _plot_values(json.loads(run(["dvc", "plots", "show", "--json", PLOT], tmp_path, home)))
    assert {value["filename"] for value in values} == {
        "outputs/criteria/passing_counts.csv",
        "paper/passing_counts.csv",
    }


# ------------------------------------------------------------------------------------------------------
# The demo's loop, end to end (offline, tiny sizes).


def _expected_eq2_pass(table: Path, low: float, high: float) -> int:
    """Eq. 2 with other bounds, recomputed from the baseline's per-channel table: strict, both Post > 0,
    Post_c(X̂_In_c) / Post_c(X̂_Pre_c) inside (low, high)."""
    passing = 0
    for row in _rows(table):
        post_in, post_pre = float(row["post_of_in_fz"]), float(row["post_of_pre_fz"])
        if post_in > 0 and post_pre > 0 and low < post_in / post_pre < high:
            passing += 1
    return passing


@pytest.mark.slow
def test_the_demo_is_a_git_repository_where_dvc_exp_runs_and_diffs(tmp_path):
    root = tmp_path / "checkout"
    copy_checkout(root)
    # the tiny profile as params.demo.yaml: demo.sh overlays it on params.yaml as it does the real one
    (root / "params.demo.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    home = tmp_path / "home"  # no git identity anywhere: demo.sh sets a local one for its baseline
    demo = root / "demo"

    run(["bash", "scripts/demo.sh", "--offline", "--no-install"], root, home)
    assert run(["git", "log", "--format=%s"], demo, home).splitlines() == [
        "demo baseline: scripts/demo.sh --offline"
    ]
    assert run(["git", "status", "--porcelain"], demo, home) == ""  # the baseline holds the whole run
    tracked = set(run(["git", "ls-files"], demo, home).splitlines())
    assert {"dvc.lock", "params.yaml", "metrics/criteria.json", "paper/passing_counts.csv"} <= tracked
    assert not (home / ".gitconfig").exists()
    outputs = {p: p.read_bytes() for p in sorted(demo.glob("metrics/*.json"))}

    again = run(["bash", "scripts/demo.sh", "--offline", "--no-install"], root, home)
    # data-listing runs every time (it lists data.root); nothing else does
    assert "Running stage 'data-listing'" in again and settled(again), again
    assert len(run(["git", "log", "--format=%H"], demo, home).split()) == 1  # no second commit
    assert {p: p.read_bytes() for p in sorted(demo.glob("metrics/*.json"))} == outputs

    table = demo / "outputs" / "criteria" / "layer2_1.csv"
    before = json.loads((demo / "metrics" / "criteria.json").read_text())["layer2_1"]
    assert before["eq2_pass"] == _expected_eq2_pass(table, 2 / 3, 3 / 2)
    log = run(["dvc", "exp", "run", "-S", "criteria.eq2_high=2.0"], demo, home)
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}
    assert "criteria" in ran and not ran & {"prepare-data", "fz@layer2_0", "fz@layer2_1", "activations"}, ran

    shown = json.loads(run(["dvc", "exp", "show", "--json"], demo, home))
    experiments = [e for rev in shown for e in rev.get("experiments") or []]
    assert (
        len(experiments) == 1
        and experiments[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["criteria"]["eq2_high"] == 2.0
    )
    assert shown[0]["rev"] == "workspace" and len(shown) == 2  # and the baseline

    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], demo, home))["metrics/criteria.json"]
    expected = _expected_eq2_pass(table, 2 / 3, 2.0)
    old = before["eq2_pass"]
    assert diff["layer2_1.eq2_pass"] == {"old": old, "new": expected, "diff": expected - old}
    assert {"layer2_1.passing", "layer2_1.eq1_pass", "total.passing"} <= set(diff)

    plots = json.loads(run(["dvc", "plots", "diff", "--json"], demo, home))
    revisions = {(v["rev"], v["filename"]) for v in _plot_values(plots)}
    assert {rev for rev, _ in revisions} == {"workspace", "HEAD"}
    assert {name for _, name in revisions} == {
        "outputs/criteria/passing_counts.csv",
        "paper/passing_counts.csv",
    }
