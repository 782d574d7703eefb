"""`rsi report`: ``outputs/report.md``, every reproduced number beside the paper's, and what differs; and
``metrics/top_images.json`` (:mod:`rsi.artifacts.top_images`), §3's top-image reading, which no other stage
computes, for ``dvc metrics diff``.

Owns the Markdown: the sections, and which params keys it prints (:data:`PRINTED_PARAMS`, the keys the
report stage declares in dvc.yaml). Inputs (the file contract of :mod:`rsi.artifacts`):
``metrics/criteria.json`` and ``outputs/criteria/passing.json`` (stage criteria), ``metrics/ablation.json``
and the device in ``outputs/ablation/trials.json`` (stage ablate); the top natural images
(``outputs/natural``, stage natural); optionally the criteria of stage pre-reading (``outputs/reference``), the FZ
``settings.json`` files, the evaluation cache's ``index.json`` and the figures. The paper's numbers come
from :mod:`rsi.paper`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rsi import artifacts
from rsi.ablate_params import AblateParams
from rsi.artifacts.ablation import (
    CHANNEL_SET_LABELS,
    AblationRun,
    AblationSeries,
    read_ablation_metrics,
    read_ablation_run,
    trials_file,
)
from rsi.artifacts.criteria import REFERENCE_METRICS, read_criteria_metrics
from rsi.artifacts.eval import read_eval
from rsi.artifacts.natural_criteria import read_natural_criteria_metrics
from rsi.artifacts.passing import read_passing
from rsi.artifacts.top_images import METRICS_FILE as TOP_IMAGES_METRICS
from rsi.artifacts.top_images import TopImageOverlap, write_top_images
from rsi.config import PROBED_BLOCKS, load_section, read_params
from rsi.criteria import CriteriaParams
from rsi.labels import RunLabels, run_labels
from rsi.model import PAPER_LABEL, describe_weights
from rsi.natural_params import NaturalParams
from rsi.paper import (
    ABLATION_TRIALS,
    AUTHORS_DECODER,
    AUTHORS_JITTER,
    EVAL_CLASSES,
    EVAL_IMAGES,
    FZ_IMAGE_SIZE,
    FZ_LR,
    FZ_STEPS,
    REFERENCE,
)
from rsi.runtime import atomic_path
from rsi.taps import DEFAULT_ARCH, block_order, num_channels, parse_block

# The params keys the report prints (the settings table and the list in <details>), each declared as a
# param of the report stage in dvc.yaml (tests/test_dvc_deps.py keeps the two equal), so a change to any
# of them re-makes the report. A bare section name stands for every key in it. Speed-only keys
# (data.workers, fz.chunk_batches, ablate.screen_batch, launch) change no result, and model.device only
# the last bits (the report names each stage's device instead): neither printed nor declared.
PRINTED_PARAMS: tuple[str, ...] = (
    "model.weights",
    "model.arch",
    "data.source",
    "data.root",
    "data.ground_truth",
    "data.label_map",
    "data.class_index",
    "data.per_class",
    "data.random_subset",
    "data.on_bad_file",
    "data.generated",
    "data.download",
    "fz.steps",
    "fz.lr",
    "fz.image_size",
    "fz.batch_channels",
    "fz.transforms",
    "fz.pre_reading",
    "fz.storage",
    "fz.tf32",
    "fz.cuda_backward",
    "fz.max_channels",
    "fz.blocks",
    "activations",
    "criteria",
    "natural",
    "ablate.blocks",
    "ablate.crop_rule",
    "ablate.percents",
    "ablate.trials",
    "ablate.screening",
    "ablate.max_attempts",
    "ablate.on_screening_failure",
    "ablate.batch_size",
    "ablate.channel_sets",
    "ablate.tf32",
    "figures",
    "report",
)
PARAMS_SECTIONS = ("model", "data", "fz", "activations", "criteria", "natural", "ablate", "figures", "report")


@dataclass(frozen=True)
class ReportParams:
    """params.yaml ``report``."""

    decimals: int = field(default=4, metadata={"min": 1, "max": 8, "help": "decimals of ratios"})


# ------------------------------------------------------------------------------------------------------
# Reading the stage outputs (one small function per file).


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_fz_settings(root: Path = artifacts.OUTPUTS) -> dict[str, dict[str, Any]]:
    """``{"2.1": settings}`` for every block stage fz rendered under ``root`` (rsi.artifacts.fz)."""
    from rsi.artifacts.fz import read_fz_settings as read_settings
    from rsi.artifacts.fz import rendered_blocks

    return {
        block: read_settings(artifacts.fz_settings_file(block, root)).as_json()
        for block in rendered_blocks(root)
    }


NOT_IN_PAPER = "not in the paper"


def paper_for(arch: str) -> dict[str, Any]:
    """The paper's numbers (:data:`rsi.paper.REFERENCE`) where they apply: for an arch other than its
    ResNet18, none (the sections then say "not in the paper" where a paper number would be)."""
    if arch == DEFAULT_ARCH:
        return dict(REFERENCE)
    keep = ("source", "ablation_claim")
    return {**{key: REFERENCE[key] for key in keep}, "absent": NOT_IN_PAPER}


# ------------------------------------------------------------------------------------------------------
# Markdown.


def _fmt(value: Any, decimals: int = 2, *, full: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{decimals}f}"
    if isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value)
        return f"[{text}]" if full or len(text) < 80 else f"[{text[:77]}…] ({len(value)} items)"
    if isinstance(value, Mapping):
        text = json.dumps(value, sort_keys=True)
        return text if len(text) < 100 else text[:97] + "…"
    return str(value)


def _plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _flatten(section: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(section, Mapping):
        return [(prefix, section)]
    rows = []
    for key, value in section.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, name))
        else:
            rows.append((name, value))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _subset(n_images: int | None) -> bool:
    """Whether the run evaluated fewer images than the paper's 50,000."""
    return n_images is not None and n_images < EVAL_IMAGES


def _param(raw: Mapping[str, Any], key: str, params: type | None = None) -> Any:
    """The value params.yaml gives ``key`` (``section.name``); when it gives none, the default of field
    ``name`` of the section's dataclass ``params`` (the stage's own default, not a copy), else None. Only
    keys of :data:`PRINTED_PARAMS` (declared by the report stage) may be read."""
    if not any(key == known or key.startswith(f"{known}.") for known in PRINTED_PARAMS):
        raise KeyError(f"{key} is not in rsi.report.PRINTED_PARAMS: declare it for the report stage first")
    section, name = key.split(".", 1)
    values = raw.get(section) or {}
    if name in values or params is None:
        return values.get(name)
    default = {f.name: f for f in fields(params)}[name]
    return default.default_factory() if default.default is MISSING else default.default


def _fz_param(raw: Mapping[str, Any], name: str, fz_settings: Mapping[str, Mapping[str, Any]]) -> Any:
    """``fz.<name>`` as params.yaml gives it; when it gives none, the value every rendered tap's
    ``settings.json`` records (what the FZs were rendered with: the report does not import the FZ code
    for its defaults), else None."""
    value = _param(raw, f"fz.{name}")
    if value is not None:
        return value
    recorded = {
        json.dumps(tap[name])
        for content in fz_settings.values()
        for tap in content["taps"].values()
        if name in tap
    }
    return json.loads(recorded.pop()) if len(recorded) == 1 else None


