"""rsi.launch: a sharded stage relaunches itself through torch's elastic launcher when ``launch`` asks for more
than one process; two gloo processes write byte for byte what one writes (fz, natural, ablate); a worker
that dies fails the stage with its error and log, leaves its finished chunks, and a rerun resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from rsi import data, distributed, launch
from rsi.config import ParamsError, load_section, read_params
from rsi.launch import LaunchParams

RSI = str(Path(sys.executable).with_name("rsi"))
NO_LAUNCHER = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "PET_NNODES", "PET_RDZV_ENDPOINT", "PET_NPROC_PER_NODE"}


@pytest.fixture(autouse=True)
def _outside_torchrun(monkeypatch):
    for name in NO_LAUNCHER:
        monkeypatch.delenv(name, raising=False)


def cpu_params(**launch_section) -> dict:
    return {"model": {"weights": "random:0", "device": "cpu"}, "launch": launch_section}


# ----------------------------------------------------------------------------------------- the plan


def test_auto_is_one_process_on_a_cpu_and_n_is_n():
    assert launch.processes_per_node(LaunchParams()) >= 1
    assert launch.wanted("fz", cpu_params(), "p.yaml") is None  # auto on a CPU: run here
    assert launch.wanted("fz", cpu_params(nproc_per_node=1), "p.yaml") is None
    plan = launch.wanted("natural", cpu_params(nproc_per_node=2), "p.yaml")
    assert plan is not None and plan[1] == 2
    assert launch.wanted("criteria", cpu_params(nproc_per_node=2), "p.yaml") is None  # not sharded


def test_one_named_gpu_runs_one_process(monkeypatch):
    """``model.device: cuda:1`` puts every process on GPU 1: auto means one process, and more is refused."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    named = {"model": {"weights": "random:0", "device": "cuda:1"}, "launch": {}}
    assert launch.processes_per_node(LaunchParams(), "cuda:1") == 1
    assert launch.processes_per_node(LaunchParams(), "auto") == 8
    assert launch.wanted("fz", named, "p.yaml") is None
    named["launch"] = {"nproc_per_node": 2}
    with pytest.raises(ParamsError, match=r"p.yaml: launch.nproc_per_node = 2 but model.device = 'cuda:1'"):
        launch.wanted("fz", named, "p.yaml")


def test_the_failure_names_the_stages_error_not_the_nccl_exit_warning(tmp_path):
    log = tmp_path / "stderr.log"
    log.write_text(
        "[rank0]: rsi natural: error: outputs/eval: no evaluation cache; run `rsi prepare-data`\n"
        "[rank0]:[W1127 03:00:00 ProcessGroupNCCL.cpp:1250] WARNING: destroy_process_group() was not called "
        "before program exit, which can leak resources.\n"
    )
    assert (
        launch.last_error_line(log)
        == "rsi natural: error: outputs/eval: no evaluation cache; run `rsi prepare-data`"
    )
    log.write_text(
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "torch.OutOfMemoryError: CUDA out of memory.\n[W1127 03:00:00 init.cpp:1] Warning: leaked\n"
    )
    assert launch.last_error_line(log) == "torch.OutOfMemoryError: CUDA out of memory."
    log.write_text("something went wrong\nWARNING: destroy_process_group() was not called\n")
    assert launch.last_error_line(log) == "something went wrong"


def test_params_yaml_launch_section_is_the_default():
    raw = read_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert load_section(raw, "launch", LaunchParams) == LaunchParams(nproc_per_node="auto")


