"""Where each cohort layout keeps its files: nnU-Net v2 raw folders and MSD tasks.

:func:`find_nnunet` and :func:`find_msd` turn a layout's folders (and, for MSD, the ``training``
list of dataset.json) into ``(case id, channels, label)`` triples of the complete cases. Every
file that does not fit is reported as a :class:`Problem` instead of raising, so that
:func:`adseg.data.cohort.discover_cohort` can list all of them at once. The types they produce
are :mod:`adseg.data.problems`'s.
"""

from __future__ import annotations

import re
from pathlib import Path

import SimpleITK as sitk

from adseg.data.problems import ChannelSource, Problems
from adseg.io import strip_nifti_suffix

NOT_NIFTI = "not a NIfTI file (.nii or .nii.gz)"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def nifti_header_volumes(path: Path) -> int | None:
    """Size of the 4th axis of a NIfTI file from its header (1 if 3-D); None if unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetSize()[3] if reader.GetDimension() == 4 else 1


def _nifti_files(folder: Path, problems: Problems) -> list[tuple[str, Path]]:
    """(name without suffix, path) of the NIfTI files in ``folder``, sorted by name.

    Hidden files (macOS ``._*`` resource forks, ``.DS_Store``) are skipped; anything else that
    is not a NIfTI file by name is an error.
    """
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = strip_nifti_suffix(path.name)
        if stem is None or not path.is_file():
            problems.error(path, NOT_NIFTI)
        else:
            found.append((stem, path))
    return found


Found = list[tuple[str, tuple[ChannelSource, ...], "Path | None"]]


def find_nnunet(root: Path, ending: str, names: list[str], problems: Problems) -> Found:
    """(case id, channels, label) of the complete cases of an nnU-Net v2 raw folder."""
    images, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images.is_dir():
        problems.error(images, "folder missing (the training images)")
        return []
    files: dict[str, dict[int, Path]] = {}
    for stem, path in _nifti_files(images, problems):
        match = _CHANNEL_FILE.match(stem)
        if match is None:
            problems.error(path, "name does not end in _XXXX (4-digit channel number)")
            continue
        case, channel = match["case"], int(match["channel"])
        slots = files.setdefault(case, {})
        if channel >= len(names):
            problems.error(
                path,
                f"channel {channel} is beyond the {len(names)} channel(s) of dataset.json "
                f"({', '.join(names)})",
            )
        elif channel in slots:
            problems.error(
                path, f"duplicate case: {slots[channel].name} is also {case!r} channel {channel}"
            )
        else:
            slots[channel] = path
    labels = _label_files(labels_dir, set(files), problems)
    found = []
    for case, slots in sorted(files.items()):
        channels = _nnunet_channels(case, slots, names, images, ending, problems)
        if channels is None:
            continue
        if labels is not None and case not in labels:
            problems.error(labels_dir / f"{case}{ending}", f"case {case!r} has no label")
        found.append((case, channels, None if labels is None else labels.get(case)))
    return found


def _label_files(folder: Path, cases: set[str], problems: Problems) -> dict[str, Path] | None:
    """Case id -> label file of ``labelsTr``; None (one error) if the folder is missing."""
    if not folder.is_dir():
        problems.error(folder, "folder missing (the labels of the training images)")
        return None
    labels: dict[str, Path] = {}
    for case, path in _nifti_files(folder, problems):
        if case in labels:
            problems.error(path, f"duplicate case: {labels[case].name} is also case {case!r}")
        elif case not in cases:
            problems.error(path, f"label without images (no imagesTr/{case}_XXXX files)")
        else:
            labels[case] = path
    return labels


def _nnunet_channels(
    case: str, files: dict[int, Path], names: list[str], folder: Path, ending: str, problems
) -> tuple[ChannelSource, ...] | None:
    """Channel sources of one case, or None (with an error per missing channel)."""
    if len(names) > 1 and set(files) == {0}:
        volumes = nifti_header_volumes(files[0])
        # an unreadable header is reported by validation, not guessed at here
        if volumes is None or volumes > 1:
            return tuple(ChannelSource(files[0], k) for k in range(len(names)))
    missing = [k for k in range(len(names)) if k not in files]
    for k in missing:
        name = f"{case}_{k:04d}{ending}"
        problems.error(folder / name, f"case {case!r} lacks channel {k} ({names[k]}): {name}")
    if missing:
        return None
    return tuple(ChannelSource(files[k], None) for k in range(len(names)))


def find_msd(root: Path, training, n_channels: int, problems: Problems) -> Found:
    """(case id, channels, label) of the cases listed in an MSD ``training`` list."""
    json_path = root / "dataset.json"
    if not isinstance(training, list):
        problems.error(json_path, "'training' must be a list")
        return []
    found, listed, by_case = [], {}, {}
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.error(json_path, f"training[{i}] has no 'image'")
            continue
        image = root / entry["image"]
        case = strip_nifti_suffix(image.name)
        if image in listed:
            problems.error(image, f"listed twice in training (entries {listed[image]} and {i})")
        elif case is None:
            problems.error(image, NOT_NIFTI)
        elif case in by_case:
            problems.error(image, f"duplicate case: {by_case[case].name} is also case {case!r}")
        elif not image.is_file():
            problems.error(image, "listed in dataset.json training but missing")
        else:
            by_case[case] = image
            label = _msd_label(root, entry, i, problems)
            index = [None] if n_channels == 1 else range(n_channels)
            found.append((case, tuple(ChannelSource(image, k) for k in index), label))
        listed.setdefault(image, i)
    used = set(listed) | {label for _, _, label in found}
    for folder in (root / "imagesTr", root / "labelsTr"):
        if folder.is_dir():
            for _, path in _nifti_files(folder, problems):
                if path not in used:
                    problems.warning(path, "not listed in dataset.json training; ignored")
    return found


def _msd_label(root: Path, entry: dict, i: int, problems: Problems) -> Path | None:
    if not isinstance(entry.get("label"), str):
        problems.error(root / "dataset.json", f"training[{i}] has no 'label'")
        return None
    label = root / entry["label"]
    if strip_nifti_suffix(label.name) is None:
        problems.error(label, NOT_NIFTI)
    elif not label.is_file():
        problems.error(label, "listed in dataset.json training but missing")
    else:
        return label
    return None
