"""The ``adseg`` command line: one subcommand per pipeline stage.

Each subcommand is what a Snakemake rule calls, and what a user calls by hand. The stage
modules define the commands (:mod:`adseg.cli.data`, :mod:`~adseg.cli.training`,
:mod:`~adseg.cli.evaluation`, :mod:`~adseg.cli.inference`, :mod:`~adseg.cli.tracking`,
:mod:`~adseg.cli.gan`), each in its ``COMMANDS``; this module builds the parser from them,
dispatches, and turns errors in the user's input (config, data, splits, models: an
:class:`~adseg.errors.AdsegError`) into a message and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from adseg import __version__
from adseg.cli import data, evaluation, gan, inference, tracking, training
from adseg.errors import AdsegError
from adseg.log import setup_logging

# the commands in the order of ``adseg --help``: the order of the pipeline
ORDER = (
    "synth-cohort",
    "validate",
    "preprocess",
    "splits",
    "qc",
    "train",
    "evaluate",
    "summarize",
    "learning-curve",
    "adda",
    "adda-summary",
    "predict",
    "mlflow-sync",
    "config",
    "gan",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``adseg`` parser with every stage's commands."""
    parser = argparse.ArgumentParser(
        prog="adseg",
        description="Adversarial segmentation of multi-parametric MRI.",
        epilog="Example: "
        + data.EXAMPLES["synth-cohort"]
        + "\nRun 'adseg COMMAND --help' for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"adseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for stage in (data, training, evaluation, inference, tracking, gan):
        commands.update(stage.COMMANDS)
    for name in sorted(commands, key=ORDER.index):
        commands[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adseg`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        args.func(args)
    except (AdsegError, ValueError, FileNotFoundError) as err:
        # AdsegError: an error the user can fix. The library also raises plain ValueError and
        # FileNotFoundError for bad input (splits, plans, missing files); their messages name
        # the file, so they end the same way
        heading = err.heading if isinstance(err, AdsegError) else "error"
        print(f"adseg {args.command}: {heading}: {err}", file=sys.stderr)
        return 1
    return 0
