"""The scans given to ``adseg predict`` and ``adseg gan translate``, and their summary CSV.

Both commands take a folder of ``<case>_<channel:04d>.nii.gz`` files (nnU-Net naming) or the
files of one case, check every file before any work (:class:`PredictError` names the file and
the problem), and keep one summary row per case in a CSV that a rerun extends.

A case gets exactly the model's channels, matched by file name and position only (never by
content): in a folder ``<case>_0000`` is the model's first channel (``channel_names[0]`` of
its ``model.json``), ``_0001`` its second, and so on, or one 4-D ``<case>_0000`` holds them
all as volumes in that order; listed files are the channels in the order given. A folder's
extra channel files, two files for one channel, and a per-case list that is not the
channels in order are refused, each error naming the model's channel order
(:func:`channel_order`).
:func:`check_images` then reads every file as validation does (empty, damaged or truncated
files, NaN/inf voxels; :func:`adseg.data.checks.read_nifti`), refuses an empty or constant
channel, and places each channel against the reference channel in world space
(:func:`adseg.data.checks.check_placement`: too little overlap is refused, a shift above a
voxel is a warning).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from adseg.data.checks import check_placement, read_nifti
from adseg.data.problems import ChannelSource, Problems
from adseg.errors import AdsegError
from adseg.geometry import Grid
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


def channel_order(channel_names: list[str]) -> str:
    """The model's channels as its files are numbered: ``0000 = T2w, 0001 = ADC``."""
    return ", ".join(f"{k:04d} = {name}" for k, name in enumerate(channel_names))


def expected_channels(channel_names: list[str]) -> str:
    """What every channel error ends with: the model's channels, in order."""
    return (
        f"the model takes {len(channel_names)} channel(s), in this order: "
        f"{channel_order(channel_names)}"
    )


def check_exists(inputs: list[Path], model: Path | None = None) -> None:
    """Refuse a model folder or an input that does not exist, naming it, before any other
    check (a wrong path would otherwise be reported as a folder without a model, or a file
    name that is not NIfTI).

    Raises:
        PredictError: ``<model>: no such model folder``, ``<input>: no such file or folder``.
    """
    if model is not None and not Path(model).exists():
        raise PredictError(f"{model}: no such model folder")
    for path in inputs:
        if not Path(path).exists():
            raise PredictError(f"{path}: no such file or folder")


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


def _case_from_files(case_id: str, files: list[Path], channel_names: list[str]) -> InputCase:
    n_channels = len(channel_names)
    if len(files) == 1 and n_channels > 1:
        found = count_volumes(files[0])
        if found != n_channels:
            raise PredictError(
                f"{files[0]}: {found} volume(s); one file must hold every channel as a volume, "
                f"and {expected_channels(channel_names)}"
            )
        return InputCase(case_id, [ChannelSource(files[0], k) for k in range(n_channels)])
    if len(files) != n_channels:
        raise PredictError(
            f"case {case_id!r}: {len(files)} channel file(s) "
            f"({', '.join(str(f) for f in files)}); {expected_channels(channel_names)}"
        )
    for path in files:
        if count_volumes(path) != 1:
            raise PredictError(
                f"{path}: 4-D; give one 3-D file per channel, or one 4-D file holding every "
                f"channel; {expected_channels(channel_names)}"
            )
    return InputCase(case_id, [ChannelSource(p, None) for p in files])


def channel_files(
    folder: Path, channel_names: list[str] | None = None
) -> dict[str, dict[int, Path]]:
    """A folder's NIfTI files in nnU-Net naming, by case and channel index.

    Args:
        channel_names: the model's channels, named in the error for a misnamed file.

    Raises:
        PredictError: a file not named ``<case>_<channel:04d>.nii.gz``, two files of one
            case's channel (``.nii`` and ``.nii.gz``), or no files.
    """
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        match = CHANNEL_FILE.match(nifti_stem(path))
        if not match:
            order = f"; {expected_channels(channel_names)}" if channel_names else ""
            raise PredictError(f"{path}: name is not <case>_<channel:04d>.nii.gz{order}")
        by_channel = groups.setdefault(match["case"], {})
        k = int(match["channel"])
        if k in by_channel:
            raise PredictError(
                f"{path}: a second file for channel {k:04d} of case {match['case']!r} "
                f"(also {by_channel[k]}); keep one"
            )
        by_channel[k] = path
    if not groups:
        raise PredictError(f"{folder}: no NIfTI files")
    return groups