def _banner(labels: RunLabels, n_images: int | None) -> list[str]:
    """The warnings above everything else: what makes this run unlike the paper's."""
    warnings = (
        (
            labels.random_weights,
            f"> **RANDOM WEIGHTS** — this run used `model.weights: {labels.weights}`, a seeded random "
            f"{labels.network}, not the paper's IMAGENET1K_V1. Every number below exercises the pipeline "
            "only; none of it says anything about the paper's claims.",
        ),
        (
            labels.arch != DEFAULT_ARCH,
            f"> **{labels.network.upper()}** — `model.arch: {labels.arch}`: the paper studied ResNet18 "
            "only, so its numbers do not apply; the paper columns say “not in the paper”.",
        ),
        (
            labels.generated_data,
            "> **GENERATED DATA** — the evaluation images were generated, not ImageNet validation: "
            "accuracies, ablation ratios and top natural images are placeholders.",
        ),
        (
            not labels.generated_data and _subset(n_images),
            f"> **SUBSET** — evaluated on {n_images or 0:,} images, not the {EVAL_IMAGES:,} ImageNet "
            "validation images of the paper.",
        ),
    )
    lines = [text for shown, text in warnings if shown]
    if not lines:
        return []
    separated = [part for line in lines for part in (line, ">")]
    return [*separated[:-1], ""]


def _exactness_rows(raw: Mapping[str, Any]) -> list[list[str]]:
    """Settings rows that decide what can match the paper exactly (issue 10's switches)."""
    return [
        [
            "ablation channel sets",
            _fmt(_param(raw, "ablate.channel_sets", AblateParams)),
            "the authors ablated their published lists (`published`)",
        ],
        [
            "Eq. 1 reading",
            _fmt(_param(raw, "criteria.eq1_reading", CriteriaParams)),
            "`authors_code` (difference / Pre_c(X̂_Pre_c), stream_inspect.py l. 428)",
        ],
        [
            "TF32 on CUDA (ablate)",
            _fmt(_param(raw, "ablate.tf32", AblateParams)),
            "on for convolutions (torch 2.0's default on Ampere or newer GPUs)",
        ],
        [
            "TF32 on CUDA (natural: the ablation means)",
            _fmt(_param(raw, "natural.tf32", NaturalParams)),
            "on for convolutions (their thingsvision pass on CUDA, torch 2.0)",
        ],
    ]


def _declared_rows(raw: Mapping[str, Any], section: str) -> list[list[str]]:
    """The rows of params.yaml ``section`` whose key :data:`PRINTED_PARAMS` lists (or the whole section)."""
    rows = _flatten(raw.get(section) or {})
    if section not in PRINTED_PARAMS:
        rows = [(key, value) for key, value in rows if f"{section}.{key.split('.')[0]}" in PRINTED_PARAMS]
    return [[f"`{key}`", _fmt(value)] for key, value in rows] or [["—", "—"]]


def _params_details(raw: Mapping[str, Any], fz_settings: dict[str, dict[str, Any]], root: Path) -> list[str]:
    """Every declared params key, and the FZ stage's settings files, folded away."""
    summary = "Every parameter of params.yaml the report declares, and the FZ settings files"
    lines = ["<details><summary>" + summary + "</summary>", ""]
    for name in PARAMS_SECTIONS:
        if raw.get(name) is not None:
            lines += [
                f"**params.yaml `{name}`**",
                "",
                *_table(["key", "value"], _declared_rows(raw, name)),
                "",
            ]
    for block, content in fz_settings.items():
        lines += [f"**`{artifacts.fz_dir(block, root)}/settings.json`**", "", "```json"]
        lines += [json.dumps(content, indent=1, sort_keys=True)[:4000], "```", ""]
    return [*lines, "</details>", ""]


def _devices(
    fz_settings: Mapping[str, Mapping[str, Any]], ablation_run: AblationRun | None
) -> dict[str, str]:
    """What computed the FZs (per block, as each block's settings.json records it) and the ablation, as
    rsi.runtime.describe_device named it: CPU and GPU floats differ (DESIGN)."""
    devices: dict[str, list[str]] = {}
    for block, content in fz_settings.items():
        devices.setdefault(content["device"], []).append(block)
    named = {f"FZs {', '.join(blocks)}": device for device, blocks in devices.items()}
    if ablation_run is not None:
        named["ablation"] = ablation_run.device
    return named


def _settings_section(
    raw: Mapping[str, Any],
    labels: RunLabels,
    weights_label: str,
    index: Mapping[str, Any],
    counts: tuple[int | None, int | None],
    fz_settings: Mapping[str, Mapping[str, Any]],
    devices: Mapping[str, str],
) -> tuple[list[str], dict[str, Any]]:
    """The settings table (this run beside the paper's) and the settings the later sections judge by."""
    n_images, n_classes = counts
    steps, pre_reading = _fz_param(raw, "steps", fz_settings), _fz_param(raw, "pre_reading", fz_settings)
    crop_rule = _param(raw, "ablate.crop_rule", AblateParams)
    source = _param(raw, "data.source")
    if source is None:
        source = index["source"]  # read_eval checks every key of rsi.artifacts.eval.INDEX_KEYS
    settings = {
        "devices": devices,
        "steps": steps,
        "pre_reading": pre_reading,
        "crop_rule": crop_rule,
        "n_images": n_images,
        "decoder": index["decoder"],
    }
    rows = [
        ["weights", f"`{labels.weights}` ({weights_label})", "IMAGENET1K_V1 (resnet18-f37072fd.pth)"],
        ["FZ steps", _fmt(steps), f"{FZ_STEPS} (authors' code; the text says nothing)"],
        [
            "FZ Pre reading",
            _fmt(pre_reading),
            "`lucent_reference` in the authors' code (their Pre FZs optimised Post); exact bn2 in the text",
        ],
        [
            "FZ image size / lr",
            f"{_fmt(_fz_param(raw, 'image_size', fz_settings))} / {_fmt(_fz_param(raw, 'lr', fz_settings))}",
            f"{FZ_IMAGE_SIZE} / {FZ_LR:g}",
        ],
        [
            "ablation crop rule",
            _fmt(crop_rule),
            "`authors_code` (crops 201…112 px) produced Fig. 2; the text's rule gives 231…128 px",
        ],
        ["ablation trials", _fmt(_param(raw, "ablate.trials", AblateParams)), str(ABLATION_TRIALS)],
        [
            "device",
            "; ".join(f"{what}: {device}" for what, device in devices.items()) or "—",
            "a CUDA GPU (model not stated), torch 2.0",
        ],
        *_exactness_rows(raw),
        ["data source", _fmt(source), "ImageNet-1k validation"],
        [
            "data path",
            "— (generated in memory)" if source == "generated" else _fmt(_param(raw, "data.root")),
            "—",
        ],
        ["JPEG decoder", index["decoder"], f"{AUTHORS_DECODER} (the authors' environment.yml)"],
        ["evaluation images", _fmt(n_images), f"{EVAL_IMAGES:,}"],
        ["classes present", _fmt(n_classes), str(EVAL_CLASSES)],
    ]
    lines = ["## Settings used", "", *_table(["setting", "this run", "paper / authors"], rows), ""]
    return lines, settings


def probed_part(channels: Iterable[int], probed: Any, width: int) -> set[int]:
    """The channels among the first ``probed`` of ``width`` (fz.max_channels probes the first N; None or
    the whole width: all of them)."""
    return {int(c) for c in channels if not isinstance(probed, int) or probed >= width or int(c) < probed}


def _jaccard_cell(
    passing: Mapping[str, list[int]] | None,
    block: str,
    paper: Mapping[str, Any],
    probed: Any = None,
    width: int = 0,
) -> str:
    """Jaccard overlap of a run's passing list with the authors' complete published list, or —. When only
    the first ``probed`` channels were probed, with the published channels among them (marked)."""
    published = {parse_block(k): v for k, v in paper.get("ablation_channels_authors_code", {}).items()}
    if passing is None or block not in published or block not in passing:
        return "—"
    ours, theirs = set(passing[block]), probed_part(published[block], probed, width)
    union = ours | theirs
    part = f" (channels 0–{probed - 1})" if isinstance(probed, int) and probed < width else ""
    return f"{len(ours & theirs) / len(union):.2f}{part}" if union else "—"


