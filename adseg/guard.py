"""One guard for every command that writes a folder: no input is ever touched, and no file
adseg did not write is ever deleted or overwritten.

- :func:`check_output` runs before any work: it refuses an output that is, contains or lies
  inside an input, a path that is a file, and a non-empty folder adseg did not create unless
  the user says ``--overwrite`` (and even then, a command that replaces its whole folder
  refuses one that holds files of someone else's).
- :func:`claim` creates the folder and marks it as adseg's (:data:`MARKER`), so a rerun knows
  the folder and what is in it are adseg's to replace.

Folders written before the marker existed are recognised by adseg's own files in them
(:data:`SIGNATURES`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from adseg import __version__
from adseg.errors import AdsegError

MARKER = ".adseg"
# what adseg writes into its folders: a folder holding one of these is adseg's
SIGNATURES = (MARKER, "model.json", "plans.json", "checkpoint_last.pt", "predictions.csv")


class OutputError(AdsegError, ValueError, heading="refused"):
    """An output that would touch an input or files adseg did not write."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def owned(folder: Path) -> bool:
    """``folder`` was created by adseg (its marker, or a file only adseg writes, is there)."""
    return any((folder / name).exists() for name in SIGNATURES)


def check_output(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    overwrite: bool = False,
    replaces: bool = False,
) -> Path:
    """Refuse an output folder that would lose data; return it resolved.

    Args:
        out: the output folder.
        inputs: every file and folder the command reads.
        overwrite: the user's ``--overwrite``: write into a non-empty folder adseg did not
            create (never deleting what is there).
        replaces: the command replaces the whole folder (synth-cohort, preprocess): a
            foreign non-empty folder is refused even with ``overwrite``.

    Raises:
        OutputError: naming the folder, the input and what to do instead.
    """
    target = Path(out).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if _inside(target, source) or _inside(source, target):
            relation = (
                "is"
                if target == source
                else ("lies inside" if _inside(target, source) else "contains")
            )
            raise OutputError(
                f"{out}: the output {relation} the input {given}; write somewhere else "
                "(adseg never writes over or beside its inputs)"
            )
    if target.exists() and not target.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not owned(target):
        if replaces:
            raise OutputError(
                f"{out}: a folder that adseg did not create and that holds files; this command "
                "replaces its whole output folder, so choose a new or empty one"
            )
        if not overwrite:
            raise OutputError(
                f"{out}: a folder that adseg did not create and that holds files; choose a new "
                "or empty one, or pass --overwrite to write into it (files adseg did not write "
                "are left alone)"
            )
    return target


def claim(out: str | os.PathLike, command: str) -> Path:
    """Create ``out`` (and parents) and mark it as adseg's output of ``command``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"command": command, "adseg_version": __version__}) + "\n")
    return folder
