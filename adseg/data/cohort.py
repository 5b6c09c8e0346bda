"""Discover a cohort on disk: nnU-Net v2 raw folders and Medical Segmentation Decathlon tasks.

Discovery works from ``dataset.json`` and file names only (plus the header of a lone ``_0000``
file of a multi-channel nnU-Net case, which may hold every channel as a 4-D image). Reading and
checking voxels is :mod:`adseg.data.validation`'s job. Every structural problem is collected
as a :class:`~adseg.data.problems.Problem`, so a user sees all of them at once instead of fixing
one per run.

Where each layout keeps its files is :mod:`adseg.data.layouts` (which also refuses dataset.json
paths that lead outside the dataset folder and checks ``numTraining``); this module reads
dataset.json and turns what it finds into :class:`Case` objects.

A case with a missing channel file is reported and left out of :attr:`Cohort.cases`; a case
without a label is kept (``label=None``) so its images are still checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from adseg.data.layouts import Found, find_msd, find_nnunet
from adseg.data.problems import ChannelSource, Problem, Problems
from adseg.errors import AdsegError
from adseg.io import read_json

LAYOUTS = ("auto", "nnunet", "msd")
REQUIRED_KEYS = {"nnunet": ("channel_names", "labels"), "msd": ("modality", "labels", "training")}


@dataclass(frozen=True)
class Case:
    """One scan (visit) of one patient: its channel files, in channel order, and its label."""

    case_id: str
    patient_id: str
    domain: str
    channels: tuple[ChannelSource, ...]
    label: Path | None


@dataclass
class Cohort:
    """A cohort folder as discovered.

    Attributes:
        root: the folder holding dataset.json.
        layout: "nnunet" or "msd" (the requested layout when dataset.json is unusable).
        channel_names: channel names in channel order.
        labels: label name -> value, background 0 included, sorted by value.
        cases: complete cases, sorted by case id.
        layout_reason: why this layout was read, in words (for the validation report).
    """

    root: Path
    layout: str
    channel_names: list[str]
    labels: dict[str, int]
    cases: list[Case]
    layout_reason: str = ""


class CohortError(AdsegError):
    """A cohort has errors; ``problems`` holds them and ``str()`` lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(list(problems))
        self.problems = list(problems)

    def __str__(self) -> str:
        errors = [p for p in self.problems if p.level == "error"] or self.problems
        return f"{len(errors)} problem(s) in the cohort:\n" + "\n".join(map(str, errors))