def _criteria_section(
    criteria: dict[str, dict[str, Any]],
    reference: dict[str, dict[str, Any]] | None,
    paper: dict[str, Any],
    passing: Mapping[str, list[int]] | None = None,
    reference_passing: Mapping[str, list[int]] | None = None,
    pre_reading: Any = "exact",
    *,
    arch: str = DEFAULT_ARCH,
) -> list[str]:
    """The first table: per block the paper's count, the count under the authors' reading of Pre (when
    the pre-reading stage ran), the count of this run's reading, and the overlap with the published lists."""
    paper_counts: dict[str, int] = paper.get("passing", {})
    paper_text: dict[str, str] = paper.get("percent_text", {})
    absent = paper.get("absent", "not probed")
    blocks = sorted(set(criteria) | set(paper_counts), key=block_order)
    main = "the authors' reading" if pre_reading == "lucent_reference" else f"{pre_reading} reading"
    header = ["block", "paper passing"]
    if reference is not None:
        header += ["the authors' reading: comparable with the paper's counts"]
    header += [f"{main} (this run's FZs)", "probed", "paper %"]
    if reference is not None:
        header += ["authors' reading %"]
    header += [f"{main} %"]
    if reference is not None:
        header += ["Jaccard with published (authors' reading)"]
    header += [f"Jaccard with published ({main})", "Eq. 1 pass", "Eq. 2 pass"]
    rows = []
    for block in blocks:
        ours = criteria.get(block, {})
        theirs = (reference or {}).get(block, {})
        count = paper_counts.get(block)
        total = num_channels(block, arch)
        paper_pct = (
            f"{paper_text[block]} ({100 * count / total:.2f})"
            if block in paper_text and count is not None
            else (absent if count is None else "0" if count == 0 else _fmt(100 * count / total))
        )
        row = [block, _fmt(count) if count is not None else absent]
        if reference is not None:
            row += [_fmt(theirs.get("passing")) if theirs else "not run"]
        row += [
            _fmt(ours.get("passing")) if ours else "not run",
            f"{ours.get('channels', '—')} of {total}" if ours else "—",
            paper_pct,
        ]
        if reference is not None:
            row += [_fmt(_number(theirs.get("percent"))) if theirs else "—"]
        row += [_fmt(_number(ours.get("percent"))) if ours else "—"]
        if reference is not None:
            row += [_jaccard_cell(reference_passing, block, paper, theirs.get("channels"), total)]
        row += [
            _jaccard_cell(passing, block, paper, ours.get("channels"), total),
            _fmt(ours.get("eq1_pass")),
            _fmt(ours.get("eq2_pass")),
        ]
        rows.append(row)
    lines = ["## Criteria-passing channels (section 3, Eq. 1 and Eq. 2)", ""]
    lines += _table(header, rows)
    lines += [
        "",
        "Percentages are of the channels probed (all of a block's channels in a full run). The paper gives",
        "rounded percentages; the exact value of its counts is in brackets. Jaccard = |ours ∩ published| /",
        "|ours ∪ published| with the authors' complete published lists (2.1 and 3.1; scale_robust.py), with",
        "the published channels among those probed where a block was probed only in part.",
        "Counts and lists can match the paper only statistically: FZ optimisation is chaotic and the authors",
        "set no seeds.",
    ]
    if reference is not None:
        lines += [
            "\"The authors' reading\" renders the Pre FZs as the authors' code did (`lucent_reference`: lucent's",
            'hook on `bn2` reads the block output after the in-place sum and ReLU, so those "Pre" FZs were',
            "optimised for Post); its counts are the ones comparable with the paper's. The exact reading",
            "optimises the true bn2 output.",
        ]
    lines.append("")
    return lines


def _fz_runs(
    criteria: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]] | None
) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """The criteria counts per reading of Pre that ran, named for a table's FZs column."""
    runs = [("this run's Pre FZs", criteria)]
    if reference is not None:
        runs.append(("the authors' reading of Pre", reference))
    return runs


def _rerun_section(
    criteria: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]] | None, tries: Any
) -> list[str]:
    """The channels the authors' loop would have stopped at and re-rendered (rsi.criteria.authors_rerun_case),
    and how many stage rerun-fz re-rendered (``tries``: criteria.rerun_fz)."""
    rows = [
        [block, name, _fmt(entry["authors_rerun"]), _fmt(entry["rerun_replaced"]), _fmt(entry["channels"])]
        for name, counts in _fz_runs(criteria, reference)
        for block, entry in counts.items()
    ]
    if not rows:
        return []
    if tries:
        how = (
            f"Here (`criteria.rerun_fz: {tries}`) such a channel's X̂_In and X̂_Pre were re-rendered with FZ "
            f"seeds seed + 1 … + {tries} (draws of their own) until its Post responses were not both ≤ 0, under "
            "each reading of Pre; the figures show the re-render, and a channel still there fails Eq. 2."
        )
    else:
        how = (
            "Here (`criteria.rerun_fz: 0`, the default) such a channel is kept as rendered and fails Eq. 2, so "
            "a count above 0 is where this run's lists can differ from a run done their way."
        )
    return [
        "### Channels the authors re-rendered",
        "",
        "The authors' loop (stream_inspect.py line 424) stopped at a channel whose Post_c(X̂_In_c) and",
        'Post_c(X̂_Pre_c) were both below 0 ("Rerun FZ on neuron n") and they re-rendered its FZs before',
        "counting. " + how,
        "",
        *_table(
            ["block", "FZs", "both Post responses ≤ 0 (first rendering)", "re-rendered", "channels"], rows
        ),
        "",
    ]


def _eq1_section(
    criteria: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]] | None, reading: Any
) -> list[str]:
    """How much the reading of Eq. 1 matters: channels with Pre_c(X̂_Pre_c) <= 0 and the verdicts that
    differ between the authors' code and the paper's text."""
    key = "pre_of_pre_fz_nonpositive"
    rows = [
        [block, name, _fmt(entry.get(key)), _fmt(entry.get("eq1_readings_differ")),
         _fmt(entry.get("passing_readings_differ"))]
        for name, counts in _fz_runs(criteria, reference)
        for block, entry in counts.items()
        if key in entry
    ]  # fmt: skip
    if not rows:
        return []
    other = "paper_text" if reading == "authors_code" else "authors_code"
    return [
        "### Eq. 1 as the authors computed it",
        "",
        f"This run reads Eq. 1 as `{reading}` (`criteria.eq1_reading`). The authors' stream_inspect.py (line",
        "428) divides the Eq. 1 difference mean(clip(Pre(S(X̂_In)), 0)) − mean(clip(Pre(X̂_In), 0)) by",
        "Pre_c(X̂_Pre_c) before testing > 0: the printed inequality wherever Pre_c(X̂_Pre_c) > 0, inverted",
        "where it is negative; at zero numpy gives ±inf (the sign of the difference) or nan (fails).",
        f"Verdicts are counted against the `{other}` reading.",
        "",
        *_table(
            [
                "block",
                "FZs",
                "channels with Pre_c(X̂_Pre_c) ≤ 0",
                "Eq. 1 verdicts that differ",
                "passing verdicts that differ",
            ],
            rows,
        ),
        "",
    ]