def _check_listed(files: list[Path], channel_names: list[str]) -> None:
    """The files of one case, listed: no file twice; in nnU-Net naming, one case's channels
    in order."""
    seen: dict[Path, Path] = {}
    for path in files:
        key = path.resolve()
        if key in seen:
            raise PredictError(f"{path}: given twice (also as {seen[key]}); give each channel once")
        seen[key] = path
    named = [CHANNEL_FILE.match(strip_nifti_suffix(p.name) or "") for p in files]
    if len(files) < 2 or not all(named):
        return
    cases = {m["case"] for m in named}
    indices = [int(m["channel"]) for m in named]
    if len(cases) > 1:
        raise PredictError(
            f"{', '.join(map(str, files))}: files of different cases ({', '.join(sorted(cases))}); "
            "give the files of one case, or a folder"
        )
    if indices != list(range(len(files))):
        raise PredictError(
            f"{', '.join(map(str, files))}: named for channels "
            f"{', '.join(f'{k:04d}' for k in indices)}; {expected_channels(channel_names)}"
        )


def collect_inputs(inputs: list[Path], channel_names: list[str]) -> list[InputCase]:
    """Cases from a folder in nnU-Net naming, or from the channel files of one case in order.

    Raises:
        PredictError: a path that does not exist, a missing, extra or duplicate channel, a
            file that is not NIfTI or not readable; a channel error names the model's order.
    """
    check_exists(inputs)
    n = len(channel_names)
    if len(inputs) == 1 and inputs[0].is_dir():
        groups = channel_files(inputs[0], channel_names)
        extra = sorted(str(p) for g in groups.values() for k, p in g.items() if k >= n)
        if extra:
            raise PredictError(
                f"{', '.join(extra)}: channel file(s) the model does not take; "
                f"{expected_channels(channel_names)}"
            )
        cases = []
        for case_id, by_channel in groups.items():
            if set(by_channel) == {0} and n > 1 and count_volumes(by_channel[0]) > 1:
                cases.append(_case_from_files(case_id, [by_channel[0]], channel_names))
                continue
            absent = [k for k in range(n) if k not in by_channel]
            if absent:
                raise PredictError(
                    f"case {case_id!r} lacks channel "
                    f"{', '.join(f'{k:04d} ({channel_names[k]})' for k in absent)}: no "
                    f"{', '.join(f'{case_id}_{k:04d}.nii.gz' for k in absent)} in {inputs[0]}; "
                    f"{expected_channels(channel_names)}"
                )
            files = [by_channel[k] for k in range(n)]
            cases.append(_case_from_files(case_id, files, channel_names))
        return cases
    files = list(inputs)
    match = CHANNEL_FILE.match(stem := nifti_stem(files[0]))
    case = _case_from_files(match["case"] if match else stem, files, channel_names)
    _check_listed(files, channel_names)
    return [case]


def check_images(case: InputCase, channel_names: list[str], reference: int) -> list[str]:
    """Read a case's files as validation does and check that a model can segment them.

    Args:
        reference: the channel the others are placed against (the plan's reference channel).

    Returns:
        Warnings (``<file>: <message>``), e.g. a channel shifted by more than a voxel.

    Raises:
        PredictError: every error found (an empty, damaged or truncated file, NaN/inf voxels,
            an empty or constant channel, a channel that hardly overlaps the reference),
            each naming its file.
    """
    problems = Problems()
    volumes: list[sitk.Image | None] = []
    images: dict[Path, sitk.Image | None] = {}
    for source in case.channels:
        if source.path not in images:
            images[source.path] = read_nifti(source.path, problems)
        image = images[source.path]
        if image is not None and image.GetDimension() == 4:
            image = image[:, :, :, source.index or 0]
        volumes.append(image)
    for source, name, volume in zip(case.channels, channel_names, volumes, strict=True):
        if volume is None:
            continue
        lo, hi = _min_max(volume)
        if lo == hi:
            what = "empty (all voxels 0)" if lo == 0 else f"constant (all voxels {lo:g})"
            problems.error(source.path, f"{name}: image is {what}; there is nothing to segment")
    ref = volumes[reference]
    if ref is not None:
        for c, (source, volume) in enumerate(zip(case.channels, volumes, strict=True)):
            if c != reference and volume is not None and source.index is None:
                where = (Grid.of(volume), Grid.of(ref), source.path, channel_names[c])
                check_placement(*where, channel_names[reference], problems)
    errors = [f"{p.path}: {p.message}" for p in problems if p.level == "error"]
    if errors:
        raise PredictError("\n  ".join(errors))
    return [f"{p.path}: {p.message}" for p in problems if p.level != "error"]


def _min_max(volume: sitk.Image) -> tuple[float, float]:
    f = sitk.MinimumMaximumImageFilter()
    f.Execute(volume)
    return f.GetMinimum(), f.GetMaximum()


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
