"""scripts/demo.sh's bookkeeping of demo/ as a git repository, fast: the real script and git, with `dvc`
and `rsi` replaced by stubs (the pipeline itself is test_researcher_loop's slow test). It refuses to
overwrite uncommitted edits of demo/params.yaml, commits a new baseline when the mode changes, and keeps
FZ resume chunks and launch logs out of git."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# `dvc repro` writes what the real pipeline leaves beside its outputs: a metric, resume chunks and locks
# (pid, host, time: different on every run) and a launch log
DVC_STUB = """#!/bin/sh
echo "$*" >> "$HOME/dvc-calls"
case "$1" in
  init) mkdir -p .dvc ;;
  repro)
    [ -z "$DVC_STUB_FAIL" ] || exit 3
    mkdir -p metrics outputs/.resume/locks outputs/.launch/run
    echo '{"n": 1}' > metrics/data.json
    echo "pid $$ $(date +%s%N)" > outputs/.resume/locks/layer2_1.lock
    echo log > outputs/.launch/run/stderr.log
    echo "Data and pipelines are up to date." ;;
esac
"""
RSI_STUB = "#!/bin/sh\nexit 0\n"  # `rsi fetch-weights`: the online demo's weights, as if fetched


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for name in (
        "scripts/demo.sh",
        "dvc.yaml",
        "params.yaml",
        "params.demo.yaml",
        "paper/passing_counts.csv",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "src").mkdir()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("dvc", DVC_STUB), ("rsi", RSI_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    return root


def demo(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env |= {
        "PATH": os.pathsep.join([str(root.parent / "stubs"), str(BIN), env.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
        "HOME": str(root.parent / "home"),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    (root.parent / "home").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", "scripts/demo.sh", "--no-install", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root / "demo"), *args], capture_output=True, text=True, check=True
    ).stdout


def test_the_baseline_leaves_resume_chunks_and_launch_logs_out_of_git(root):
    done = demo(root, "--offline")
    assert done.returncode == 0, done.stderr
    assert git(root, "log", "--format=%s").splitlines() == ["demo baseline: scripts/demo.sh --offline"]
    ignored = (root / "demo" / ".gitignore").read_text().splitlines()
    assert {"/src", "/dvc_plots/", "/outputs/.resume/", "/outputs/.launch/"} <= set(ignored)
    tracked = git(root, "ls-files").splitlines()
    assert "metrics/data.json" in tracked and "params.yaml" in tracked
    assert not [name for name in tracked if name.startswith(("outputs/.resume/", "outputs/.launch/"))], (
        tracked
    )
    assert demo(root, "--offline").returncode == 0  # new lock contents: still nothing for git to see
    assert git(root, "status", "--porcelain") == ""
    assert len(git(root, "log", "--format=%H").split()) == 1
    assert ignored == (root / "demo" / ".gitignore").read_text().splitlines()  # no line added twice


def dvc_calls(root: Path) -> list[str]:
    calls = root.parent / "home" / "dvc-calls"
    lines = calls.read_text().splitlines()
    calls.unlink()
    return lines


def test_dvc_stages_the_baseline_run_itself_and_only_that_run(root, monkeypatch):
    """A baseline run (the first, or a switch of mode) lets DVC stage what it writes (core.autostage), so
    no "git add" hint precedes the script's own commit; autostage is unset after, even when repro fails,
    and a later run prints DVC's hint as usual."""
    assert demo(root, "--offline").returncode == 0
    autostaged = ["config --local core.autostage true", "repro", "config --local --unset core.autostage"]
    assert dvc_calls(root) == ["init -q", *autostaged]
    assert demo(root, "--offline").returncode == 0
    assert dvc_calls(root) == ["repro"]
    monkeypatch.setenv("DVC_STUB_FAIL", "1")
    failed = demo(root)  # a switch to online: a baseline, whose repro fails
    assert failed.returncode == 3 and dvc_calls(root) == autostaged
    assert len(git(root, "log", "--format=%H").split()) == 1


def test_an_older_demo_gets_the_new_ignore_lines(root):
    assert demo(root, "--offline").returncode == 0
    (root / "demo" / ".gitignore").write_text("/src\n/dvc_plots/\n")  # what demo.sh used to write
    assert demo(root, "--offline").returncode == 0
    assert (root / "demo" / ".gitignore").read_text().splitlines() == [
        "/src",
        "/dvc_plots/",
        "/outputs/.resume/",
        "/outputs/.launch/",
    ]


def test_uncommitted_params_edits_stop_the_demo_and_survive(root):
    assert demo(root, "--offline").returncode == 0
    params = root / "demo" / "params.yaml"
    values = yaml.safe_load(params.read_text())
    values["criteria"]["eq2_high"] = 2.0  # as `dvc exp run -S criteria.eq2_high=2.0` leaves it
    edited = yaml.safe_dump(values, sort_keys=False)
    params.write_text(edited)
    done = demo(root, "--offline")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "demo/params.yaml has uncommitted changes" in line and "git -C demo checkout params.yaml" in line
    assert params.read_text() == edited
    git(root, "checkout", "params.yaml")
    assert demo(root, "--offline").returncode == 0


def test_a_changed_demo_profile_is_no_researchers_edit(root):
    """demo.sh's own rewrite (params.demo.yaml changed in the project) stays uncommitted, as before, and
    the next run goes on rather than calling it the researcher's."""
    assert demo(root, "--offline").returncode == 0
    profile = yaml.safe_load((root / "params.demo.yaml").read_text())
    profile["seed"] = 12345
    (root / "params.demo.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    assert demo(root, "--offline").returncode == 0
    assert git(root, "status", "--porcelain", "params.yaml").strip() == "M params.yaml"
    again = demo(root, "--offline")
    assert again.returncode == 0, again.stderr
    assert len(git(root, "log", "--format=%H").split()) == 1
    assert yaml.safe_load((root / "demo" / "params.yaml").read_text())["seed"] == 12345


def test_switching_mode_commits_a_new_baseline_and_says_so(root):
    assert demo(root, "--offline").returncode == 0
    online = demo(root)
    assert online.returncode == 0, online.stderr
    assert "the new baseline" in online.stdout and "offline" in online.stdout
    assert git(root, "log", "--format=%s").splitlines() == [
        "demo baseline: scripts/demo.sh --online (replaces the offline baseline)",
        "demo baseline: scripts/demo.sh --offline",
    ]
    committed = yaml.safe_load(git(root, "show", "HEAD:params.yaml"))
    assert not str(committed["model"]["weights"]).startswith("random:")
    assert git(root, "status", "--porcelain") == ""
    again = demo(root)  # same mode as the baseline: no commit
    assert again.returncode == 0 and "new baseline" not in again.stdout
    assert len(git(root, "log", "--format=%H").split()) == 2