def _stability_section(
    blocks: Mapping[str, Mapping[str, float]] | None,
    reference: Mapping[str, Mapping[str, float]] | None = None,
) -> list[str]:
    """The seed-to-seed stability of the passing sets (stage criteria's, and under the authors' reading of
    Pre stage pre-reading's, ``reference``), when the run rendered several FZ seeds, or a note that the
    counts have no measured spread (DESIGN: report them with their spread)."""
    if not blocks:
        return [
            "### Stability across FZ seeds",
            "",
            "Not measured: this run rendered its FZs with one seed, so its passing counts have no spread.",
            "`criteria.seeds: [0, 1, 2]` renders two more seeds (stage stability, and stage pre-reading for",
            "the authors' reading of Pre) and reports how the passing sets change between seeds.",
            "",
        ]
    lines = [
        "### Stability across FZ seeds",
        "",
        'FZs are stochastic ("results may vary", section 3): the criteria were also run on FZs of other seeds.',
        "Jaccard mean and min are over the seed pairs where some channel passes (two empty sets are no",
        "agreement; metrics/ counts them as 1.0).",
        "",
    ]
    if reference:
        lines += ["Under this run's reading of Pre (`fz.pre_reading`):", ""]
    lines += _seed_table(blocks)
    if reference:
        lines += [
            "Under the authors' reading of Pre (stage pre-reading: the counts comparable with the paper's):",
            "",
            *_seed_table(reference),
        ]
    return lines


def _seed_table(blocks: Mapping[str, Mapping[str, float]]) -> list[str]:
    keys: list[str] = []
    for entry in blocks.values():
        keys += [k for k in entry if k not in keys]
    rows = [[block, *(_seed_cell(entry, k) for k in keys)] for block, entry in blocks.items()]
    return [*_table(["block", *keys], rows), ""]


def _seed_cell(entry: Mapping[str, float], key: str) -> str:
    """A stability number. The metric calls two empty passing sets equal (Jaccard 1.0), which in a table
    would read as a perfectly stable block: such a pair prints —, and the mean and min are over the other
    pairs (— when none is left)."""
    if not key.startswith("jaccard_"):
        return _fmt(entry.get(key), 3)

    def empty(seeds: Sequence[str]) -> bool:
        return all(entry.get(f"passing_seed{seed}") == 0 for seed in seeds)

    if key in ("jaccard_mean", "jaccard_min"):
        pairs = {k: re.findall(r"seed(\d+)", k) for k in entry if re.fullmatch(r"jaccard_seed\d+_seed\d+", k)}
        if not pairs or not any(empty(seeds) for seeds in pairs.values()):
            return _fmt(entry.get(key), 3)
        values = [float(entry[k]) for k, seeds in pairs.items() if not empty(seeds)]
        if not values:
            return "— (none pass)"
        return _fmt(sum(values) / len(values) if key == "jaccard_mean" else min(values), 3)
    return "— (none pass)" if empty(re.findall(r"seed(\d+)", key)) else _fmt(entry.get(key), 3)


def _natural_criteria_section(path: Path, root: Path) -> list[str]:
    """``criteria.natural_images`` (ours, not the paper's): natural-image counts beside the FZ-based ones,
    with their overlap per block; nothing when the natural-criteria stage was off."""
    blocks = read_natural_criteria_metrics(path).blocks
    if not blocks:
        return []
    header = ["block", "FZ passing", "natural passing", "natural Eq. 1", "natural Eq. 2"]
    header += ["natural passing (FZ-probed)", "both", "Jaccard"]
    rows = [
        [
            block,
            f"{_fmt(entry.get('fz_passing'))} of {_fmt(entry.get('fz_probed'))}",
            f"{_fmt(entry.get('passing'))} of {_fmt(entry.get('channels'))}",
            _fmt(entry.get("eq1_pass")),
            _fmt(entry.get("eq2_pass")),
            _fmt(entry.get("natural_passing_probed")),
            _fmt(entry.get("both")),
            _fmt(_number(entry.get("jaccard")), 3),
        ]
        for block, entry in blocks.items()
    ]
    figures = sorted(p.name for p in (root / "figures").glob("natural_both_*.png"))
    return [
        "## Natural-image criteria (ours, not the paper's)",
        "",
        "`criteria.natural_images: true`: Eq. 1 and Eq. 2 with each channel's top-k natural images (stage",
        "natural) in place of the FZs. Eq. 1: the mean of Pre_c(S(X)) over the In tap's top-k exceeds the mean",
        "of ReLU(Pre_c(X)); Eq. 2: the mean Post_c over the In tap's top-k, over the mean Post_c over the Pre",
        "tap's top-k, lies in the same band. Natural verdicts cover every channel; the overlap (both, Jaccard)",
        "is over the channels the FZ criteria probed.",
        "",
        *_table(header, rows),
        "",
        *[f"- [{name}](figures/{name}) channels passing both" for name in figures],
        *([""] if figures else []),
    ]


def top_image_overlap(topk: np.ndarray, channels: Sequence[int], k: int = 9) -> TopImageOverlap:
    """§3 on the top-k natural images of the passing channels: "no overlap between the input and pre-sum
    layers, but the post-sum layer often contains a mixture of them in addition to novel images". From
    the (3, C, ≥k) In/Pre/Post top-k indices: the channels, the mean number of images In and Pre share,
    the channels where they share none, and the mean number of Post's images that are In's or Pre's (the
    rest, out of k, are novel)."""
    shared, mixed = [], []
    for channel in channels:
        top_in, top_pre, top_post = (set(topk[row, channel, :k].tolist()) for row in range(3))
        shared.append(len(top_in & top_pre))
        mixed.append(len(top_post & (top_in | top_pre)))
    return TopImageOverlap(
        k=k,
        channels=len(shared),
        in_pre_shared_mean=float(np.mean(shared)) if shared else float("nan"),
        in_pre_disjoint=sum(count == 0 for count in shared),
        post_from_in_or_pre_mean=float(np.mean(mixed)) if mixed else float("nan"),
    )


def top_images(
    passing: Mapping[str, list[int]], root: Path = artifacts.OUTPUTS
) -> dict[str, TopImageOverlap]:
    """:func:`top_image_overlap` of each block with passing channels and a natural file, in block order
    (the report's §3 table and ``metrics/top_images.json``)."""
    from rsi.artifacts.natural import read_natural

    found = {}
    for block in sorted(passing, key=block_order):
        if not passing[block] or not artifacts.natural_file(block, root).is_file():
            continue
        topk = read_natural(block, root).topk
        channels = [c for c in passing[block] if c < topk.shape[1]]
        if channels:
            found[block] = top_image_overlap(topk, channels, min(9, topk.shape[-1]))
    return found


def _top_images_section(found: Mapping[str, TopImageOverlap]) -> list[str]:
    """The §3 reading of the passing channels' top natural images, per block with a natural file."""
    rows = [
        [
            block,
            str(overlap.channels),
            f"{overlap.in_pre_shared_mean:.2f} of {overlap.k}",
            f"{overlap.in_pre_disjoint} of {overlap.channels}",
            f"{overlap.post_from_in_or_pre_mean:.2f} of {overlap.k}",
        ]
        for block, overlap in found.items()
    ]
    if not rows:
        return []
    header = [
        "block",
        "passing channels",
        "In ∩ Pre (mean)",
        "In, Pre disjoint",
        "Post's from In or Pre (mean)",
    ]
    return [
        "### Top natural images of the passing channels (section 3)",
        "",
        'The paper: "no overlap between the input and pre-sum layers, but the post-sum layer often contains a',
        "mixture of them in addition to novel images\". Per block, of each passing channel's top images",
        "(center neuron, the evaluation set): how many In and Pre share, and how many of Post's are In's or",
        "Pre's (the rest are novel).",
        "",
        *_table(header, rows),
        "",
    ]