def test_cpu_workers_compute_with_the_threads_of_one_process(tmp_path, monkeypatch):
    """CPU kernels round by thread count (a 224 px FZ differs after 4 steps between 1 and 2 threads), so
    each CPU worker gets the threads one process uses, not torchrun's default of 1; an explicit
    OMP_NUM_THREADS, which one process would use too, is kept."""
    import torch
    import torch.distributed.run as torchrun

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(cpu_params(nproc_per_node=2)))
    seen = []
    monkeypatch.setattr(torchrun, "run", lambda args: seen.append(os.environ["OMP_NUM_THREADS"]))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert launch.maybe_relaunch("fz", "params.yaml", ["fz", "--block", "2.1"]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.maybe_relaunch("fz", "params.yaml", ["fz", "--block", "2.1"]) == 0
    assert seen == [str(torch.get_num_threads()), "3"]


def test_each_launch_logs_in_its_own_folder(tmp_path, monkeypatch):
    """On a shared disk every node's launcher logs under the same run id: each invocation gets
    outputs/.launch/<host>-<pid>, and a failure is read from there."""
    import socket

    import torch.distributed.run as torchrun

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(cpu_params(nproc_per_node=2)))
    seen = []
    monkeypatch.setattr(torchrun, "run", lambda args: seen.append(args.log_dir))
    assert launch.maybe_relaunch("fz", "params.yaml", ["fz", "--block", "2.1"]) == 0
    assert seen == [str(launch.LOG_DIR / f"{socket.gethostname()}-{os.getpid()}")]
    other = Path(seen[0]).with_name("node1-7") / "abc_x1" / "attempt_0" / "0" / "stderr.log"
    other.parent.mkdir(parents=True)
    other.write_text("rsi fz: error: another node's\n")
    assert launch.worker_log("abc", 0, Path(seen[0])) is None