def discover_cohort(
    root: str | Path, layout: str = "auto", patient_regex: str | None = None
) -> tuple[Cohort, list[Problem]]:
    """Find the cases of a cohort folder and every structural problem in it.

    Args:
        root: folder with dataset.json (nnU-Net v2 raw dataset or MSD task).
        layout: "nnunet", "msd", or "auto" to pick it from dataset.json's keys.
        patient_regex: regular expression whose first group (``re.search`` on the case id)
            gives the patient id of cases that dataset.json's ``cases`` does not give one for.

    Returns:
        The cohort (complete cases only) and the problems found, errors and warnings.

    Raises:
        ValueError: unknown layout, or a patient_regex that does not compile or has no group.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} unknown; choose from {', '.join(LAYOUTS)}")
    pattern = _patient_pattern(patient_regex)
    root = Path(root)
    json_path = root / "dataset.json"
    problems = Problems()
    dataset = _read_dataset(root, problems)
    chosen, reason = _detect_layout(json_path, dataset, layout, problems) if dataset else (None, "")
    if chosen is None:
        return Cohort(root, layout, [], {}, [], reason), problems
    names = _channel_names(json_path, dataset, REQUIRED_KEYS[chosen][0], problems)
    labels = _labels(json_path, dataset["labels"], chosen == "msd", problems)
    if names is None:
        return Cohort(root, chosen, [], labels, [], reason), problems
    declared = dataset.get("numTraining")  # checked against the cases found, as nnU-Net does
    if chosen == "nnunet":
        ending = dataset.get("file_ending", ".nii.gz")
        found = find_nnunet(root, ending, names, problems, declared)
    else:
        found = find_msd(root, dataset["training"], len(names), problems, declared)
    cases = _make_cases(json_path, dataset.get("cases", {}), found, pattern, problems)
    return Cohort(root, chosen, names, labels, cases, reason), problems


def read_channel(source: ChannelSource) -> sitk.Image:
    """Read one channel as a 3-D float32 image, keeping its geometry.

    Of a 4-D file only the channel's volume is read into memory (ITK's extract-on-read).

    Raises:
        ValueError: the file does not hold that channel (naming the file).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source.path))
    if source.index is None:
        # one file per channel: read it straight away. ITK's header read of a .nii.gz costs
        # a third of the whole read (7 of 26 ms a case in `adseg predict`, bench/RESULTS.md)
        image = reader.Execute()
        size = image.GetSize()
        if image.GetDimension() == 4 and size[3] == 1:
            image = image[:, :, :, 0]
        elif image.GetDimension() != 3:
            raise ValueError(
                f"{source.path}: image of size {size} is not one 3-D channel (a 4-D file "
                "holds its channels along the 4th axis: name it with an index)"
            )
        return sitk.Cast(image, sitk.sitkFloat32)
    reader.ReadImageInformation()
    size, k = reader.GetSize(), source.index
    if reader.GetDimension() != 4 or k >= size[3]:
        raise ValueError(f"{source.path}: image of size {size} has no channel {source.index}")
    reader.SetExtractIndex([0, 0, 0, k])
    reader.SetExtractSize([*size[:3], 0])
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def read_channels(sources: Sequence[ChannelSource]) -> list[sitk.Image]:
    """:func:`read_channel` of each source, in order, read side by side in threads.

    SimpleITK lets go of the GIL while it reads, and decompressing a .nii.gz is one thread's
    work: on 2 cores a case's three channels read in about 0.6 of the time one by one
    (bench/RESULTS.md). The first file that fails raises, as :func:`read_channel` does.
    """
    if len(sources) < 2:
        return [read_channel(s) for s in sources]
    with ThreadPoolExecutor(min(len(sources), os.cpu_count() or 1)) as pool:
        return list(pool.map(read_channel, sources))


def read_label(path: str | Path) -> sitk.Image:
    """Read a label map as a 3-D UInt8 image.

    Raises:
        ValueError: not 3-D, or values that are not integers in 0..255 (naming the file).
    """
    image = sitk.ReadImage(str(path))
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: label is not a 3-D scalar image")
    arr = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{path}: label values are not integers")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{path}: label values outside 0..255 ({arr.min()}..{arr.max()})")
    return sitk.Cast(image, sitk.sitkUInt8)


def _patient_pattern(patient_regex: str | None) -> re.Pattern | None:
    if patient_regex is None:
        return None
    try:
        pattern = re.compile(patient_regex)
    except re.error as err:
        raise ValueError(f"patient_regex {patient_regex!r} is not a valid regex ({err})") from err
    if pattern.groups < 1:
        raise ValueError(f"patient_regex {patient_regex!r} needs a group, e.g. '^(.+)_visit'")
    return pattern


def _read_dataset(root: Path, problems: Problems) -> dict | None:
    path = root / "dataset.json"
    if not root.is_dir():
        problems.error(root, "cohort folder does not exist")
    elif not path.is_file():
        problems.error(path, "missing (every cohort needs a dataset.json)")
    else:
        try:
            dataset = read_json(path)
        except (ValueError, UnicodeDecodeError) as err:
            problems.error(path, f"not valid JSON ({err.__cause__ or err})")
            return None
        if isinstance(dataset, dict) and dataset:
            return dataset
        problems.error(path, "expected a non-empty JSON object")
    return None