def _channels_section(
    passing: dict[str, list[int]], paper: dict[str, Any], probed: Mapping[str, Any], arch: str = DEFAULT_ARCH
) -> list[str]:
    published: dict[str, list[int]] = {
        parse_block(k): sorted(int(c) for c in v) for k, v in paper.get("channels", {}).items()
    }
    complete_blocks = {parse_block(b) for b in paper.get("channels_complete_blocks", [])}
    if paper.get("channels_complete"):
        complete_blocks |= set(published)
    lines = [
        "## Channel lists and overlap with the authors' channels",
        "",
        "\"authors' list\" is complete where marked (the authors' published code lists every passing channel",
        "of the block); elsewhere it holds only the channels the paper names or labels legibly.",
        '"found" counts the authors\' channels that pass here too. Where a block was probed only in part',
        '(`fz.max_channels`), found, Jaccard and "passing here only" count only the authors\' channels among',
        "those probed.",
        "",
    ]
    rows = []
    details = []
    for block in sorted(set(passing) | set(published), key=block_order):
        ours = passing.get(block)
        theirs = published.get(block)
        if ours is None and theirs is None:
            continue
        ours_set = set(ours or [])
        theirs_set = probed_part(theirs or [], probed.get(block), num_channels(block, arch))
        shared = sorted(ours_set & theirs_set)
        union = ours_set | theirs_set
        compared = bool(theirs) and ours is not None and block in complete_blocks
        rows.append(
            [
                block,
                _fmt(len(ours)) if ours is not None else "not run",
                (f"{len(theirs)} (complete)" if block in complete_blocks else f"{len(theirs)} (partial)")
                if theirs is not None
                else paper.get("absent", "—"),
                f"{len(shared)} of {len(theirs_set)}"
                + ("" if len(theirs_set) == len(theirs or []) else f" probed ({len(theirs or [])} listed)")
                if theirs and ours is not None
                else "—",
                # against a partial list (a figure's labels) overlap and "here only" would mislead
                f"{len(shared) / len(union):.2f}" if compared and union else "—",
                _fmt(shared) if theirs and ours is not None else "—",
                _fmt(sorted(ours_set - theirs_set)) if compared else "—",
            ]
        )
        details.append(
            f"- **{block}** reproduced: {_fmt(ours, full=True) if ours is not None else 'not run'}"
        )
        if theirs is not None:
            details.append(f"  authors': {_fmt(theirs, full=True)}")
    lines += _table(
        ["block", "reproduced passing", "authors' list", "found", "Jaccard", "shared", "passing here only"],
        rows,
    )
    lines += ["", *details, ""]
    return lines


IMAGE_POINTS = 100 / EVAL_IMAGES  # one image of the 50,000 in percentage points: 0.002


def is_possible_accuracy(value: float, images: int = EVAL_IMAGES) -> bool:
    """Can a top-1 accuracy over ``images`` images take this value (a multiple of 100 / images points)?"""
    count = value * images / 100
    return abs(count - round(count)) < 1e-6


@dataclass(frozen=True)
class ExactCheck:
    """A reproduced accuracy beside the one the authors recorded: the difference in points and images
    (1 image = 0.002 points of 50,000); exact when under one image."""

    ours: float
    recorded: float

    @property
    def points(self) -> float:
        return self.ours - self.recorded

    @property
    def images(self) -> float:
        return self.points / IMAGE_POINTS

    @property
    def exact(self) -> bool:
        return abs(self.images) < 1 - 1e-9

    @property
    def recorded_possible(self) -> bool:
        return is_possible_accuracy(self.recorded)

    def verdict(self) -> str:
        text = "exact" if self.exact else f"not exact ({abs(self.images):.1f} images)"
        if not self.recorded_possible:
            text += f"; {self.recorded:g} is no multiple of 0.002: no accuracy over 50,000 images (a typo)"
        return text


@dataclass(frozen=True)
class ExactMiss:
    """A published set's exact check that failed: accuracies that differ of those checked, and the largest
    difference in images."""

    differ: int
    checked: int
    images: float


def _exact_section(
    block: str, series: AblationSeries, recorded: Mapping[str, float], comparable: str | None
) -> tuple[list[str], ExactMiss | None]:
    """The published set's accuracies beside the authors' recorded ones (deterministic: no FZ, no draw),
    and, where comparable and any differs, how they miss."""
    rows = []
    checks = []
    for i, percent in enumerate(series.scales):
        ours, theirs = series.passing_acc[i], recorded.get(str(percent))
        if theirs is None:
            continue
        check = ExactCheck(ours, theirs)
        checks.append(check)
        rows.append(
            [
                "No Scale" if percent == 0 else f"{percent} %",
                f"{ours:.3f}",
                f"{theirs:g}",
                f"{check.points:+.3f}",
                f"{check.images:+.1f}",
                check.verdict() if comparable is None else "not comparable (above)",
            ]
        )
    if not rows:
        return [], None
    exact = sum(c.exact for c in checks)
    miss = None
    if comparable is None and exact < len(checks):
        miss = ExactMiss(len(checks) - exact, len(checks), max(abs(c.images) for c in checks))
    summary = (
        f"{exact} of {len(checks)} match the authors' recorded values exactly (under one image)."
        if comparable is None
        else f"Not comparable: {comparable}; the numbers only exercise the pipeline."
    )
    return [
        "",
        "Exact check: with the real weights and the 50,000 ImageNet validation images these accuracies are",
        "deterministic (no FZ, no random draw), so they must equal the values recorded in the authors'",
        "scale_robust.py to the image (1 image = 0.002 points), given the same decoded pixels and arithmetic",
        "(the JPEG decoder and TF32 rows of the settings). " + summary,
        "",
        *_table(
            [
                "scale",
                "ours top-1 %",
                "authors' recorded %",
                "difference (points)",
                "difference (images)",
                "verdict",
            ],
            rows,
        ),
    ], miss


def _ablation_table(
    series: AblationSeries, recorded: Mapping[str, float], rule: Any, decimals: int
) -> tuple[list[str], int, int]:
    from rsi.transforms import CROP_RULES, ablation_crop

    line = series.no_scale_ratio
    rows = []
    below = scaled = 0
    for i, percent in enumerate(series.scales):
        crop = ablation_crop(percent, rule) if rule in CROP_RULES else None
        ratio = series.ratio[i]
        if percent == 0:
            verdict = "(the line)"
        elif not (math.isfinite(ratio) and math.isfinite(line)):
            verdict = "undefined"  # a random-set top-1 of 0 %: Eq. 3 has no value to compare
        else:
            scaled += 1
            below += int(ratio < line)
            verdict = "yes" if ratio < line else "**no**"
        rows.append(
            [
                "No Scale" if percent == 0 else f"{percent} %",
                _fmt(crop),
                _fmt(series.passing_acc[i], 3),
                _fmt(recorded.get(str(percent)), 3),
                _fmt(series.random_acc[i], 3),
                f"{_fmt(ratio, decimals)} ± {_fmt(series.sem[i], decimals)}",
                _fmt(ratio - line, decimals) if percent else "—",
                verdict,
            ]
        )
    header = [
        "scale",
        "crop px",
        "passing-ablated top-1 % (ours)",
        "published set, authors' code comments",
        "random-ablated top-1 % (mean)",
        "ratio ± SEM",
        "ratio − no-scale",
        "below the line?",
    ]
    if not recorded:  # no recorded values to show (any set but the published one)
        header.pop(3)
        rows = [row[:3] + row[4:] for row in rows]
    return _table(header, rows), below, scaled