def test_losing_the_rendezvous_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """When the node holding the rendezvous store stops, the other node's launcher raises; say so."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(cpu_params(nproc_per_node=2)))

    def lose(args):
        raise RendezvousConnectionError("The connection to the C10d store has failed.")

    monkeypatch.setattr(torchrun, "run", lose)
    assert launch.maybe_relaunch("fz", "params.yaml", ["fz", "--block", "2.1"]) == 1
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            "rsi fz: error: lost the rendezvous with the other nodes (RendezvousConnectionError): the node at "
            "launch.rdzv_endpoint stopped"
        )
    )


def test_a_worker_never_relaunches_itself(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.wanted("fz", cpu_params(nproc_per_node=2), "p.yaml") is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"nproc_per_node": 0}, "launch.nproc_per_node = 0 is not allowed: expected 'auto'"),
        ({"nproc_per_node": "all"}, "launch.nproc_per_node = 'all' is not allowed"),
        ({"nnodes": 0}, "launch.nnodes = 0 is not allowed: expected a value >= 1"),
        ({"rdzv_endpoint": "a b:1"}, "launch.rdzv_endpoint = 'a b:1' is not allowed: expected host"),
        (
            {"nodes": 2},
            "unknown key launch.nodes (did you mean launch.nnodes?); allowed keys of launch: nproc_per_node, nnodes",
        ),
    ],
)
def test_bad_launch_settings_name_the_key(section, message):
    with pytest.raises(ParamsError, match=re.escape("p.yaml: " + message)):
        launch.wanted("fz", cpu_params(**section), "p.yaml")


def test_one_node_is_standalone_and_several_use_the_endpoint(monkeypatch):
    argv = ["fz", "--block", "2.1"]
    one = launch.torchrun_argv(LaunchParams(nproc_per_node=2), argv, 2, "p.yaml")
    assert "--standalone" in one and "--max-restarts=0" in one and one[-5:] == ["-m", "rsi.cli", *argv]
    two = launch.torchrun_argv(LaunchParams(nnodes=2, rdzv_endpoint="node0:29500"), argv, 8, "p.yaml")
    assert "--standalone" not in two
    assert {"--nnodes=2", "--rdzv-endpoint=node0:29500", "--rdzv-backend=c10d"} <= set(two)
    assert "--rdzv-id=rsi-fz-block-2.1" in two  # the same on every node without any setting
    with pytest.raises(ParamsError, match="launch.nnodes = 2 needs launch.rdzv_endpoint"):
        launch.torchrun_argv(LaunchParams(nnodes=2), argv, 8, "p.yaml")
    # torchrun's own environment serves where params.yaml says nothing
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "head:1234")
    assert launch.wanted("fz", cpu_params(), "p.yaml") == (LaunchParams(), 1)
    from_env = launch.torchrun_argv(LaunchParams(), argv, 1, "p.yaml")
    assert "--rdzv-endpoint=head:1234" in from_env and "--standalone" not in from_env


def test_a_failure_is_one_line_with_the_workers_error_and_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / launch.LOG_DIR / "abc_x1" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("[default1]:warning\n[default1]:rsi fz: error: outputs/eval is missing\n\n")
    failure = SimpleNamespace(local_rank=1, exitcode=2, message="To enable traceback see: …")
    terminated = SimpleNamespace(local_rank=0, exitcode=-signal.SIGTERM, message="Signal 15")
    error = SimpleNamespace(failures={0: terminated, 1: failure})
    assert launch.describe_failure(error, "abc") == (
        f"worker rank 1 failed (exit code 2: rsi fz: error: outputs/eval is missing); "
        f"full log: {launch.LOG_DIR}/abc_x1/attempt_0/1/stderr.log"
    )
    killed = SimpleNamespace(local_rank=1, exitcode=-9, message="Signal 9 (SIGKILL) received by PID 7")
    assert "(Signal 9 (SIGKILL) received by PID 7)" in launch.describe_failure(
        SimpleNamespace(failures={1: killed}), "abc"
    )


# ---------------------------------------------------------------------------- real processes (gloo)


def stage(args: list[str], cwd: Path, **popen) -> subprocess.CompletedProcess:
    # one thread per process in both runs, so the only difference is the number of processes
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    for name in NO_LAUNCHER:
        env.pop(name, None)
    return subprocess.run([RSI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_params(folder: Path, params: dict, nproc: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump({**params, "launch": {"nproc_per_node": nproc}}))


FZ_PARAMS = {
    "seed": 3,
    "model": {"weights": "random:0", "device": "cpu"},
    "fz": {
        "steps": 40,
        "image_size": 32,
        "max_channels": 8,
        "batch_channels": 1,
        "chunk_batches": 1,
        "storage": "float32",
        "blocks": {"layer2_1": {"taps": ["pre"], "jitter": 4}},
    },
}


def worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the launched workers below ``parent`` (read from /proc)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(
                line.split("=", 1) for line in (entry / "environ").read_text().split("\0") if "=" in line
            )
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if "RANK" in environ and environ.get("TORCHELASTIC_RUN_ID") and _descends(entry.name, parent, stat):
            found[int(environ["RANK"])] = int(entry.name)
    return found


def _descends(pid: str, ancestor: int, stat: str) -> bool:
    while True:
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == ancestor:
            return True
        if parent <= 1:
            return False
        try:
            stat = Path(f"/proc/{parent}/stat").read_text()
        except OSError:
            return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_a_killed_worker_fails_the_stage_and_a_rerun_resumes_to_one_process_bytes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_params(one, FZ_PARAMS, 1)
    write_params(two, FZ_PARAMS, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    for name in NO_LAUNCHER:
        env.pop(name, None)
    command = [RSI, "fz", "--block", "2.1", "--no-progress"]
    started = subprocess.Popen(
        command, cwd=two, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    resume = two / "outputs" / ".resume"
    deadline = time.monotonic() + 300
    while not list(resume.rglob("chunk_*.npz")) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = worker_pids(started.pid)
    assert set(workers) == {0, 1}, "both workers run under the launcher"
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = started.communicate(timeout=120)
    assert started.returncode == 1
    line = [row for row in stderr.splitlines() if row.startswith("rsi fz: error:")]
    assert len(line) == 1 and "worker rank 1 failed (Signal 9 (SIGKILL)" in line[0], stderr[-3000:]
    assert "full log: outputs/.launch/" in line[0] and (two / line[0].split("full log: ")[1]).is_file()
    assert not (two / "outputs" / "fz" / "layer2_1").exists()  # nothing assembled from a failed run
    kept = {p: p.stat().st_mtime_ns for p in resume.rglob("chunk_*.npz")}
    assert 1 <= len(kept) < 8

    rerun = stage(command[1:], two)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished chunks were not redone
    alone = stage(command[1:], one)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "process(es) per node" not in alone.stderr and "process(es) per node" in rerun.stderr
    assert files_of(two / "outputs" / "fz") == files_of(one / "outputs" / "fz")  # byte for byte


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# the stages that render FZs under the launcher: (command, extra params, where block 2.1's FZs would go)
RENDERING_STAGES = {
    "fz": (["fz", "--block", "2.1", "--no-progress"], {}, "outputs/fz/layer2_1"),
    "stability": (
        ["stability", "--seed", "4"],
        {"criteria": {"blocks": ["2.1"], "seeds": [3, 4]}},
        "outputs/stability/seed4/fz/layer2_1",
    ),
}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
@pytest.mark.parametrize("stage_name", sorted(RENDERING_STAGES))
def test_a_worker_dying_on_another_node_fails_rank_0_instead_of_leaving_it_waiting(tmp_path, stage_name):
    """Two "nodes" on one host sharing the folder: torch's launcher on node A never learns that node B's
    worker died; rank 0 must fail within seconds, not poll for B's chunks for ever (stage pre-reading
    joins the group as stability does)."""
    arguments, extra, assembled = RENDERING_STAGES[stage_name]
    params = {**FZ_PARAMS, "fz": {**FZ_PARAMS["fz"], "steps": 600}, **extra}  # a chunk takes seconds
    endpoint = f"127.0.0.1:{free_port()}"
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({**params, "launch": {"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": endpoint}})
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    for name in NO_LAUNCHER:
        env.pop(name, None)
    command = [RSI, *arguments]
    nodes = []
    for _ in range(2):
        nodes.append(
            subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
        time.sleep(2)
    deadline = time.monotonic() + 240
    workers: dict[int, int] = {}
    while time.monotonic() < deadline and len(workers) < 2:
        workers = {rank: pid for node in nodes for rank, pid in worker_pids(node.pid).items()}
        time.sleep(0.5)
    assert set(workers) == {0, 1}, "one worker per node"
    by_rank = {rank: next(n for n in nodes if rank in worker_pids(n.pid)) for rank in workers}
    resume = tmp_path / "outputs" / ".resume"
    while time.monotonic() < deadline and not list(resume.rglob("chunk_*.npz")):
        time.sleep(0.2)  # both ranks are past the lock and render; rank 0 then waits for rank 1
    os.kill(workers[1], signal.SIGKILL)
    remote = by_rank[1].communicate(timeout=120)[1]
    assert by_rank[1].returncode == 1 and "worker rank 1 failed (Signal 9 (SIGKILL)" in remote
    try:
        _, stderr = by_rank[0].communicate(timeout=240)
    except subprocess.TimeoutExpired:
        by_rank[0].kill()
        raise AssertionError("rank 0 kept waiting for the dead rank's chunks") from None
    line = [row for row in stderr.splitlines() if row.startswith(f"rsi {stage_name}: error:")]
    assert by_rank[0].returncode == 1 and len(line) == 1, stderr[-3000:]
    # rank 0's own wait fails; or, where node B held the rendezvous store, node A's launcher loses it first
    assert (
        "worker rank 0 failed" in line[0] and "another rank stopped before finishing its share" in line[0]
    ) or "lost the rendezvous with the other nodes (RendezvousConnectionError)" in line[0], line[0]
    assert not (tmp_path / assembled).exists()  # nothing assembled


@pytest.mark.slow
def test_two_processes_write_what_one_writes_for_stability(tmp_path):
    """Stage stability joins the process group before rendering (so a dead rank on another node fails the
    wait): its 2-process run still writes one process's bytes, FZs, settings and activations."""
    params = {
        **FZ_PARAMS,
        "fz": {
            **FZ_PARAMS["fz"],
            "steps": 20,
            "max_channels": 3,
            "blocks": {
                "layer2_0": {"taps": ["post"], "jitter": 4},
                "layer2_1": {"taps": ["pre", "post"], "jitter": 4},
            },
        },
        "criteria": {"blocks": ["2.1"], "seeds": [3, 4]},
    }
    written = {}
    for nproc in (1, 2):
        work = tmp_path / f"nproc{nproc}"
        write_params(work, params, nproc)
        done = stage(["stability", "--seed", "4"], work)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("process(es) per node" in done.stderr) == (nproc == 2)
        written[nproc] = files_of(work / "outputs" / "stability" / "seed4")
    assert {"fz/layer2_1/pre.npz", "fz/layer2_0/post.npz", "activations/layer2_1.npz"} <= set(written[1])
    assert written[2] == written[1]


