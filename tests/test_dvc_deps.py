"""dvc.yaml declares, for every stage, exactly the rsi modules its command runs: a change to any module a
stage imports (directly, lazily or through importlib) re-runs it, and a change to any other re-runs nothing.
Infrastructure that cannot change a result is left out on purpose (see dvc.yaml's header)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from rsi.cli import COMMANDS, WITHOUT_PARAMS, build_parser

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "rsi"
# argument dispatch, params parsing/validation, process sharding (tested result-invariant):
# modules no result depends on: editing them re-runs nothing (launch: how many processes, tested
# byte-identical to one; it also decides which stale fz blocks the first fz stage pools)
INFRASTRUCTURE = {"cli", "config", "distributed", "launch"}


def module_file(module: str) -> Path:
    """The source file of an rsi module named relative to the package ("fz", "artifacts.fz")."""
    path = SRC.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _with_parents(name: str) -> set[str]:
    """Importing rsi.a.b runs rsi/a/__init__.py too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imported_modules(module: str) -> set[str]:
    """rsi modules that ``module`` imports anywhere in its source (importlib strings included), named
    relative to the package; a submodule brings its package's __init__ with it."""
    tree = ast.parse(module_file(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "rsi" or node.module.startswith("rsi."):
                base = node.module.removeprefix("rsi").lstrip(".")
                if base:
                    found |= _with_parents(base)
                for alias in node.names:
                    name = f"{base}.{alias.name}" if base else alias.name
                    if _is_module(name):
                        found |= _with_parents(name)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = module.rsplit(".", 1)[0] if module_file(module).name != "__init__.py" else module
            base = ".".join([package, node.module] if node.module else [package])
            found |= _with_parents(base)
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}"):
                    found |= _with_parents(f"{base}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rsi."):
                    found |= _with_parents(alias.name.removeprefix("rsi."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("rsi."):
            candidate = node.value.removeprefix("rsi.")
            if _is_module(candidate):
                found |= _with_parents(candidate)
    return found


def closure(module: str) -> set[str]:
    """``module`` and what it imports, transitively; not through cli and launch (launch names rsi.cli,
    which imports every stage, to relaunch it)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            if current not in {"cli", "launch"}:
                todo.extend(imported_modules(current))
    return seen


def stages() -> dict[str, dict]:
    out = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        out[name] = stage.get("do", stage)
    return out


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_declares_exactly_the_modules_it_runs(name):
    stage = stages()[name]
    command = stage["cmd"].split()[1]
    entry = COMMANDS[command][0].split(".")[1]
    expected = {module_file(m).relative_to(REPO).as_posix() for m in closure(entry) - INFRASTRUCTURE}
    declared = {d for d in stage["deps"] if d.startswith("src/") and d.endswith(".py")}
    assert declared == expected, (
        f"stage {name}: missing {sorted(expected - declared)}, not run {sorted(declared - expected)}"
    )


def test_the_scan_sees_lazy_and_importlib_imports():
    assert "fz" in imported_modules("cli")  # importlib.import_module("rsi.fz") through COMMANDS
    assert "model" in imported_modules("whole_channel")  # from rsi.model import ... inside a function


def _outs(stage: dict) -> list[str]:
    """Every path a stage writes (outs, metrics, plots), a foreach template cut at its first ${...}."""
    paths = []
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            paths.append(path.split("${")[0].rstrip("/"))
    return paths


def _feeds(out: str, dep: str) -> bool:
    return out == dep or out.startswith(f"{dep}/") or dep.startswith(f"{out}/")


def rerun_by_editing(path: str) -> set[str]:
    """The stages `dvc repro` re-runs after an edit of ``path``: those that declare it, and every stage
    downstream of their outputs."""
    all_stages = stages()
    todo = [name for name, stage in all_stages.items() if path in stage["deps"]]
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            outs = _outs(all_stages[name])
            todo += [
                other
                for other, stage in all_stages.items()
                if any(_feeds(out, dep) for out in outs for dep in stage["deps"])
            ]
    return found


def test_editing_figures_reruns_figures_and_report_and_no_fz():
    assert rerun_by_editing("src/rsi/figures.py") == {"figures", "report"}
    assert rerun_by_editing("src/rsi/natural_figures.py") == {"figures", "report"}
    assert rerun_by_editing("src/rsi/whole_channel.py") == {"whole-channel", "figures", "report"}


def test_editing_the_report_reruns_only_the_report():
    assert rerun_by_editing("src/rsi/report.py") == {"report"}


def declaring(path: str) -> set[str]:
    """The stages that list ``path`` among their own deps (re-run by an edit whatever their inputs do)."""
    return {name for name, stage in stages().items() if path in stage["deps"]}


def test_editing_the_data_code_reruns_the_cache_readers_only_through_the_cache():
    """prepare-data's listing, download and decode code (rsi.data, imagenet_wnids.txt) is no dep of the
    stages that read the cache (through rsi.eval_set): they re-run only where outputs/eval changes, as dvc
    compares it; an edit of how they read it re-runs them directly."""
    # stage data-listing lists with the same code (its digest changes only where the listing does)
    assert declaring("src/rsi/data.py") == {"data-listing", "prepare-data"}
    assert declaring("src/rsi/imagenet_wnids.txt") == {"data-listing", "prepare-data"}
    assert declaring("src/rsi/eval_set.py") == {"natural", "natural-criteria", "ablate"}
    assert rerun_by_editing("src/rsi/data.py") == {
        "data-listing",
        "prepare-data",
        "natural",
        "natural-criteria",
        "ablate",
        "figures",
        "report",
    }


def test_natural_criteria_reads_the_activations_params_without_the_activations_code():
    """natural-criteria applies S at activations.scale_fraction (read by rsi.config): the FZ measurement
    code reaches it only through outputs/criteria; ablate reads natural.blocks without rsi.natural."""
    assert declaring("src/rsi/activations.py") == {"activations", "stability", "rerun-fz", "pre-reading"}
    assert declaring("src/rsi/artifacts/fz.py").isdisjoint({"natural-criteria", "ablate", "natural"})
    assert "natural-criteria" in rerun_by_editing("src/rsi/activations.py")  # through its outputs
    assert "natural-criteria" in declaring("src/rsi/criteria.py")  # it tests Eq. 2 with criteria's code
    assert declaring("src/rsi/natural.py") == {"natural", "natural-criteria"}


def _printed_keys(section: str, raw: dict) -> list[str]:
    """The ``section.key`` names of the rows the report prints for params section ``section``."""
    from rsi.report import _declared_rows

    return [f"{section}.{row[0].strip('`')}" for row in _declared_rows(raw, section) if row[0] != "—"]


def test_the_report_declares_exactly_the_params_it_prints():
    from rsi.report import PARAMS_SECTIONS, PRINTED_PARAMS

    declared = stages()["report"]["params"]
    assert sorted(declared) == sorted(PRINTED_PARAMS)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    printed = [key for section in PARAMS_SECTIONS for key in _printed_keys(section, raw)]
    covered = {entry for entry in declared for key in printed if key == entry or key.startswith(f"{entry}.")}
    assert covered == set(declared), f"declared but never printed: {sorted(set(declared) - covered)}"
    loose = [key for key in printed if not any(key == d or key.startswith(f"{d}.") for d in declared)]
    assert not loose, f"printed but not declared: {loose}"
    assert {"fz.chunk_batches", "data.workers", "model.device", "ablate.screen_batch"}.isdisjoint(printed)


def test_stability_outs_are_the_params_seed_root():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    outs = stages()["stability"]["outs"]
    assert outs == [params["criteria"]["seed_root"].format(seed="${item}")]


def test_package_data_a_module_reads_is_declared_by_its_stages():
    for name, stage in stages().items():
        for module in closure(COMMANDS[stage["cmd"].split()[1]][0].split(".")[1]) - INFRASTRUCTURE:
            source = module_file(module).read_text()
            for data_file in sorted(SRC.glob("*.txt")):
                if f'"{data_file.name}"' in source:
                    assert f"src/rsi/{data_file.name}" in stage["deps"], (name, data_file.name)


def _entries(declared: list) -> dict[str, dict]:
    """A dvc.yaml outs/metrics/plots list as {path: options} (a bare path has no options)."""
    out: dict[str, dict] = {}
    for entry in declared or []:
        if isinstance(entry, str):
            out[entry] = {}
        else:
            ((path, options),) = entry.items()
            out[path] = options or {}
    return out


def test_no_stage_switches_the_run_cache_off():
    """DVC 3 saves no run-cache entry for a stage with an uncached out that is neither a metric nor a plot
    (dvc.stage.Stage.run: run_cache=not no_cache_outs), so a reverted parameter would recompute the stage
    instead of restoring it. Uncached files belong under metrics: or plots:."""
    uncached = {
        (name, path)
        for name, stage in stages().items()
        for path, options in _entries(stage.get("outs")).items()
        if options.get("cache", True) is False
    }
    assert not uncached, f"uncached outs (move them under metrics:/plots:, or cache them): {sorted(uncached)}"
    assert "outputs/report.md" in _entries(stages()["report"]["outs"])


def test_the_ablation_plot_is_the_ablate_stages_and_drawn_once():
    """The Eq. 3 plot is declared with its stage (uncached, so git keeps it and the run-cache restores it)
    and not again among the top-level plots, which would make `dvc plots show/diff` draw it twice."""
    plot = _entries(stages()["ablate"].get("plots"))["plots/ablation_ratio.csv"]
    assert plot["cache"] is False and (plot["x"], plot["y"], plot["template"]) == (
        "ratio",
        "label",
        "bar_horizontal",
    )
    assert "plots/ablation_ratio.csv" not in _entries(stages()["ablate"].get("outs"))
    top = yaml.safe_load((REPO / "dvc.yaml").read_text()).get("plots") or []
    named = set()
    for entry in top:
        ((plot_id, options),) = entry.items() if isinstance(entry, dict) else ((entry, {}),)
        y = (options or {}).get("y")
        named |= {plot_id} | (set(y) if isinstance(y, dict) else set())
    assert "plots/ablation_ratio.csv" not in named, named


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - WITHOUT_PARAMS))
def test_every_stage_takes_the_outputs_root_as_one_flag(command):
    """`--outputs` is the outputs root of every stage (rsi.cli adds it once), default outputs/; no stage
    names its root otherwise (the old --root, or --out for a folder; --out is for single files)."""
    stage = build_parser(command)._subparsers._group_actions[0].choices[command]
    flags = {flag: action for action in stage._actions for flag in action.option_strings}
    assert flags["--outputs"].default == "outputs"
    assert "--root" not in flags and ("--out" not in flags or command == "report")