def _ablation_section(
    ablation: dict[str, dict[str, AblationSeries]],
    paper: dict[str, Any],
    crop_rule: Any,
    decimals: int,
    skipped: Sequence[str] = (),
    comparable: str | None = None,
    pre_reading: str = "lucent_reference",
    why_skipped: Mapping[tuple[str, str], str] | None = None,
) -> tuple[list[str], AblationFindings]:
    """Per block and channel set: the sweep, the verdict on the paper's claim, and for the authors'
    published sets the exact check of the accuracies (``comparable``: why they cannot match, or None).
    Returns the lines and what the differences list names (with ``why_skipped``, the sets not ablated).
    ``pre_reading``: the reading of Pre this run's passing lists came from."""
    authors_acc: dict[str, dict[str, float]] = paper.get("ablation_passing_acc", {})
    if crop_rule != "authors_code" and comparable is None:
        comparable = f"crop rule {crop_rule}, the authors' recorded values used authors_code"
    lines = [
        "## Ablation under the scale sweep (section 4, Eq. 3, Fig. 2)",
        "",
        f"Paper's claim: {paper.get('ablation_claim', 'scale ratios below the no-scale ratio')}.",
        "Ratio = top-1 with the set's channels mean-ablated / top-1 with as many random other channels",
        "ablated (each set has its own screened random controls), averaged over the trials (± standard",
        "error). The random controls and the ratios can match the paper only statistically.",
        "",
    ]
    verdicts: dict[tuple[str, str], tuple[int, int]] = {}
    misses: dict[str, ExactMiss] = {}
    for block, sets in ablation.items():
        for name, series in sets.items():
            recorded = authors_acc.get(block, {}) if name == "published" else {}
            table, below, scaled = _ablation_table(series, recorded, crop_rule, decimals)
            verdicts[block, name] = (below, scaled)
            lines += [f"### Block {block}: {CHANNEL_SET_LABELS[name]}", "", *table]
            claim = (
                "holds" if scaled and below == scaled else "does not hold" if scaled else "cannot be judged"
            )
            lines += [
                "",
                f"Ablated: {_plural(series.n_passing, 'channel')} of {_fmt(series.n_channels)}; random sets "
                f"accepted by the screening: {_fmt(series.trials)} of {_fmt(series.attempts)} drawn.",
                "",
                f"Top-1 of the unablated model without scaling: {_fmt(series.baseline_acc[0], 3)} %.",
                "",
                f"No-scale ratio (the blue line): {_fmt(series.no_scale_ratio, decimals)}. {below} of {scaled} "
                f"scaled ratios lie below it: the paper's claim {claim} in this run.",
                "",
                f'Trial by trial (§4: "consistent across scale percentages and different random channel '
                f'samples"): in {series.trials_below} of {series.trials} trials every scaled ratio lies below '
                "that trial's own no-scale ratio.",
            ]
            if name == "run" and pre_reading != "lucent_reference":
                lines += [
                    "",
                    f"This run's channels pass the criteria under the `{pre_reading}` reading of Pre "
                    "(`fz.pre_reading`); the authors' lists came from theirs (`lucent_reference`), which "
                    "stage pre-reading counts but this stage does not ablate.",
                ]
            if name == "published":
                exact_lines, miss = _exact_section(block, series, recorded, comparable)
                lines += exact_lines
                if miss is not None:
                    misses[block] = miss
            lines.append("")
    if skipped:
        lines += [
            "Listed in metrics/ablation.json but not ablated (no accuracies): " + "; ".join(skipped) + ".",
            "",
        ]
    if not ablation:
        lines += ["metrics/ablation.json holds no ablated block.", ""]
    return lines, AblationFindings(verdicts, misses, dict(why_skipped or {}))


def pre_reading_sentence(reading: str, eq1_reading: str) -> str:
    """Which FZ each test reads, under this run's Pre reading and Eq. 1 reading."""
    eq1 = (
        "Eq. 1 reads X̂_In (Pre_c(X̂_In) and Pre_c(S(X̂_In))) and, as the authors' code divided by it, the sign "
        "of Pre_c(X̂_Pre_c)"
        if eq1_reading == "authors_code"
        else "Eq. 1 reads X̂_In only (Pre_c(X̂_In) and Pre_c(S(X̂_In))), so the Pre reading does not touch it"
    )
    return (
        f"Pre FZs use the `{reading}` reading: X̂_Pre is optimised for the true bn2 output, whereas the "
        "authors' X̂_Pre was optimised for Post under the name Pre (`lucent_reference`); X̂_In is the same "
        f"kind of image under both. {eq1} (`criteria.eq1_reading: {eq1_reading}`); Eq. 2 reads Post_c(X̂_In) "
        "and Post_c(X̂_Pre), so its denominator sees a different image than the authors'."
    )


# Keys of params.yaml with the value the paper (or the authors' code) used, and where it is said; a run that
# sets another says so in "What differs from the paper". (The sections above the list say the rest.)
PAPER_VALUES: tuple[tuple[str, Any, str], ...] = (
    ("criteria.eq2_low", 2 / 3, "Eq. 2"),
    ("criteria.eq2_high", 3 / 2, "Eq. 2"),
    ("criteria.strict", True, "Eq. 1 and Eq. 2 are strict inequalities"),
    ("fz.transforms", "authors_code", "the authors' center_lucent_optimize.py"),
    ("fz.storage", "uint8", "the authors saved FZs as 8-bit PNGs"),
    ("fz.image_size", FZ_IMAGE_SIZE, "§2.2"),
    ("activations.scale_fraction", 0.5, "§3: S(X) crops 112 of 224 px"),
    ("ablate.trials", ABLATION_TRIALS, "§4"),
    ("natural.k", 9, "Fig. 1: the top 9 images"),
)


def _value_differences(raw: Mapping[str, Any]) -> list[str]:
    """The keys of :data:`PAPER_VALUES`, and the ablation's screening rules, where this run differs."""
    parsed = {
        "criteria": load_section(raw, "criteria", CriteriaParams),
        "natural": load_section(raw, "natural", NaturalParams),
        "ablate": load_section(raw, "ablate", AblateParams),
    }
    items = []
    for key, paper_value, where in PAPER_VALUES:
        section, name = key.split(".", 1)
        value = getattr(parsed[section], name) if section in parsed else _param(raw, key)
        if value is None:  # not in params.yaml: the stage's default, the paper's
            continue
        numbers = isinstance(paper_value, float) and isinstance(value, int | float)
        # 0.6667 for 2/3 is the paper's bound as written to four places
        same = math.isclose(value, paper_value, rel_tol=1e-4) if numbers else value == paper_value
        if not same:
            items.append(
                f"`{key}` is {_fmt(value, 4)} here; the paper's is {_fmt(paper_value, 4)} ({where})."
            )
    max_channels = _param(raw, "fz.max_channels")
    if max_channels:
        items.append(
            f"Only the first {max_channels} channels of each block were probed (`fz.max_channels`); the "
            'paper probed all of them (§3: "all the channels").'
        )
    items += _scope_differences(parsed["criteria"], parsed["ablate"])
    authors = AblateParams().screening
    for block, rule in parsed["ablate"].screening.items():
        if block in parsed["ablate"].blocks and block in authors and rule != authors[block]:
            theirs = authors[block]
            items.append(
                f"`ablate.screening` for {block} accepts random sets by `{rule.rule}` (tolerance "
                f"{rule.tolerance:g}); the authors' was `{theirs.rule}` ({theirs.tolerance:g}; §4)."
            )
    return items