RANK_WITH_OTHER_CODE = """
import sys
from pathlib import Path
from rsi import distributed, fz
from rsi.model import load_model
if distributed.world()[0] == 1:
    fz.code_digest = lambda: "another-checkout"  # a node started from other FZ code
distributed.init()
params = fz.FZParams(steps=2, image_size=32, max_channels=4, batch_channels=2,
                     blocks={"layer2_1": fz.BlockFZParams(taps=("pre",), jitter=4)})
fz.render_block(load_model("random:0"), "2.1", params, seed=0, weights="random:0", progress=False,
                root=Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_rank_with_other_fz_code_is_an_error_on_every_rank_before_any_work(tmp_path):
    """Its resume key differs, so it would write chunks where rank 0 never looks and rank 0 would wait
    for ever (a review reproduced that hang): every rank stops at once, naming the rank."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_WITH_OTHER_CODE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in NO_LAUNCHER:
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", str(script), "out"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert "RanksDifferError: rank(s) [1] run other FZ code or packages than rank 0" in done.stderr
    assert "another-checkout" in done.stderr
    assert not list((tmp_path / "out").rglob("*.npz")) and not (tmp_path / "out" / "fz").exists()


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory) -> Path:
    """12 generated images in a 64 px cache, and the criteria's passing channels of block 2.1."""
    folder = tmp_path_factory.mktemp("launch_eval")
    listing = data.list_folders(
        data.write_generated_folders(folder / "val", data.GeneratedParams(classes=3, per_class=4, size=40))
    )
    data.decode_to_cache(listing, folder / "eval", size=64, progress=False)
    return folder / "eval"