def _detect_layout(
    path: Path, dataset: dict, layout: str, problems: Problems
) -> tuple[str | None, str]:
    """The layout to read and why; under ``auto`` a warning when the other one fits too."""
    fits = [name for name, keys in REQUIRED_KEYS.items() if all(k in dataset for k in keys)]
    names = {"nnunet": "nnU-Net v2", "msd": "Medical Segmentation Decathlon"}
    if layout == "auto":
        if "training" in dataset and "modality" in dataset:
            layout, reason = "msd", "auto: dataset.json has 'training' and 'modality' (MSD)"
        elif "channel_names" in dataset:
            layout, reason = "nnunet", "auto: dataset.json has 'channel_names' (nnU-Net v2)"
        else:
            msd = " and ".join(f"'{k}'" for k in ("training", "modality") if k not in dataset)
            problems.error(
                path,
                f"cannot tell the layout: missing 'channel_names' (nnU-Net v2) or {msd} "
                "(Medical Segmentation Decathlon)",
            )
            return None, "auto: neither layout's keys"
        other = next((f for f in fits if f != layout), None)
        if other is not None:
            problems.warning(
                path,
                f"has the keys of both layouts; read as {names[layout]} ({reason}). If its "
                f"files are named as {names[other]} names them, set dataset.source: {other}",
            )
    else:
        reason = f"{names[layout]}, as requested (dataset.source: {layout})"
        other = next((f for f in fits if f != layout), None)
        if other is not None:
            reason += f"; dataset.json would also fit {names[other]}"
    missing = [k for k in REQUIRED_KEYS[layout] if k not in dataset]
    if missing:
        problems.error(path, f"missing key(s) for the {layout} layout: {', '.join(missing)}")
        return None, reason
    return layout, reason


def _channel_names(path: Path, dataset: dict, key: str, problems: Problems) -> list[str] | None:
    names = dataset[key]
    if not isinstance(names, dict) or not names or set(names) != set(map(str, range(len(names)))):
        problems.error(path, f"'{key}' must map '0'..'C-1' to names, e.g. {{\"0\": \"T2w\"}}")
        return None
    return [str(names[str(i)]) for i in range(len(names))]


def _labels(path: Path, raw, value_to_name: bool, problems: Problems) -> dict[str, int]:
    """Label name -> value from nnU-Net's ``{name: value}`` or MSD's ``{"value": name}``."""
    if not isinstance(raw, dict):
        problems.error(path, "'labels' must be a JSON object")
        return {}
    pairs = [(str(v), k) for k, v in raw.items()] if value_to_name else list(raw.items())
    labels: dict[str, int] = {}
    for name, value in pairs:
        if value_to_name and value.isdigit():
            value = int(value)
        if isinstance(value, list):
            problems.error(
                path,
                f"label {name!r} is a region {value}; nnU-Net regions are not supported, "
                "give one integer value per label",
            )
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.error(path, f"label {name!r}: {value!r} is not a non-negative integer")
        elif name in labels or value in labels.values():
            problems.error(path, f"label {name!r} = {value}: name or value given twice")
        else:
            labels[name] = value
    if labels and 0 not in labels.values():
        problems.error(path, "labels must include background with value 0")
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def _make_cases(
    json_path: Path, meta, found: Found, pattern: re.Pattern | None, problems: Problems
) -> list[Case]:
    """Cases with patient ids and domains (from dataset.json ``cases``, else the regex)."""
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        problems.error(json_path, "'cases' must map case ids to objects")
        meta = {}
    cases = []
    for case_id, channels, label in found:
        info = meta.get(case_id, {})
        patient = info.get("patient_id")
        if patient is None and pattern is not None:
            match = pattern.search(case_id)
            patient = match.group(1) if match else None
            if patient is None:
                problems.error(
                    channels[0].path,
                    f"case id {case_id!r} does not match patient_regex '{pattern.pattern}'",
                )
        patient = case_id if patient is None else str(patient)
        cases.append(Case(case_id, patient, str(info.get("domain", "unknown")), channels, label))
    for case_id in sorted(set(meta) - {c.case_id for c in cases}):
        problems.warning(json_path, f"'cases' lists {case_id!r}, which has no complete images")
    return sorted(cases, key=lambda c: c.case_id)
