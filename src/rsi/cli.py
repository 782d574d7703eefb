"""`rsi <stage>`: one subcommand per DVC stage. Each stage module provides ``add_arguments(parser)``
and ``run(args) -> None``; it is imported only when called, and this module imports no torch at import time,
so `rsi --help` stays fast.

Before a stage computes anything, the WHOLE params file is validated (every section in ``SECTIONS``, and
no unknown top-level key): a bad value in any section costs seconds, not the hours of the stages before
the one that reads it. Validation computes no result, so a stage still declares only its own params keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

from rsi import launch
from rsi.config import DVC_STAGE, ParamsError, check_sections, load_section, read_params

# subcommand → (module, one-line help). The order is the pipeline's.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-weights": ("rsi.weights_cli", "download and check model.arch's torchvision weights into data/"),
    "data-listing": ("rsi.data_listing", "digest of the images and labels prepare-data would decode"),
    "prepare-data": ("rsi.data", "decode the evaluation images once into a 256 px uint8 cache"),
    "fz": ("rsi.fz", "center-neuron feature visualizations for one block's taps"),
    "activations": ("rsi.activations", "center-neuron responses of In/Pre/Post to the FZs"),
    "stability": ("rsi.stability", "FZs and activations of one extra FZ seed (criteria stability)"),
    "rerun-fz": ("rsi.rerun", "re-render channels whose Post responses are both <= 0, as the authors did"),
    "criteria": ("rsi.criteria", "Eq. 1 and Eq. 2 per channel; metrics/criteria.json"),
    "pre-reading": ("rsi.pre_reading", "criteria counts with Pre FZs rendered as lucent read bn2 (optional)"),
    "natural": ("rsi.natural", "natural-image pass: per-channel means and top-k images"),
    "natural-criteria": ("rsi.natural_criteria", "Eq. 1 and 2 on top-k natural images (ours, optional)"),
    "ablate": ("rsi.ablate", "mean ablation under the scale sweep; metrics/ablation.json"),
    "whole-channel": (
        "rsi.whole_channel",
        "whole-channel FZs of the channels the figures show (Fig. 1 row 2)",
    ),
    "figures": ("rsi.figures", "the paper's Fig. 1-4 as PNG, drawn from the stage outputs"),
    "report": ("rsi.report", "outputs/report.md: reproduced numbers beside the paper's"),
}


# top-level key of the params file → "module:attr", the section's dataclass (validated with load_section)
# or a function (raw, source=) for a scalar key. Every known top-level key is listed here and only here.
SECTIONS: dict[str, str] = {
    "seed": "rsi.config:load_seed",
    "model": "rsi.runtime:ModelParams",
    "fz": "rsi.fz:FZParams",
    "activations": "rsi.activations:ActivationsParams",
    "criteria": "rsi.criteria:CriteriaParams",
    "data": "rsi.data:DataParams",
    "natural": "rsi.natural_params:NaturalParams",
    "ablate": "rsi.ablate_params:AblateParams",
    "figures": "rsi.channel_plan:FiguresParams",
    "report": "rsi.report:ReportParams",
    "launch": "rsi.launch:LaunchParams",
}
# stages that read no params file (they run where none exists, e.g. while the image is built)
WITHOUT_PARAMS = {"fetch-weights"}


def validate_params(path: str, *, across: bool = True) -> None:
    """Every section of the params file at ``path`` parsed and checked, then (``across``) the sections
    against each other (rsi.params_check), or the first ParamsError."""
    from rsi.params_check import check_across

    raw = read_params(path)
    check_sections(raw, SECTIONS, source=path)
    loaded = {}
    for name, target in SECTIONS.items():
        module_name, attr = target.split(":")
        loader = getattr(importlib.import_module(module_name), attr)
        if dataclasses.is_dataclass(loader):
            loaded[name] = load_section(raw, name, loader, source=path)
        else:
            loaded[name] = loader(raw, source=path)
    if across:
        check_across(loaded, source=path)


def _names_a_key_not_the_file(error: Exception, path: str) -> bool:
    """An error about a params key that starts with the key (``fz.blocks has no key …``, ``data.root = …``)
    rather than the file's name."""
    message = str(error)
    first_key = message.split(".")[0].split(" ")[0]
    return first_key in SECTIONS and not message.startswith(f"{path}:")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its own options."""
    parser = argparse.ArgumentParser(
        prog="rsi", description="Scale invariance in the residual stream of ResNet18, reproduced."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, (module_name, help_text) in COMMANDS.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        stage_parser.add_argument(
            "--params", default="params.yaml", help="params file (default: params.yaml)"
        )
        if name == command:
            from rsi.artifacts import OUTPUTS

            module = importlib.import_module(module_name)
            if name not in WITHOUT_PARAMS:
                # one flag for the outputs root of every stage (metrics/ and plots/ stay in the working dir)
                what = getattr(module, "OUTPUTS_HELP", "outputs root (default: outputs)")
                stage_parser.add_argument("--outputs", default=str(OUTPUTS), help=what)
            module.add_arguments(stage_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    from rsi import distributed
    from rsi.model import WeightsError  # after parsing: `rsi --help` imports no torch

    try:
        if args.command not in WITHOUT_PARAMS:
            # the sections against each other only where the whole pipeline runs (DVC sets DVC_STAGE for
            # every stage command): a stage run by hand needs only its own sections to be consistent
            validate_params(args.params, across=DVC_STAGE in os.environ)
        relaunched = launch.maybe_relaunch(args.command, args.params, argv)  # every GPU: rsi.launch
        if relaunched is not None:
            return relaunched
        importlib.import_module(COMMANDS[args.command][0]).run(args)
        distributed.finish()
    except (ParamsError, WeightsError, FileNotFoundError, ValueError) as error:
        # Bad input (params, weights, files, data): one line naming what to fix. RSI_DEBUG=1 re-raises.
        distributed.finish()  # leave the group (no warning at exit); bad input fails before any collective
        if os.environ.get("RSI_DEBUG"):
            raise
        message = str(error)
        if _names_a_key_not_the_file(error, args.params):
            message = f"{args.params}: {message}"  # a stage's own check names the key, not the file
        print(f"rsi {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Finished work is in atomically written files (FZ chunks, caches): a rerun resumes from them.
        print(f"rsi {args.command}: interrupted; finished chunks are kept, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