@pytest.mark.slow
def test_two_processes_write_what_one_writes_for_natural_and_ablate(eval_cache, tmp_path):
    params = {
        "seed": 3,
        "model": {"weights": "random:0", "device": "cpu"},
        "natural": {"blocks": ["2.1"], "k": 4, "batch_size": 5},
        "ablate": {
            "blocks": ["2.1"],
            "percents": [30],
            "trials": 2,
            "screen_batch": 3,
            "batch_size": 5,
            "max_attempts": 9,
            "screening": {"layer2_1": {"rule": "within", "tolerance": 100.0}},
        },
    }
    written = {}
    for nproc in (1, 2):
        work = tmp_path / f"nproc{nproc}"
        write_params(work, params, nproc)
        (work / "outputs" / "criteria").mkdir(parents=True)
        (work / "outputs" / "eval").symlink_to(eval_cache, target_is_directory=True)
        passing = {"2.1": list(range(0, 128, 4))[:24]}
        (work / "outputs" / "criteria" / "passing.json").write_text(json.dumps(passing))
        for name in ("natural", "ablate"):
            done = stage([name], work)
            assert done.returncode == 0, done.stderr[-3000:]
            assert ("process(es) per node" in done.stderr) == (nproc == 2)
        written[nproc] = {
            **files_of(work / "outputs" / "natural"),
            **files_of(work / "outputs" / "ablation"),
            **files_of(work / "metrics"),
            **files_of(work / "plots"),
        }
    assert "layer2_1.npz" in written[1] and "ablation.json" in written[1]
    assert written[2] == written[1]  # byte for byte: means, top-k, counts, trials
    np.load(tmp_path / "nproc2" / "outputs" / "natural" / "layer2_1.npz")  # a real file, not a stub


@pytest.mark.slow
def test_a_worker_error_fails_the_stage_in_one_line(tmp_path):
    write_params(tmp_path, {"model": {"weights": "random:0", "device": "cpu"}}, 2)
    done = stage(["natural"], tmp_path)  # no evaluation cache: every worker fails while loading it
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("rsi natural: error: worker rank ") and "(exit code 2: rsi natural: error: " in line
    )
    assert "outputs/eval" in line and "full log: outputs/.launch/" in line
    assert not (tmp_path / "outputs" / "natural").exists()


def _paper_time():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_time.py"
    spec = importlib.util.spec_from_file_location("paper_time", path)
    paper_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper_time)
    return paper_time


