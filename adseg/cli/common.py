"""What every ``adseg`` command shares: its common options, its config, SIGTERM handling,
and what the output guard (:mod:`adseg.guard`) needs to know of a command's inputs.

The stage modules (:mod:`adseg.cli.data`, :mod:`adseg.cli.training`, ...) register their
commands with :func:`add_command` and read their config with :func:`load_config_for_command`;
this module imports nothing of theirs, nor of :mod:`adseg.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path

from adseg.errors import AdsegError

SET_HELP = 'config settings as JSON, e.g. \'{"folds": {"n": 5}}\''


class UserError(AdsegError):
    """An error in what the user gave a command; printed without a traceback."""


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_: str,
    func: Callable[[argparse.Namespace], None],
    example: str,
    config: bool = True,
    set_help: str = SET_HELP,
) -> argparse.ArgumentParser:
    """Add command ``name``, run by ``func(args)``, with the options every command has.

    Every command takes ``-v/--verbose`` and ``--no-progress``; with ``config``, also
    ``--config`` and ``--set`` (help text ``set_help``). Its help ends with ``example``.
    """
    p = subparsers.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=f"Example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug-level log messages")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=func)
    if config:
        p.add_argument(
            "--config",
            type=Path,
            help="your config YAML, laid over the embedded default config/config.yaml",
        )
        p.add_argument("--set", metavar="JSON", help=set_help)
    return p


def add_resume_option(p: argparse.ArgumentParser) -> None:
    """``--resume no|yes|auto`` of the commands that train through the engine."""
    p.add_argument(
        "--resume",
        choices=["no", "yes", "auto"],
        default="no",
        help="continue from OUT/checkpoint_last.pt (auto: when it matches; default: no)",
    )


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` of the commands that write into a folder."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into OUT even when it holds files adseg did not write (they are left alone)",
    )


def read_inputs(args: argparse.Namespace, *paths: Path | None) -> list[Path]:
    """What a command reads, for the output guard: ``paths`` and its ``--config`` file."""
    given = [*paths, getattr(args, "config", None)]
    return [Path(p) for p in given if p is not None]


def cohort_of(preprocessed: Path) -> list[Path]:
    """The cohort a preprocessed folder was made from (its ``dataset.json`` names it), as an
    input to guard; none when that cannot be read (the command itself then says why)."""
    try:
        source = json.loads((Path(preprocessed) / "dataset.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return []
    return [Path(source)] if isinstance(source, str) and source else []


def model_files(model: Path) -> list[Path]:
    """The files of a model folder an evaluation reads and must never write over: every file
    but a TSV (an earlier evaluation's, which a rerun replaces), and its training log."""
    if not model.is_dir():
        return [model]
    files = [p for p in model.iterdir() if p.is_file() and p.suffix != ".tsv"]
    return [*files, model / "training_log.tsv"]


def check_study(
    out: Path, command: str, results: list[Path], writes: tuple[str, ...], args
) -> contextlib.AbstractContextManager[Path]:
    """Guard a summary's folder (:func:`adseg.guard.writing`): the study folder that holds
    the ``results`` it tabulates is adseg's; any other folder holding files needs
    ``--overwrite``; none of the files it ``writes`` may be one of the ``results``."""
    from adseg.guard import check_file, within, writing

    for name in writes:
        check_file(out / name, results)
    overwrite = args.overwrite or within(results, out)
    return writing(out, command, read_inputs(args), overwrite)


def load_config_for_command(
    path: Path | None, overrides: dict | None = None, settings: str | None = None
) -> dict:
    """Resolve a config from a YAML file, then JSON ``--set`` settings, then flag overrides.

    Raises:
        UserError: ``--set`` is not a JSON object, or the config does not fit the schema.
    """
    from adseg.config import ConfigError, deep_merge, load_config

    try:
        merged = json.loads(settings) if settings else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--set: not valid JSON ({err})") from None
    if not isinstance(merged, dict):
        raise UserError(
            '--set: expected a JSON object of config sections, e.g. \'{"folds": {"n": 5}}\''
        )
    try:
        return load_config(path, deep_merge(merged, overrides or {}))
    except ConfigError as err:
        raise UserError(str(err)) from None


def exit_on_sigterm() -> None:
    """End the process on SIGTERM as on Ctrl-C, with exit status 128 + 15.

    A scheduler's SIGTERM (a job's time limit) then ends training cleanly: the last
    checkpoint stays for ``--resume``, and the MLflow run is marked KILLED.
    """
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)
