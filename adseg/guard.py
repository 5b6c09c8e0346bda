"""One guard for every command that writes: no input is ever touched, and no file adseg did
not write is ever deleted or overwritten.

- :func:`check_output` runs before any work: it refuses an output folder that is, contains or
  lies inside an input, a path that is a file, and a folder holding files adseg did not write
  unless the user says ``--overwrite`` (and even then, a command that replaces its whole
  folder refuses it). :func:`check_file` does the same for a command that writes one file.
- :func:`claim` creates the folder and marks it as adseg's (:data:`MARKER`), so a rerun knows
  the folder is adseg's to write into; the marker lists what was there before adseg first
  wrote (a folder written into with ``--overwrite``), and a replacing command refuses a folder
  that still holds any of it. :func:`writing` checks and claims around a command's work.

Folders written before the marker existed are recognised by adseg's own files in them
(:data:`SIGNATURES`, and the ``dataset.json`` of adseg's cohorts).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from adseg import __version__
from adseg.errors import AdsegError

MARKER = ".adseg"
# what adseg writes into its folders: a folder holding one of these is adseg's
SIGNATURES = (
    MARKER,
    "model.json",
    "plans.json",
    "checkpoint_last.pt",
    "training_log.tsv",
    "predictions.csv",
    "translations.csv",
)
# dataset.json names of the cohorts adseg writes (synth-cohort, preprocess)
COHORT_NAMES = ("adseg-synthetic-prostate", "adseg-preprocessed")

PathLike = str | os.PathLike


class OutputError(AdsegError, ValueError, heading="refused"):
    """An output that would touch an input or files adseg did not write."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _adseg_cohort(folder: Path) -> bool:
    """``folder`` holds a ``dataset.json`` that adseg wrote (written before the marker)."""
    try:
        with open(folder / "dataset.json") as f:
            return json.load(f).get("name") in COHORT_NAMES
    except (OSError, ValueError, AttributeError):
        return False


def owned(folder: PathLike) -> bool:
    """``folder`` was created by adseg (its marker, or a file only adseg writes, is there)."""
    folder = Path(folder)
    return any((folder / name).exists() for name in SIGNATURES) or _adseg_cohort(folder)


def holds_files(folder: PathLike) -> bool:
    """``folder`` holds a file (or a link) at any depth; empty sub-folders hold nothing."""
    for root, dirs, files in os.walk(folder):
        if files or any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return True
    return False


def _entries_with_files(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name != MARKER and (p.is_symlink() or not p.is_dir() or holds_files(p))
    )


def foreign(folder: PathLike) -> list[str]:
    """Names in ``folder`` that adseg did not write: everything in a folder holding files that
    is not adseg's, else what its marker lists as there before adseg wrote (and still is)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if not owned(folder):
        return _entries_with_files(folder)
    try:
        listed = json.loads((folder / MARKER).read_text()).get("foreign", [])
    except (OSError, ValueError, AttributeError):
        listed = []  # a legacy folder (no marker), or a marker being written
    return sorted(n for n in listed if isinstance(n, str) and os.path.lexists(folder / n))


def within(paths: Iterable[PathLike], folder: PathLike) -> bool:
    """Every one of ``paths`` (at least one) lies inside ``folder``: e.g. the metrics files a
    summary is written beside, which make ``folder`` the study folder adseg wrote them into."""
    paths = [Path(p).expanduser().resolve() for p in paths]
    target = Path(folder).expanduser().resolve()
    return bool(paths) and all(_inside(p, target) and p != target for p in paths)


def only_names(folder: PathLike, patterns: Iterable[str]) -> bool:
    """Every entry of ``folder`` is a file whose name matches one of ``patterns`` (globs): a
    folder holding only what one command writes (``adseg gan sample``'s samples)."""
    folder, patterns = Path(folder), tuple(patterns)
    return all(
        p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)
        for p in folder.iterdir()
    )


def _check_inputs(out: PathLike, target: Path, inputs: Iterable[PathLike | None], what: str):
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if not (_inside(target, source) or _inside(source, target)):
            continue
        kind = "folder" if source.is_dir() else "file"
        if target == source:
            relation = "is"
        elif _inside(target, source):
            relation = "lies inside"
        else:
            relation = "contains"
        raise OutputError(
            f"{out}: the output {what} {relation} the input {kind} {given}; write somewhere "
            "else (adseg never writes over or into its inputs)"
        )


def check_output(
    out: PathLike,
    inputs: Iterable[PathLike | None],
    overwrite: bool = False,
    replaces: bool = False,
) -> Path:
    """Refuse an output folder that would lose data; return it resolved.

    Args:
        out: the output folder.
        inputs: every file and folder the command reads (None entries are skipped).
        overwrite: the user's ``--overwrite``: write into a folder holding files adseg did
            not write (never deleting them).
        replaces: the command replaces the whole folder (synth-cohort, preprocess, qc): a
            folder holding files adseg did not write is refused even with ``overwrite``.

    Raises:
        OutputError: naming the folder, the input and what to do instead.
    """
    target = Path(out).expanduser().resolve()
    _check_inputs(out, target, inputs, "folder")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if not target.is_dir() or not holds_files(target):
        return target
    if not owned(target):
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
    elif replaces and (kept := foreign(target)):
        raise OutputError(
            f"{out}: holds files adseg did not write ({', '.join(kept[:5])}"
            f"{', ...' if len(kept) > 5 else ''}); this command replaces its whole output "
            "folder, so choose a new or empty one"
        )
    return target


def check_file(out: PathLike, inputs: Iterable[PathLike | None]) -> Path:
    """Refuse an output file that is an input or lies inside an input folder, and a path that
    is a folder; return it resolved.

    Raises:
        OutputError: naming the file and the input.
    """
    target = Path(out).expanduser().resolve()
    _check_inputs(out, target, inputs, "file")
    if target.is_dir():
        raise OutputError(f"{out}: a folder; give the path of the file to write")
    return target


def claim(out: PathLike, command: str, before: Iterable[str] | None = None) -> Path:
    """Create ``out`` (and parents) and mark it as adseg's output of ``command``.

    Args:
        before: the names that were in ``out`` before ``command`` wrote there and that are
            not adseg's (default: :func:`foreign` now); the marker keeps them, so a command
            that replaces its whole folder never deletes them.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if marker.exists():
        return folder
    kept = foreign(folder) if before is None else sorted(before)
    info = {"command": command, "adseg_version": __version__, "foreign": kept}
    # created exclusively, not renamed into place: a job that checks the folder meanwhile
    # (parallel jobs share a study folder) sees the marker, never a stray temporary file
    with contextlib.suppress(FileExistsError), open(marker, "x") as f:
        f.write(json.dumps(info) + "\n")
    return folder


@contextlib.contextmanager
def writing(
    out: PathLike,
    command: str,
    inputs: Iterable[PathLike | None],
    overwrite: bool = False,
) -> Iterator[Path]:
    """:func:`check_output`, then :func:`claim` ``out``: at once when it exists, else once the
    command has created it (also when the command then fails or is stopped, so a rerun may
    resume there). A command that fails before creating ``out`` leaves no folder behind.

    Yields:
        ``out``, resolved.
    """
    target = check_output(out, inputs, overwrite)
    before = foreign(target)
    if target.is_dir():
        claim(target, command, before)
    try:
        yield target
    finally:
        if target.is_dir():
            claim(target, command, before)
