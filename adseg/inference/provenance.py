"""What each prediction came from, so a rerun never passes off an old mask as a new one.

Every row of ``predictions.csv`` records two fingerprints (the first 16 hex digits of a
SHA-256):

- ``model_sha256``: the files of every fold used (``model.json``, ``plans.json``, the
  checkpoints read) and the choices that change a mask (``--tta``);
- ``input_sha256``: the bytes of the case's channel files, in the model's channel order.

A rerun into the same folder skips a case whose mask is there and whose row has the same two
fingerprints, redoes one whose mask (or asked-for probabilities) is missing or that has no
row (a run killed between its mask and its row), and refuses one recorded from another model
or other files unless ``--overwrite``.

A killed run can leave the hidden temporary files of :func:`adseg.io.atomic_path`;
:func:`remove_stale_temps` removes those (and only those) from an output folder adseg owns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from adseg.inference.inputs import InputCase, PredictError, expected_channels
from adseg.log import logger

SHORT = 16  # hex digits of a SHA-256 kept in predictions.csv
PROVENANCE = ("model_sha256", "input_sha256", "input_files")
WRITE_TEST = ".adseg-write-test"
# atomic_path's temporary names: "." + the destination's name up to its first dot + "." +
# mkstemp's 8 random characters + the destination's suffixes; predict writes .nii.gz masks and
# probabilities, predictions.csv, and the suffix-less write test ("..<8>")
TEMP_NAME = re.compile(r"^\.[^./]*\.[a-z0-9_]{8}(?P<suffixes>(?:\.[^./]+)*)$")
TEMP_SUFFIXES = (".nii.gz", ".nii", ".csv")


def file_sha256(path: Path, cache: dict[Path, str] | None = None) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks; memoised in ``cache``."""
    if cache is not None and path in cache:
        return cache[path]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if cache is not None:
        cache[path] = digest.hexdigest()
    return digest.hexdigest()


def _short(parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:SHORT]


def model_fingerprint(files: Iterable[Path], tta: bool) -> str:
    """The fingerprint of the model files used (in order) and of the mask-changing choices."""
    return _short({"files": [[p.name, file_sha256(p)] for p in files], "tta": bool(tta)})


def input_fingerprint(case: InputCase, cache: dict[Path, str] | None = None) -> str:
    """The fingerprint of a case's channel files' bytes (and volume index), in channel order."""
    return _short([[file_sha256(c.path, cache), c.index] for c in case.channels])


def input_files(case: InputCase) -> str:
    """The case's channel files as recorded in predictions.csv (one per file, in order)."""
    return "; ".join(dict.fromkeys(str(c.path) for c in case.channels))


def check_distinct_channels(case: InputCase, names: list[str], cache: dict[Path, str]) -> None:
    """Refuse two channels given by different files of the same bytes (a copied channel)."""
    seen: dict[str, tuple[Path, str]] = {}
    for source, name in zip(case.channels, names, strict=True):
        if source.index is not None:
            continue
        digest = file_sha256(source.path, cache)
        if digest in seen and seen[digest][0] != source.path:
            first, first_name = seen[digest]
            raise PredictError(
                f"{source.path}: the same bytes as {first}; {name} and {first_name} are one "
                f"image given twice; {expected_channels(names)}"
            )
        seen.setdefault(digest, (source.path, name))


def plan_cases(
    cases: list[InputCase],
    fingerprints: dict[str, dict[str, str]],
    rows: dict[str, dict],
    out: Path,
    overwrite: bool,
    probabilities: bool,
    model: Path,
) -> list[InputCase]:
    """The cases to (re)do; refuse those recorded from another model or other files.

    Args:
        fingerprints: per case id, its new ``model_sha256``, ``input_sha256`` and ``input_files``.
        rows: predictions.csv's rows by case id.
        probabilities: probability maps were asked for: a case without one is not done.

    Raises:
        PredictError: naming every such case, its recorded and its new files.
    """
    todo, conflicts = [], []
    for case in cases:
        new, row = fingerprints[case.case_id], rows.get(case.case_id)
        done = (out / f"{case.case_id}.nii.gz").is_file() and (
            not probabilities or (out / f"{case.case_id}_probabilities.nii.gz").is_file()
        )
        if overwrite or not done or row is None:
            todo.append(case)
            continue
        what = [
            label
            for key, label in (("model_sha256", "another model"), ("input_sha256", "other files"))
            if row.get(key) != new[key]
        ]
        if not what:
            continue
        recorded = row.get("input_files") or "(not recorded)"
        if not row.get("model_sha256"):
            reason = "recorded by an adseg that kept no fingerprints"
        else:
            reason = f"made from {' and '.join(what)}"
        conflicts.append(
            f"case {case.case_id!r} in {out}: {reason} (recorded: model "
            f"{row.get('model_sha256') or '?'}, input {row.get('input_sha256') or '?'}, files "
            f"{recorded}; now: model {new['model_sha256']} from {model}, input "
            f"{new['input_sha256']}, files {new['input_files']})"
        )
    if conflicts:
        raise PredictError(
            "\n  ".join(
                [
                    f"{len(conflicts)} case(s) already predicted differently; pass --overwrite "
                    "to redo them, or choose another output folder",
                    *conflicts,
                ]
            )
        )
    return todo


def check_not_foreign(out: Path, todo: list[InputCase], ours: bool) -> None:
    """In a folder adseg did not create (written into with ``--overwrite``), refuse to replace
    a file of a case's name: it is someone else's.

    Raises:
        PredictError: naming the files.
    """
    if ours or not out.is_dir():
        return
    names = [n for c in todo for n in (f"{c.case_id}.nii.gz", f"{c.case_id}_probabilities.nii.gz")]
    clash = [str(out / n) for n in names if os.path.lexists(out / n)]
    if clash:
        raise PredictError(
            f"{', '.join(clash)}: in a folder adseg did not create; adseg never replaces files "
            "it did not write. Move them away, or choose another output folder"
        )


def is_stale_temp(name: str) -> bool:
    """``name`` is a temporary file adseg's atomic writers (or the write test) leave."""
    if name == WRITE_TEST:
        return True
    match = TEMP_NAME.match(name)
    if not match:
        return False
    suffixes = match["suffixes"]
    return (suffixes == "" and name.startswith("..")) or suffixes.endswith(TEMP_SUFFIXES)


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary files a killed run left in ``out`` (a folder adseg owns)."""
    removed = []
    for path in sorted(out.iterdir()):
        if path.is_file() and not path.is_symlink() and is_stale_temp(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info(
            "removed %d temporary file(s) an interrupted run left in %s: %s",
            len(removed),
            out,
            ", ".join(p.name for p in removed),
        )
    return removed
