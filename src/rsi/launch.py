"""One command uses every GPU: a sharded stage started outside torchrun relaunches itself through torch's
elastic launcher (``torch.distributed.run``, the engine behind `torchrun`), one process per GPU.

``rsi fz --block 2.1`` (by hand or from `dvc repro`) reads params.yaml's ``launch`` section. When more than
one process is wanted, it runs ``python -m rsi.cli fz --block 2.1`` under the launcher instead of rendering
itself; the workers find RANK/WORLD_SIZE in their environment (rsi.distributed) and shard the work. Results
never depend on the number of processes (each stage's tests show it), so ``launch`` is speed-only and not
declared in dvc.yaml.

* ``launch.nproc_per_node``: ``auto`` (default) is the number of visible CUDA devices, 1 without CUDA; N is
  N processes (on a CPU, N gloo processes: this is how the tests run two ranks).
* Multi-node: ``launch.nnodes``, ``launch.rdzv_endpoint`` (host:port on the first node) and optionally
  ``launch.rdzv_id``, or torchrun's own environment (``PET_NNODES``, ``PET_RDZV_ENDPOINT``, ``PET_RDZV_ID``,
  ``PET_NPROC_PER_NODE``); params.yaml wins where both are set. Every node runs the same command.
* ``launch.fz_pool``: ``stale`` (default) lets the first ``fz@<block>`` stage that ``dvc repro`` runs with more
  than one process render the resume chunks of every other block of ``fz.blocks`` whose stage DVC will run
  too (:func:`outdated_stages`), in one pool (rsi.fz.blocks_to_pool): a block alone has 1 to 12 work items,
  too few for 8 GPUs, and DVC runs the blocks one after another; their own stages then only assemble.
  ``block``: each stage its own block (``dvc repro fz@layer2_1`` alone renders nothing else).
* A worker that fails ends every worker (the launcher's behaviour, no restarts) and the stage exits non-zero
  with that worker's last error line and the path of its full log (``outputs/.launch/``). No output is
  written by a failed stage; finished FZ chunks stay in ``outputs/.resume`` and a rerun resumes from them.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rsi.config import ParamsError, load_section, read_dvc_yaml, read_params

# The subcommands that shard their work over ranks (the others run in one process).
SHARDED_STAGES: tuple[str, ...] = ("fz", "natural", "ablate", "stability", "pre-reading")
LOG_DIR = Path("outputs") / ".launch"


def invocation_log_dir() -> Path:
    """This launch's own log folder, ``outputs/.launch/<host>-<pid>``: on a disk several nodes share, each
    node's launcher writes ``<run id>_<random>`` folders under the same run id, and a failure must be read
    from this node's worker log, not another's."""
    return LOG_DIR / f"{socket.gethostname()}-{os.getpid()}"


def _check_nproc(value: int | str) -> int | str:
    if value == "auto" or (isinstance(value, int) and value >= 1):
        return value
    raise ValueError("expected 'auto' (one process per visible GPU, 1 without one) or a count >= 1")


def _check_endpoint(value: str | None) -> str | None:
    if value is None or re.fullmatch(r"[^\s:]+(:\d+)?", value):
        return value
    raise ValueError("expected host or host:port of the first node (e.g. node0:29500)")


@dataclass(frozen=True)
class LaunchParams:
    """params.yaml ``launch`` (speed only): how many processes run a sharded stage."""

    nproc_per_node: int | Literal["auto"] = field(
        default="auto",
        metadata={"check": _check_nproc, "help": "'auto' = visible GPUs (1 on a CPU), or N processes"},
    )
    nnodes: int | None = field(default=None, metadata={"min": 1, "help": "nodes; null = PET_NNODES or 1"})
    rdzv_endpoint: str | None = field(
        default=None,
        metadata={"check": _check_endpoint, "help": "host:port of the first node; null = PET_RDZV_ENDPOINT"},
    )
    rdzv_id: str | None = field(
        default=None,
        metadata={"help": "rendezvous id shared by the nodes; null = PET_RDZV_ID or the command"},
    )
    fz_pool: Literal["stale", "block"] = field(
        default="stale",
        metadata={
            "help": "under dvc repro with more than one process: 'stale' = the first fz@<block> stage also "
            "renders the chunks of every fz.blocks block whose stage DVC runs too (all GPUs busy), 'block' = "
            "its own only"
        },
    )


def _lookup(values: Any, dotted: str) -> tuple[bool, Any]:
    """(found, value) of a DVC params key such as ``fz.blocks.layer2_1`` (dot-separated, as DVC reads it)."""
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return False, None
        values = values[part]
    return True, values


def _file_md5(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _dvc_yaml(path: Path) -> Any:
    """A YAML file as DVC reads it (rsi.config.read_dvc_yaml: ``5e-05`` is a float there, where PyYAML
    reads a string, and the values would never compare equal), or None when there is none."""
    return read_dvc_yaml(path) if path.is_file() else None


@dataclass(frozen=True)
class DeclaredStage:
    """What dvc.yaml declares for one stage, with a foreach stage's member filled in as DVC names it.
    ``command`` is None where it interpolates anything else; in ``params`` a file whose keys are None is
    tracked whole."""

    command: str | list[str] | None
    params: dict[str, set[str] | None]
    deps: list[str]


def declared_stage(
    pipeline: dict[str, Any], name: str, params_file: dict[str, Any] | None = None
) -> DeclaredStage | None:
    """The :class:`DeclaredStage` of stage ``name`` in dvc.yaml's ``stages`` (``fz@layer2_1`` is member
    ``layer2_1`` of ``fz``'s foreach: ``${key}`` of a mapping, ``${item}`` of a list, whose kind is read
    from ``params_file``, the params.yaml DVC templates with). None: not declared, or not resolvable."""
    group, _, member = name.partition("@")
    stage = pipeline.get(group)
    if not isinstance(stage, dict):
        return None
    fills: dict[str, str] = {}
    if member:
        if not isinstance(stage.get("do"), dict):
            return None
        over = stage.get("foreach")
        if isinstance(over, str) and re.fullmatch(r"\$\{[^}]+\}", over):
            over = _lookup(params_file or {}, over[2:-1])[1]
        if isinstance(over, dict):
            fills = {"${key}": member}
        elif isinstance(over, list):
            fills = {"${item}": member}
        else:
            return None
        stage = stage["do"]

    def known(value: Any) -> str | None:  # None: not a string, or it interpolates something else
        if not isinstance(value, str):
            return None
        for field_, text in fills.items():
            value = value.replace(field_, text)
        return None if "${" in value else value

    command = stage.get("cmd")
    if isinstance(command, list):
        filled = [known(part) for part in command]
        command = None if None in filled else filled
    else:
        command = known(command)
    params: dict[str, set[str] | None] = {}
    for entry in stage.get("params") or []:
        files = {"params.yaml": [entry]} if isinstance(entry, str) else entry
        for file, keys in files.items() if isinstance(files, dict) else ():
            if not keys:  # `- other.yaml:` with no keys: the whole file
                params[file] = None
            elif params.get(file, set()) is not None:
                params.setdefault(file, set()).update(k for k in map(known, keys) if k is not None)
    deps = [
        d
        for d in map(known, (next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps") or []))
        if d
    ]
    return DeclaredStage(command, params, deps)


def outdated_stages(names: Sequence[str], root: Path = Path(".")) -> list[str]:
    """Those of the DVC stages ``names`` (``fz@layer2_1`` …) that `dvc repro` runs, read from the files
    alone (so it answers while DVC runs a stage): no dvc.lock entry, or ``always_changed``; or, against dvc.yaml's declaration,
    another command, a declared param or dependency the entry lacks; or another value of a declared param
    (every recorded one of a file tracked whole), or another md5 of a recorded dependency file. A stage
    DVC would restore from its run-cache (a param changed back) counts too; directory dependencies are
    not compared. A dvc.lock or dvc.yaml it cannot read is an error for the caller."""
    stages = (_dvc_yaml(Path(root) / "dvc.lock") or {}).get("stages", {})
    pipeline = (_dvc_yaml(Path(root) / "dvc.yaml") or {}).get("stages", {})
    params_files: dict[str, Any] = {}

    def params_of(name: str) -> Any:
        if name not in params_files:
            params_files[name] = _dvc_yaml(Path(root) / name) or {}
        return params_files[name]

    def outdated(name: str, entry: dict[str, Any] | None) -> bool:
        if not entry or (pipeline.get(name.partition("@")[0]) or {}).get("always_changed"):
            return True
        recorded = {file: values or {} for file, values in (entry.get("params") or {}).items()}
        compared = {file: set(values) for file, values in recorded.items()}
        locked_deps = {d.get("path") for d in entry.get("deps") or []}
        declared = declared_stage(pipeline, name, params_of("params.yaml"))
        if declared is not None:
            if declared.command is not None and declared.command != entry.get("cmd"):
                return True
            if any(dep not in locked_deps for dep in declared.deps):
                return True
            for file, keys in declared.params.items():
                if file not in recorded or not (keys or set()) <= set(recorded[file]):
                    return True
            # DVC compares the declared keys only (a file tracked whole: every key it recorded)
            compared = {
                file: set(recorded[file]) if keys is None else keys for file, keys in declared.params.items()
            }
        for file, keys in compared.items():
            for key in keys:
                if _lookup(params_of(file), key) != (True, recorded[file].get(key)):
                    return True
        deps = [d for d in entry.get("deps") or [] if not str(d.get("md5", "")).endswith(".dir")]
        return any(_file_md5(Path(root) / d["path"]) != d.get("md5") for d in deps)

    return [name for name in names if outdated(name, stages.get(name))]


def inside_launcher() -> bool:
    """True in a worker that torchrun (or this module) started: it must not relaunch itself."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def processes_per_node(params: LaunchParams, device: str = "auto") -> int:
    """``nproc_per_node`` resolved: ``auto`` is PET_NPROC_PER_NODE when set, else the visible CUDA
    devices (none, ``model.device: cpu``, or one named GPU such as ``cuda:1``: 1)."""
    if params.nproc_per_node != "auto":
        return int(params.nproc_per_node)
    from_env = os.environ.get("PET_NPROC_PER_NODE", "")
    if from_env.isdigit() and int(from_env) >= 1:
        return int(from_env)
    if device == "cpu" or _names_one_gpu(device):
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def _names_one_gpu(device: str) -> bool:
    """``cuda:K``: every process would run on GPU K (resolve_device honours the index)."""
    return device.startswith("cuda:")