def test_paper_time_projects_fz_in_rounds_of_chunks_per_block():
    """A block's (tap, chunk) items are what fz shards: 1 item leaves 7 of 8 GPUs idle, 12 items take 2
    rounds; DVC runs the blocks one after another."""
    paper_time = _paper_time()
    rows = [
        {"item": "1.0/post", "chunks": 1, "projected_s": 60.0},
        {"item": "4.0/pre", "chunks": 6, "projected_s": 60.0},
        {"item": "4.0/post", "chunks": 6, "projected_s": 60.0},
    ]
    assert paper_time.fz_minutes_on(rows, 8) == (60 + 2 * 10) / 60
    assert paper_time.fz_minutes_on(rows, 1) == 3.0
    assert paper_time.fz_minutes_on(rows, 16) == (60 + 10) / 60
    # dvc repro (launch.fz_pool: stale) or rsi fz --block all: one pool of 13 items (60, then twelve of 10 s)
    assert paper_time.fz_minutes_pooled(rows, 8) == (60 + 10) / 60  # rank 0: items 0 and 8
    assert paper_time.fz_minutes_pooled(rows, 2) == (60 + 6 * 10) / 60  # rank 0: items 0, 2, …, 12


def test_paper_time_counts_pre_readings_fzs_at_each_probed_blocks_post_rate(capsys):
    """Stage pre-reading renders the probed blocks' Pre channels again (lucent's reading reads the block
    output), per criteria seed: 128 channels x 2,560 steps at 2.1/post's 100 ch*steps/s, for each of 2 seeds."""
    paper_time = _paper_time()
    probe = {"seconds": 1.0, "peak_gib": None, "gpu_util_pct": None}
    rows = [
        {"item": "2.1/pre", "rate": 50.0, "unit": "ch*steps/s", "chunks": 1, **probe},
        {"item": "2.1/post", "rate": 100.0, "unit": "ch*steps/s", "chunks": 1, **probe},
        {"item": "1.0/post", "rate": 1.0, "unit": "ch*steps/s", "chunks": 1, **probe},
    ]
    raw = {"criteria": {"blocks": ["2.1"], "compare_pre_readings": True, "seeds": [0, 1]}}
    seed0, seed1 = paper_time.project_pre_reading(rows, raw)
    assert seed0["projected_s"] == seed1["projected_s"] == 128 * 2560 / 100.0 and seed0["chunks"] == 1
    assert (seed0["seed"], seed1["seed"]) == (0, 1)
    assert paper_time.project_pre_reading(rows, raw | {"criteria": {"blocks": ["2.1"]}}) == []  # off
    fz_rows = [r | {"projected_s": 60.0} for r in rows]
    totals = paper_time.summary({"fz": fz_rows, "pre-reading": [seed0, seed1]}, 1)
    assert totals["projected_min"]["pre-reading"] == 2 * seed0["projected_s"] / 60
    assert totals["total_min_1"] == 3.0 + 2 * seed0["projected_s"] / 60
    # on 2 GPUs each seed's pool has one item: the seeds run one after another, not side by side
    assert paper_time.pre_reading_minutes_on([seed0, seed1], 2) == 2 * seed0["projected_s"] / 60


def test_only_rank_0_runs_a_stages_tail(monkeypatch):
    """distributed.main_alone: rank 0 measures alone; every rank then waits for it (no group here)."""
    ran: list[str] = []
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        distributed.main_alone(lambda rank=rank: ran.append(rank))
    assert ran == ["0"]


def test_outdated_stages_are_those_whose_lock_entry_differs_from_the_workspace(tmp_path):
    """rsi.launch.outdated_stages reads dvc.lock and params.yaml as DVC does (YAML 1.2: ``5e-05`` is a
    float) and compares params values and dependency md5s."""
    import hashlib

    (tmp_path / "code.py").write_text("print(1)\n")
    md5 = hashlib.md5(b"print(1)\n").hexdigest()
    (tmp_path / "params.yaml").write_text(
        "seed: 0\nfz:\n  lr: 0.00005\n  blocks:\n    layer2_1: {jitter: 4}\n    layer2_0: {jitter: 0}\n"
    )
    # as DVC 3 writes it (ruamel): 5e-05 has no dot, which PyYAML would read as a string
    (tmp_path / "dvc.lock").write_text(
        f"""schema: '2.0'
stages:
  fz@layer2_1:
    cmd: rsi fz --block layer2_1
    deps:
    - path: code.py
      hash: md5
      md5: {md5}
      size: 9
    - path: outputs/eval
      hash: md5
      md5: {"0" * 32}.dir
    params:
      params.yaml:
        fz.blocks.layer2_1:
          jitter: 4
        fz.lr: 5e-05
        seed: 0
  fz@layer2_0:
    cmd: rsi fz --block layer2_0
    params:
      params.yaml:
        fz.blocks.layer2_0:
          jitter: 0
"""
    )
    names = ["fz@layer2_1", "fz@layer2_0", "fz@layer3_1"]
    assert launch.outdated_stages(names, tmp_path) == ["fz@layer3_1"]  # no entry: DVC runs it
    (tmp_path / "params.yaml").write_text(
        (tmp_path / "params.yaml").read_text().replace("jitter: 0", "jitter: 8")
    )
    assert launch.outdated_stages(names, tmp_path) == ["fz@layer2_0", "fz@layer3_1"]
    (tmp_path / "code.py").write_text("print(2)\n")
    assert launch.outdated_stages(names, tmp_path) == names
    (tmp_path / "dvc.lock").unlink()
    assert launch.outdated_stages(names[:1], tmp_path) == names[:1]  # a first run


