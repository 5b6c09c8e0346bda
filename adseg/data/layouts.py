"""Where each cohort layout keeps its files: nnU-Net v2 raw folders and MSD tasks.

:func:`find_nnunet` and :func:`find_msd` turn a layout's folders (and, for MSD, the ``training``
list of dataset.json) into ``(case id, channels, label)`` triples of the complete cases. Every
file that does not fit is reported as a :class:`Problem` instead of raising, so that
:func:`adseg.data.cohort.discover_cohort` can list all of them at once. The types they produce
are :mod:`adseg.data.problems`'s.

A path that dataset.json gives (an MSD ``training`` entry's image or label) must stay inside
the dataset folder: an absolute path, or one that ``..`` or a symbolic link takes outside, is an
error and the file is never opened. dataset.json's ``numTraining``, where given, must be the
number of training cases found, as nnU-Net v2 checks it.
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


def find_nnunet(
    root: Path, ending: str, names: list[str], problems: Problems, num_training=None
) -> Found:
    """(case id, channels, label) of the complete cases of an nnU-Net v2 raw folder.

    ``num_training`` (dataset.json's ``numTraining``; None if absent) must be the number of
    cases in ``imagesTr``, complete or not, as nnU-Net v2 counts them.
    """
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
    n = len(files)
    _check_num_training(root / "dataset.json", num_training, n, f"imagesTr holds {n}", problems)
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


def _check_num_training(
    json_path: Path, declared, found: int, counted: str, problems: Problems
) -> None:
    """Error if dataset.json's ``numTraining`` (None: not given) is not ``found``.

    Args:
        counted: where ``found`` comes from, for the message, e.g. ``"imagesTr holds 3"``.
    """
    if declared is None:
        return
    if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
        problems.error(json_path, f"'numTraining' must be a non-negative integer, not {declared!r}")
    elif declared != found:
        problems.error(
            json_path,
            f"'numTraining' is {declared} but {counted} training case(s)",
        )


def find_msd(root: Path, training, n_channels: int, problems: Problems, num_training=None) -> Found:
    """(case id, channels, label) of the cases listed in an MSD ``training`` list.

    ``num_training`` (dataset.json's ``numTraining``; None if absent) must be the number of
    distinct cases the list names, whether their files are usable or not.
    """
    json_path = root / "dataset.json"
    if not isinstance(training, list):
        problems.error(json_path, "'training' must be a list")
        return []
    found, listed, by_case, named, refused = [], {}, {}, set(), set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.error(json_path, f"training[{i}] has no 'image'")
            continue
        named.add(strip_nifti_suffix(Path(entry["image"]).name) or entry["image"])
        image = _dataset_path(root, entry["image"], f"training[{i}] 'image'", problems, refused)
        label = entry.get("label")
        if isinstance(label, str):  # checked whatever becomes of the image, to list every error
            label = _dataset_path(root, label, f"training[{i}] 'label'", problems, refused)
        if image is None:
            continue
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
            label = _msd_label(root, entry, i, label, problems)
            index = [None] if n_channels == 1 else range(n_channels)
            found.append((case, tuple(ChannelSource(image, k) for k in index), label))
        listed.setdefault(image, i)
    n = len(named)
    _check_num_training(json_path, num_training, n, f"'training' lists {n}", problems)
    # by where they lead, so that "labelsTr/../labelsTr/x.nii.gz" counts as labelsTr's x.nii.gz
    used = {p.resolve() for p in (*listed, *(label for _, _, label in found)) if p is not None}
    for folder in (root / "imagesTr", root / "labelsTr"):
        if folder.is_dir():
            for _, path in _nifti_files(folder, problems):
                if path not in refused and path.resolve() not in used:
                    problems.warning(path, "not listed in dataset.json training; ignored")
    return found


def _dataset_path(
    root: Path, text: str, what: str, problems: Problems, refused: set[Path]
) -> Path | None:
    """``root / text`` for a path dataset.json gives, or None (an error) if it leads outside.

    Checked before the file is touched: an absolute path, one whose ``..`` climbs out of
    ``root``, and one through a symbolic link to a place outside ``root`` are refused, so
    dataset.json cannot make adseg read (or report on) files elsewhere.

    Args:
        what: the entry, for the message, e.g. ``"training[3] 'label'"``.
        refused: where ``root / text`` goes when refused (a link in imagesTr that is listed
            but refused is not also "not listed").
    """
    json_path, path = root / "dataset.json", root / text  # root / absolute = absolute
    if Path(text).is_absolute():
        problems.error(
            json_path,
            f"{what} {text!r} is an absolute path (not read); give it relative to the dataset "
            "folder",
        )
        refused.add(path)
        return None
    try:
        target = path.resolve()
        inside = target.is_relative_to(root.resolve())
    except (OSError, RuntimeError) as err:  # a symbolic link loop
        problems.error(json_path, f"{what} {text!r} cannot be resolved ({err}); not read")
        refused.add(path)
        return None
    if not inside:
        problems.error(
            json_path, f"{what} {text!r} leads outside the dataset folder (to {target}); not read"
        )
        refused.add(path)
        return None
    return path


def _msd_label(root: Path, entry: dict, i: int, label, problems: Problems) -> Path | None:
    """The label file of training entry ``i`` (``label``: its path, None if refused)."""
    if not isinstance(entry.get("label"), str):
        problems.error(root / "dataset.json", f"training[{i}] has no 'label'")
        return None
    if label is None:  # outside the dataset folder: reported by _dataset_path
        return None
    if strip_nifti_suffix(label.name) is None:
        problems.error(label, NOT_NIFTI)
    elif not label.is_file():
        problems.error(label, "listed in dataset.json training but missing")
    else:
        return label
    return None