def _node_count(params: LaunchParams) -> int:
    if params.nnodes is not None:
        return params.nnodes
    value = os.environ.get("PET_NNODES", "1")
    return int(value.split(":")[-1]) if value.replace(":", "").isdigit() else 1


def rendezvous_id(argv: Sequence[str]) -> str:
    """The same id on every node for the same command (each stage run is its own rendezvous)."""
    words = "-".join(part.lstrip("-") for part in argv)
    return "rsi-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", words).strip("-")


def torchrun_argv(
    params: LaunchParams, argv: Sequence[str], nproc: int, source: str, log_dir: Path = LOG_DIR
) -> list[str]:
    """torchrun's command line for ``rsi <argv>`` with ``nproc`` workers per node, logging under ``log_dir``."""
    nodes = _node_count(params)
    command = [
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",  # a failed worker fails the stage; a rerun resumes from finished chunks
        f"--log-dir={log_dir}",
        "--tee=3",  # each worker's stdout and stderr on the console and in its own log file
    ]
    if nodes == 1 and params.rdzv_endpoint is None and "PET_RDZV_ENDPOINT" not in os.environ:
        command.append("--standalone")  # one node: a private rendezvous on a free local port
    else:
        endpoint = params.rdzv_endpoint or os.environ.get("PET_RDZV_ENDPOINT")
        if not endpoint:
            raise ParamsError(
                f"{source}: launch.nnodes = {nodes} needs launch.rdzv_endpoint (host:port of the first "
                "node, the same on every node) or PET_RDZV_ENDPOINT"
            )
        command += [
            f"--nnodes={params.nnodes}" if params.nnodes is not None else None,
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-backend={os.environ.get('PET_RDZV_BACKEND', 'c10d')}",
            f"--rdzv-id={params.rdzv_id or os.environ.get('PET_RDZV_ID') or rendezvous_id(argv)}",
        ]
    return [part for part in command if part is not None] + ["-m", "rsi.cli", *argv]