def _scope_differences(criteria: CriteriaParams, ablate: AblateParams) -> list[str]:
    """What this run left out of the paper's §3 and §4, or added to them: blocks probed and ablated, the
    mirror test, the scale sweep, and the published lists' exact check."""
    items = []
    probed = sorted({parse_block(b) for b in criteria.blocks}, key=block_order)
    if probed != sorted(PROBED_BLOCKS, key=block_order):
        items.append(
            f"This run probed {', '.join(probed)} (`criteria.blocks`); §3 probed {', '.join(PROBED_BLOCKS)}, "
            "and a block not probed has no count here."
        )
    if criteria.mirror_criterion:
        items.append(
            "`criteria.mirror_criterion` is on: a channel must also pass the authors' unreported mirror "
            "test, so the counts are not the paper's Eq. 1 and Eq. 2 counts."
        )
    paper_sweep = AblateParams()
    ablated = {parse_block(b) for b in ablate.blocks}
    missing = [parse_block(b) for b in paper_sweep.blocks if parse_block(b) not in ablated]
    if missing:
        items.append(
            f"{' and '.join(missing)} not ablated (`ablate.blocks`); §4 and Fig. 2 ablate 2.1 and 3.1."
        )
    if sorted(ablate.percents) != sorted(paper_sweep.percents):
        items.append(
            f"`ablate.percents` is {list(ablate.percents)} here; Fig. 2 sweeps {list(paper_sweep.percents)} %."
        )
    if "published" not in ablate.channel_sets:
        items.append(
            "`ablate.channel_sets` leaves out `published`: the one check that must match the paper to the "
            "image (the authors' published 2.1 and 3.1 lists mean-ablated) was not run."
        )
    return items


def _jitter_differences(fz_settings: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The rendered taps whose jitter (in each block's fz settings.json) is not the authors'."""
    items = []
    for block, content in fz_settings.items():
        for kind, tap in content["taps"].items():
            if block in AUTHORS_JITTER and tap.get("jitter", AUTHORS_JITTER[block]) != AUTHORS_JITTER[block]:
                items.append(
                    f"The {block}/{kind} FZs were rendered with jitter {tap['jitter']}; the authors' "
                    f"batch_process.sh used {AUTHORS_JITTER[block]}."
                )
    return items


def _setting_differences(labels: RunLabels, settings: dict[str, Any]) -> list[str]:
    """What differs from the paper's run before any result: network, weights, data, FZ and crop settings."""
    items = []
    if labels.arch != DEFAULT_ARCH:
        items.append(
            f"The network is {labels.network} (`model.arch: {labels.arch}`), not the paper's ResNet18: the "
            "paper has no numbers for it, so nothing here confirms or refutes the paper."
        )
    if labels.random_weights:
        items.append(
            f"The model has random weights (`{labels.weights}`), not IMAGENET1K_V1: nothing here can "
            "confirm or refute the paper."
        )
    if labels.generated_data:
        items.append("The evaluation images were generated, not ImageNet validation images.")
    n_images = settings.get("n_images")
    if _subset(n_images):
        items.append(
            f"Only {n_images:,} evaluation images were used (the paper: {EVAL_IMAGES:,}); accuracies "
            "and top natural images come from this smaller set."
        )
    steps = settings.get("steps")
    if isinstance(steps, int) and steps != FZ_STEPS:
        items.append(f"FZs were optimised for {steps} steps, not the authors' {FZ_STEPS}.")
    reading = settings.get("pre_reading")
    if reading is not None and reading != "lucent_reference":
        items.append(pre_reading_sentence(reading, settings.get("eq1_reading", "authors_code")))
    if settings.get("crop_rule") == "paper_text":
        items.append(
            "The ablation used the paper text's crop rule (231…128 px); Fig. 2 came from the authors' "
            "code rule (201…112 px)."
        )
    on_cpu = [what for what, device in settings.get("devices", {}).items() if not device.startswith("cuda")]
    if on_cpu:
        items.append(
            f"{' and '.join(on_cpu)} ran on the CPU; the authors ran on a CUDA GPU, and CPU and GPU floats "
            "differ, so a result can match theirs only statistically even where the computation is theirs."
        )
    if not labels.generated_data:
        items.append(
            f"The JPEGs were decoded by {settings['decoder']}; the authors' environment decoded them with "
            f"{AUTHORS_DECODER}, whose chroma upsampling differs from libjpeg-turbo's, so pixels can differ "
            "and the exact check can miss by some images (how many is unmeasured) even where everything "
            "else matches."
        )
    return items


def _count_differences(
    arch: str,
    criteria: dict[str, dict[str, Any]],
    reference: dict[str, dict[str, Any]] | None,
    paper_counts: Mapping[str, int],
    pre_reading: Any = "exact",
) -> list[str]:
    """Blocks whose passing count differs from the paper's, or between the two readings of Pre. The count
    compared with the paper's is the authors' reading of Pre (DESIGN: the comparable one): stage
    pre-reading's, or this run's when its own reading is theirs."""
    items = []
    for block in sorted(criteria, key=block_order):
        if block not in paper_counts:
            continue
        count = criteria[block].get("passing")
        comparable = (reference or {}).get(block)
        entry = comparable or criteria[block]
        total, width = entry.get("channels"), num_channels(block, arch)
        scope = "" if total == width else f" (only {total} of {width} channels probed)"
        if comparable:
            if comparable.get("passing") != paper_counts[block]:
                items.append(
                    f"Block {block}: {_plural(comparable.get('passing'), 'channel')} "
                    f"{'passes' if comparable.get('passing') == 1 else 'pass'} under the authors' "
                    f"reading of Pre (the count comparable with the paper's), {paper_counts[block]} in the "
                    f"paper{scope}."
                )
        elif count != paper_counts[block]:
            reading = (
                ""
                if pre_reading == "lucent_reference"
                else " with this run's exact Pre FZs (the paper's counts come from the authors' reading of "
                "Pre, which `criteria.compare_pre_readings: true` also renders)"
            )
            items.append(
                f"Block {block}: {_plural(count, 'passing channel')} here{reading}, {paper_counts[block]} in "
                f"the paper{scope}."
            )
        other = reference[block].get("passing") if reference is not None and block in reference else count
        if other != count:
            items.append(
                f"Block {block}: {other} pass with the `lucent_reference` Pre FZs against {count} with "
                "the exact Pre FZs."
            )
    return items


@dataclass(frozen=True)
class AblationFindings:
    """What §4 found that the differences list names: the verdicts per (block, set) (scaled ratios below
    the no-scale one, scaled ratios), the failed exact checks by block, and the sets not ablated, why."""

    verdicts: dict[tuple[str, str], tuple[int, int]]
    misses: dict[str, ExactMiss]
    skipped: dict[tuple[str, str], str]


def _ablation_differences(
    criteria: dict[str, dict[str, Any]], authors_sets: Mapping[str, Sequence[int]], found: AblationFindings
) -> list[str]:
    """Ablations whose scaled ratios break the paper's claim, published sets whose accuracies miss the
    authors' recorded ones, sets not ablated, and ablated sets of another size."""
    items = []
    for block, miss in found.misses.items():
        items.append(
            f"Block {block} (the authors' published channels): {miss.differ} of {miss.checked} accuracies differ "
            f"from the authors' recorded values, by up to {miss.images:.0f} images (the exact check, §4)."
        )
    for (block, name), why in found.skipped.items():
        items.append(
            f"Block {block} ({CHANNEL_SET_LABELS.get(name, name)}) was not ablated: {why.rstrip('.')}."
        )
    verdicts = found.verdicts
    for (block, name), (below, scaled) in verdicts.items():
        if scaled and below < scaled:
            items.append(
                f"Block {block} ({CHANNEL_SET_LABELS.get(name, name)}): {scaled - below} of {scaled} scaled "
                "ablation ratios are not below the no-scale ratio; the paper claims all are."
            )
        ours_count = criteria.get(block, {}).get("passing")
        if name != "run" or (block, "published") in verdicts:
            continue
        if block in authors_sets and ours_count is not None and ours_count != len(authors_sets[block]):
            items.append(
                f"Block {block}: the ablation removes this run's {_plural(ours_count, 'passing channel')}; "
                f"the authors ablated their {len(authors_sets[block])}."
            )
    return items


def _differences(
    raw: Mapping[str, Any],
    fz_settings: Mapping[str, Mapping[str, Any]],
    labels: RunLabels,
    settings: dict[str, Any],
    criteria: dict[str, dict[str, Any]],
    reference: dict[str, dict[str, Any]] | None,
    paper: dict[str, Any],
    ablation: AblationFindings,
) -> list[str]:
    """Everything that differs from the paper, in plain words."""
    items = _setting_differences(labels, settings) + _value_differences(raw)
    if labels.arch == DEFAULT_ARCH:
        items += _jitter_differences(fz_settings)
    items += _count_differences(
        labels.arch, criteria, reference, paper.get("passing", {}), settings.get("pre_reading", "exact")
    )
    items += _ablation_differences(criteria, paper.get("ablation_channels_authors_code", {}), ablation)
    items.append(
        "Feature visualisation is stochastic; the paper itself notes that results may vary. The authors "
        "set no seeds; this run is seeded, so it is repeatable but not the authors' draw."
    )
    return ["## What differs from the paper, in plain words", "", *[f"- {item}" for item in items], ""]


def _figures_section(root: Path) -> list[str]:
    directory = root / "figures"
    if not directory.is_dir():
        return []
    files = sorted(p.name for p in directory.glob("*.png"))
    if not files:
        return []
    lines = ["## Figures", ""]
    mapping = {
        "fig2_ablation.png": "Fig. 2 (ablation ratio bars)",
    }
    for name in files:
        if name in mapping:
            what = mapping[name]
        elif name.startswith("fig1_"):
            what = "Fig. 1-style grid of one channel (rows: center FZ, whole-channel FZ, top-9 natural)"
        elif name.startswith("grids_"):
            what = "contact sheet of a block's passing channels (Fig. 3 / Fig. 4)"
        else:
            what = ""
        lines.append(f"- [{name}](figures/{name}) {what}".rstrip())
    return [*lines, ""]


def _not_comparable(labels: RunLabels, weights_label: str, n_images: int | None) -> str | None:
    """Why the published sets' accuracies cannot equal the authors' recorded ones, or None."""
    reasons = [
        text
        for flag, text in (
            (labels.random_weights, "random weights"),
            (
                not labels.random_weights and weights_label != PAPER_LABEL,
                f"{weights_label}, not IMAGENET1K_V1",
            ),
            (labels.generated_data, "generated images"),
            (n_images is not None and n_images != EVAL_IMAGES, f"{n_images} images, not {EVAL_IMAGES:,}"),
        )
        if flag
    ]
    return ", ".join(reasons) or None


def _reference_run(
    root: Path, reference: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]] | None, dict[str, list[int]] | None]:
    """The criteria counts (``reference``, the blocks of its metrics) and the passing lists under ``root``
    of stage pre-reading (the authors' reading of Pre), or None where it did not run (it writes {} when
    criteria.compare_pre_readings is off)."""
    if not reference:
        return None, None
    passing_path = artifacts.passing_file(artifacts.reference_root(root))
    return reference, read_passing(passing_path, "pre-reading").blocks


