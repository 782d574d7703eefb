"""`rsi <stage>`: one subcommand per DVC stage. Each stage module provides ``add_arguments(parser)``
and ``run(args) -> None``; it is imported only when called, so `rsi --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rsi import launch
from rsi.config import ParamsError
from rsi.model import WeightsError

# subcommand → (module, one-line help). The order is the pipeline's.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-weights": ("rsi.weights_cli", "download and check resnet18-f37072fd.pth into data/"),
    "prepare-data": ("rsi.data", "decode the evaluation images once into a 256 px uint8 cache"),
    "fz": ("rsi.fz", "center-neuron feature visualizations for one block's taps"),
    "activations": ("rsi.activations", "center-neuron responses of In/Pre/Post to the FZs"),
    "stability": ("rsi.stability", "FZs and activations of one extra FZ seed (criteria stability)"),
    "criteria": ("rsi.criteria", "Eq. 1 and Eq. 2 per channel; metrics/criteria.json"),
    "pre-reading": ("rsi.pre_reading", "criteria counts with Pre FZs rendered as lucent read bn2 (optional)"),
    "natural": ("rsi.natural", "natural-image pass: per-channel means and top-k images"),
    "ablate": ("rsi.ablate", "mean ablation under the scale sweep; metrics/ablation.json"),
    "figures": ("rsi.figures", "the paper's Fig. 1-4 as PNG"),
    "report": ("rsi.report", "outputs/report.md: reproduced numbers beside the paper's"),
}


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
            importlib.import_module(module_name).add_arguments(stage_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        relaunched = launch.maybe_relaunch(args.command, args.params, argv)  # every GPU: rsi.launch
        if relaunched is not None:
            return relaunched
        module.run(args)
    except (ParamsError, WeightsError, FileNotFoundError, ValueError) as error:
        # Bad input (params, weights, files, data): one line naming what to fix. RSI_DEBUG=1 re-raises.
        if os.environ.get("RSI_DEBUG"):
            raise
        print(f"rsi {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