def test_outdated_stages_see_a_changed_command_or_a_newly_declared_param(tmp_path):
    """dvc.yaml's command and params list, with a foreach stage's ${key} filled in as DVC names the stage,
    are compared with what dvc.lock records: DVC re-runs a stage whose command changed or that declares a
    param its lock entry lacks."""
    (tmp_path / "params.yaml").write_text("seed: 0\nfz:\n  steps: 8\n  blocks:\n    layer2_1: {jitter: 4}\n")
    (tmp_path / "dvc.lock").write_text(
        """schema: '2.0'
stages:
  fz@layer2_1:
    cmd: rsi fz --block layer2_1
    params:
      params.yaml:
        fz.blocks.layer2_1:
          jitter: 4
        seed: 0
  stability@0:
    cmd: rsi stability --seed 0
    params:
      params.yaml:
        seed: 0
"""
    )
    pipeline = """stages:
  fz:
    foreach: ${fz.blocks}
    do:
      cmd: rsi fz --block ${key}
      params:
        - seed
        - fz.blocks.${key}
  stability:
    foreach: [0]
    do:
      cmd: rsi stability --seed ${item}
      params:
        - params.yaml:
            - seed
"""
    names = ["fz@layer2_1", "stability@0"]
    (tmp_path / "dvc.yaml").write_text(pipeline)
    assert launch.outdated_stages(names, tmp_path) == []
    declared = launch.declared_stage(
        launch.read_dvc_yaml(tmp_path / "dvc.yaml")["stages"],
        "fz@layer2_1",
        launch.read_dvc_yaml(tmp_path / "params.yaml"),
    )
    assert declared == launch.DeclaredStage(
        "rsi fz --block layer2_1", {"params.yaml": {"seed", "fz.blocks.layer2_1"}}, []
    )
    (tmp_path / "dvc.yaml").write_text(pipeline.replace("--block ${key}", "--block ${key} --tf32"))
    assert launch.outdated_stages(names, tmp_path) == ["fz@layer2_1"]
    (tmp_path / "dvc.yaml").write_text(pipeline.replace("--seed ${item}", "--seed ${item} --x"))
    assert launch.outdated_stages(names, tmp_path) == ["stability@0"]  # a list's ${item}, filled
    (tmp_path / "dvc.yaml").write_text(
        pipeline.replace("            - seed", "            - seed\n            - fz.steps")
    )
    assert launch.outdated_stages(names, tmp_path) == ["stability@0"]
    declared_dep = "      deps: [code.py]\n      params:\n        - seed\n"
    (tmp_path / "dvc.yaml").write_text(pipeline.replace("      params:\n        - seed\n", declared_dep))
    assert launch.outdated_stages(names, tmp_path) == ["fz@layer2_1"]  # a newly declared dependency
    # as DVC: a recorded param no longer declared is not compared (fz@layer2_1 recorded seed)
    (tmp_path / "dvc.yaml").write_text(
        pipeline.replace("        - seed\n        - fz.blocks", "        - fz.blocks")
    )
    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("seed: 0", "seed: 3"))
    assert launch.outdated_stages(names, tmp_path) == ["stability@0"]
    (tmp_path / "dvc.yaml").write_text(pipeline.replace("  fz:\n", "  fz:\n    always_changed: true\n"))
    assert launch.outdated_stages(names, tmp_path) == names  # DVC runs such a stage every time