@dataclass(frozen=True)
class Report:
    """What `rsi report` writes: the Markdown, and §3's top-image reading it shows (the metrics file)."""

    text: str
    top_images: dict[str, TopImageOverlap]


def build_report(
    raw: Mapping[str, Any],
    params: ReportParams,
    root: Path = artifacts.OUTPUTS,
    metrics: Path = artifacts.METRICS,
) -> Report:
    """The report (reads the stage outputs under ``root`` and ``metrics``)."""
    criteria_metrics = read_criteria_metrics(metrics / "criteria.json")
    criteria = criteria_metrics.blocks
    passing = read_passing(artifacts.passing_file(root)).blocks
    ablation_metrics = read_ablation_metrics(metrics / "ablation.json")
    ablation = ablation_metrics.series()  # {"2.1": {"run": AblationSeries, …}}, blocks in pipeline order
    reference_metrics = read_criteria_metrics(metrics / REFERENCE_METRICS.name, "pre-reading")
    reference, reference_passing = _reference_run(root, reference_metrics.blocks)
    eval_cache = read_eval(artifacts.eval_dir(root))
    index = eval_cache.index
    # the classes of the images used (index["classes"] is the class map, which can name more, or none)
    n_images, n_classes = len(index["files"]), len(np.unique(eval_cache.labels))
    labels = run_labels(raw, index)
    weights_label = describe_weights(labels.weights, labels.arch)
    paper = paper_for(labels.arch)
    lines = [
        f"# Scale invariance in the residual stream of {labels.network}: reproduced vs paper",
        "",
        *_banner(labels, n_images),
        "Paper: Longon, *Naturally Computed Scale Invariance in the Residual Stream of ResNet18*",
        f"(arXiv:2504.16290). Paper numbers from: {paper.get('source')}. Weights: {weights_label}.",
        "",
    ]
    fz_settings = read_fz_settings(root)
    ablation_run = read_ablation_run(trials_file(root)) if trials_file(root).is_file() else None
    settings_lines, settings = _settings_section(
        raw,
        labels,
        weights_label,
        index,
        (n_images, n_classes),
        fz_settings,
        _devices(fz_settings, ablation_run),
    )
    settings["eq1_reading"] = eq1_reading = _param(raw, "criteria.eq1_reading", CriteriaParams)
    pre_reading = settings.get("pre_reading") or "exact"
    lines += _criteria_section(
        criteria, reference, paper, passing, reference_passing, pre_reading, arch=labels.arch
    )
    lines += _eq1_section(criteria, reference, eq1_reading)
    lines += _rerun_section(criteria, reference, _param(raw, "criteria.rerun_fz", CriteriaParams))
    probed = {block: entry.get("channels") for block, entry in criteria.items()}
    lines += _channels_section(passing, paper, probed, labels.arch)
    found_top_images = top_images(passing, root)
    lines += _top_images_section(found_top_images)
    why_skipped = ablation_run.skipped if ablation_run is not None else {}
    skipped = [
        f"{block} ({CHANNEL_SET_LABELS.get(name, name)}: {why_skipped.get((block, name), 'no reason recorded')})"
        for block, name in ablation_metrics.listed()  # every set listed, ablated or skipped
        if name not in ablation.get(block, {})
    ]
    lines += _stability_section(criteria_metrics.stability, reference_metrics.stability)
    lines += _natural_criteria_section(metrics / "criteria_natural.json", root)
    comparable = _not_comparable(labels, weights_label, n_images)
    ablation_lines, found = _ablation_section(
        ablation,
        paper,
        settings.get("crop_rule"),
        params.decimals,
        skipped,
        comparable,
        pre_reading,
        why_skipped,
    )
    lines += ablation_lines
    lines += _differences(raw, fz_settings, labels, settings, criteria, reference, paper, found)
    lines += settings_lines + _params_details(raw, fz_settings, root)
    lines += _figures_section(root)
    return Report("\n".join(lines).rstrip() + "\n", found_top_images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="where to write (default: <outputs>/report.md)")


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "report", ReportParams, source=str(args.params))
    root = Path(args.outputs)
    report = build_report(raw, params, root)
    out = Path(args.out) if args.out else root / "report.md"
    with atomic_path(out) as temporary:
        temporary.write_text(report.text)
    write_top_images(report.top_images)  # §3's top-image reading, for dvc metrics diff
    print(f"wrote {out} and {TOP_IMAGES_METRICS}")


__all__ = [
    "PRINTED_PARAMS",
    "AblationSeries",
    "Report",
    "ReportParams",
    "build_report",
]
