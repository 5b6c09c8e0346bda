"""The scans given to ``adseg predict`` and ``adseg gan translate``, and their summary CSV.

Both commands take a folder of ``<case>_<channel:04d>.nii.gz`` files (nnU-Net naming) or the
files of one case, check every file before any work (:class:`PredictError` names the file and
the problem), and keep one summary row per case in a CSV that a rerun extends.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from adseg.data.problems import ChannelSource
from adseg.errors import AdsegError
from adseg.io import strip_nifti_suffix, write_text

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class PredictError(AdsegError, ValueError):
    """Bad input to ``adseg predict``; the message names the file and the problem."""


@dataclass
class InputCase:
    """One scan to segment: its id and its channels in the model's channel order."""

    case_id: str
    channels: list[ChannelSource]

    @property
    def reference_file(self) -> Path:
        return self.channels[0].path


def nifti_stem(path: Path) -> str:
    """``path``'s file name without its ``.nii``/``.nii.gz`` suffix.

    Raises:
        PredictError: not a NIfTI file name.
    """
    stem = strip_nifti_suffix(path.name)
    if stem is None:
        raise PredictError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
    return stem


def count_volumes(path: Path) -> int:
    """Number of volumes in a NIfTI file (1 for 3-D), reading only its header.

    Raises:
        PredictError: no such file, an unreadable one, or one neither 3-D nor 4-D.
    """
    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    try:
        shape = nib.load(str(path)).shape
    except Exception as err:  # nibabel raises several types for unreadable files
        raise PredictError(f"{path}: cannot read as NIfTI ({err})") from None
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return shape[3]
    raise PredictError(f"{path}: a {len(shape)}-D image; expected 3-D, or 4-D with channels")


def _case_from_files(case_id: str, files: list[Path], n_channels: int) -> InputCase:
    if len(files) == 1 and n_channels > 1:
        found = count_volumes(files[0])
        if found != n_channels:
            raise PredictError(
                f"{files[0]}: {found} volume(s); the model needs {n_channels} channels"
            )
        return InputCase(case_id, [ChannelSource(files[0], k) for k in range(n_channels)])
    if len(files) != n_channels:
        raise PredictError(
            f"case {case_id!r}: {len(files)} channel file(s); the model needs {n_channels}"
        )
    for path in files:
        if count_volumes(path) != 1:
            raise PredictError(f"{path}: 4-D; give one 3-D file per channel or one 4-D file")
    return InputCase(case_id, [ChannelSource(p, None) for p in files])


def channel_files(folder: Path) -> dict[str, dict[int, Path]]:
    """A folder's NIfTI files in nnU-Net naming, by case and channel index.

    Raises:
        PredictError: a file not named ``<case>_<channel:04d>.nii.gz``, or no files.
    """
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        match = CHANNEL_FILE.match(nifti_stem(path))
        if not match:
            raise PredictError(f"{path}: name is not <case>_<channel:04d>.nii.gz")
        groups.setdefault(match["case"], {})[int(match["channel"])] = path
    if not groups:
        raise PredictError(f"{folder}: no NIfTI files")
    return groups


def collect_inputs(inputs: list[Path], channel_names: list[str]) -> list[InputCase]:
    """Cases from a folder in nnU-Net naming, or from the channel files of one case in order.

    Raises:
        PredictError: a missing channel, a file that is not NIfTI or not readable.
    """
    n = len(channel_names)
    if len(inputs) == 1 and inputs[0].is_dir():
        groups = channel_files(inputs[0])
        cases = []
        for case_id, by_channel in groups.items():
            if set(by_channel) == {0}:
                cases.append(_case_from_files(case_id, [by_channel[0]], n))
                continue
            missing = [f"{k:04d} ({channel_names[k]})" for k in range(n) if k not in by_channel]
            if missing:
                raise PredictError(f"case {case_id!r} lacks channel {', '.join(missing)}")
            cases.append(_case_from_files(case_id, [by_channel[k] for k in range(n)], n))
        return cases
    stem = nifti_stem(inputs[0])
    match = CHANNEL_FILE.match(stem)
    return [_case_from_files(match["case"] if match else stem, list(inputs), n)]


def check_voxels(case: InputCase) -> None:
    """Reject NaN/inf voxels (SimpleITK would read them as 0), naming the file."""
    for path in sorted({c.path for c in case.channels}):
        data = np.asanyarray(nib.load(str(path)).dataobj)
        bad = int(np.count_nonzero(~np.isfinite(data))) if data.dtype.kind == "f" else 0
        if bad:
            raise PredictError(f"{path}: {bad} NaN/inf voxels")


def read_summary(path: Path) -> dict[str, dict]:
    """The rows of a per-case summary CSV by case id; none if there is no file yet."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def write_summary(path: Path, rows: dict[str, dict]) -> None:
    """Write per-case rows (by case id) as a CSV sorted by case id, atomically.

    The columns are every row's keys in order of first appearance; a row lacking one leaves
    it empty.
    """
    columns: list[str] = []
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for case_id in sorted(rows):
        writer.writerow(rows[case_id])
    write_text(path, buffer.getvalue())