def wanted(command: str, raw: dict[str, Any], source: str) -> tuple[LaunchParams, int] | None:
    """(launch params, processes per node) when ``command`` should relaunch itself, else None."""
    if command not in SHARDED_STAGES or inside_launcher():
        return None
    params = load_section(raw, "launch", LaunchParams, source=source)
    device = _device(raw)
    nproc = processes_per_node(params, device)
    if nproc > 1 and _names_one_gpu(device):
        raise ParamsError(
            f"{source}: launch.nproc_per_node = {nproc} but model.device = {device!r} puts every process on "
            "that one GPU: use model.device: auto (one GPU per process) or launch.nproc_per_node: 1"
        )
    if nproc > 1 and device != "cpu":
        import torch

        visible = torch.cuda.device_count()
        if 0 < visible < nproc:
            raise ParamsError(
                f"{source}: launch.nproc_per_node = {nproc} but {visible} CUDA device(s) are visible: "
                "use auto or at most that many"
            )
    if nproc * _node_count(params) == 1:
        return None
    return params, nproc


def _device(raw: dict[str, Any]) -> str:
    model = raw.get("model") or {}
    return str(model.get("device", "auto")) if isinstance(model, dict) else "auto"


def worker_threads(device: str) -> str:
    """OMP_NUM_THREADS for every worker. On a CPU: the threads one process uses (torch's default, or the
    OMP_NUM_THREADS already set), because CPU kernels pick their blocking, and so their float rounding,
    by thread count: on a 2-core CPU a 224 px FZ differs after 4 steps and ResNet18 activations differ in
    the last bit between 1 and 2 threads. torchrun's default of 1 per worker made N processes write other
    bytes than one (seen in stability's and pre-reading's activations). With CUDA: 1, torchrun's default
    (the work is on the GPUs)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return str(torch.get_num_threads())
    return "1"


def maybe_relaunch(command: str, params_file: str, argv: Sequence[str]) -> int | None:
    """Run ``rsi <argv>`` under the elastic launcher when params.yaml's ``launch`` asks for more than one
    process: the exit status (0, or 1 after printing the failed worker's error). None: run here."""
    if command not in SHARDED_STAGES or inside_launcher():
        return None
    raw = read_params(params_file)
    plan = wanted(command, raw, params_file)
    if plan is None:
        return None
    params, nproc = plan
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    log_dir = invocation_log_dir()
    args = torchrun.get_args_parser().parse_args(torchrun_argv(params, argv, nproc, params_file, log_dir))
    os.environ.setdefault("OMP_NUM_THREADS", worker_threads(_device(raw)))  # results never depend on nproc
    print(f"rsi {command}: {nproc} process(es) per node via torch.distributed.run", file=sys.stderr)
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        print(
            f"rsi {command}: error: {describe_failure(error, args.rdzv_id, log_dir)}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except RendezvousError as error:  # e.g. the node that held the rendezvous (rdzv_endpoint) stopped
        print(
            f"rsi {command}: error: lost the rendezvous with the other nodes ({type(error).__name__}): the "
            "node at launch.rdzv_endpoint stopped, and its command says why; this node's workers were ended, "
            "and a rerun resumes from the finished chunks",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except SignalException as error:  # the launcher turns Ctrl-C / SIGTERM into this after ending workers
        if error.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        print(f"rsi {command}: stopped by {error.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(error.sigval)
    return 0


def describe_failure(error: Any, run_id: str, log_dir: Path = LOG_DIR) -> str:
    """One line: the first failed worker, its last error line, and where its full log is."""
    failures = list(error.failures.items())  # in the order the launcher saw them fail
    first = [f for f in failures if f[1].exitcode != -signal.SIGTERM] or failures  # SIGTERM: ended by it
    rank, failure = first[0]
    log = worker_log(run_id, failure.local_rank, log_dir)
    if failure.exitcode < 0:
        what = f"{failure.message or f'signal {-failure.exitcode}'}"
    else:
        line = last_error_line(log) if log is not None else None
        what = f"exit code {failure.exitcode}: {line or failure.message}"
    where = f"; full log: {log}" if log is not None else ""
    return f"worker rank {rank} failed ({what}){where}"


def worker_log(run_id: str, local_rank: int, log_dir: Path = LOG_DIR) -> Path | None:
    """``<log_dir>/<run id>_<random>/attempt_<n>/<local rank>/stderr.log`` of the latest run."""
    logs = sorted(
        log_dir.glob(f"{glob.escape(run_id)}_*/attempt_*/{local_rank}/stderr.log"),
        key=lambda path: path.stat().st_mtime,
    )
    return logs[-1] if logs else None


def last_error_line(log: Path) -> str | None:
    """The error of a worker's stderr log, without the launcher's ``[rankN]:`` prefix: its last ``rsi
    <stage>: error:`` line, else the last line of a traceback (``…Error: …``), else the last line that is
    not a torch or NCCL log line (``[W…]``, ``WARNING: destroy_process_group() …`` at exit)."""
    if not log.is_file():
        return None
    lines = [
        re.sub(r"^\[[^\]]*\]:\s?", "", line).strip() for line in log.read_text(errors="replace").splitlines()
    ]
    lines = [line for line in lines if line]
    for pattern in (r"^rsi [\w-]+: error: ", r"^[\w.]*(Error|Exception|Interrupt)\b.*:"):
        found = [line for line in lines if re.match(pattern, line)]
        if found:
            return found[-1]
    plain = [line for line in lines if not re.match(r"^(\[[WIE]\d|\[[WIE] |WARNING: )", line)]
    return (plain or lines)[-1] if lines else None
