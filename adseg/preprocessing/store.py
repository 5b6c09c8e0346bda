"""The preprocessed cases as arrays a loader reads in parts: memory-mapped ``.npy`` files.

Beside each case's NIfTI files (the record a person opens in a viewer, and what QC and the
threshold baseline read) preprocessing writes, as nnU-Net keeps its unpacked ``.npy`` files,
what training, validation and evaluation read::

    arrays/<case>_image.npy   (C, Z, Y, X) float32: SimpleITK's voxel order, so a slice
                              across z, the slice axis of a 2-D patch, is one contiguous block
    arrays/<case>_label.npy   (Z, Y, X) uint8 (absent for a case without a label)
    arrays/<case>_fg.npy      the labelled voxels' flat indices in (X, Y, Z) order, sorted

:func:`open_case` hands them out as ``(C, X, Y, Z)`` and ``(1, X, Y, Z)`` views of the files,
what MONAI's ``LoadImaged`` reads from the NIfTI files, so a training job reads only the
pages of the patches it cuts and holds no case in memory: a cohort need not fit in RAM.
The background voxels are never listed: :class:`Complement` gives the k-th of them from the
foreground's indices, which is what MONAI's ``FgBgToIndicesd`` lists as background.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adseg.errors import AdsegError
from adseg.io import atomic_path

ARRAYS = "arrays"


class StoreError(AdsegError, FileNotFoundError):
    """A preprocessed folder without its arrays (written before adseg kept them)."""


def array_paths(preprocessed: str | Path, case_id: str) -> dict[str, Path]:
    """Where a case's image, label and foreground indices lie."""
    folder = Path(preprocessed) / ARRAYS
    return {part: folder / f"{case_id}_{part}.npy" for part in ("image", "label", "fg")}


def case_files(preprocessed: str | Path, case_id: str) -> list[Path]:
    """A case's array files that exist (image, label, foreground), for fingerprints."""
    return [p for p in array_paths(preprocessed, case_id).values() if p.is_file()]


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def foreground_indices(label_xyz: np.ndarray) -> np.ndarray:
    """Flat (X, Y, Z) indices of the non-zero voxels, sorted; int32 where they fit."""
    flat = np.flatnonzero(label_xyz)
    return flat.astype(np.int32) if label_xyz.size < 2**31 else flat


def write_case(
    preprocessed: str | Path, case_id: str, channels: Sequence[np.ndarray], label: np.ndarray | None
) -> None:
    """Write one case's arrays (each file atomically).

    Args:
        channels: per channel a (Z, Y, X) array, as ``sitk.GetArrayViewFromImage`` gives.
        label: the (Z, Y, X) label map, or None.
    """
    paths = array_paths(preprocessed, case_id)
    _save(paths["image"], np.stack([np.asarray(c, dtype=np.float32) for c in channels]))
    if label is not None:
        if label.min() < 0 or label.max() > 255:
            raise ValueError(f"{case_id}: label values outside 0-255 cannot be stored as uint8")
        _save(paths["label"], np.ascontiguousarray(label, dtype=np.uint8))
        _save(paths["fg"], foreground_indices(np.asarray(label).transpose()))


class Complement:
    """The sorted integers of ``range(n)`` that ``fg`` (sorted, unique) lacks, listed lazily.

    ``len`` and integer indexing, all the foreground-balanced crop asks of its background
    indices; nothing of size ``n`` is ever made. The k-th of them is ``k + j`` where ``j``
    foreground indices lie below it, the number of ``fg[i] - i`` that are at most ``k``.
    """

    def __init__(self, fg: np.ndarray, n: int) -> None:
        self.n = int(n)
        self.below = np.asarray(fg, dtype=np.int64) - np.arange(len(fg), dtype=np.int64)

    def __len__(self) -> int:
        return self.n - len(self.below)

    def __getitem__(self, k: int) -> int:
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} background voxels")
        return k + int(np.searchsorted(self.below, k, side="right"))


@functools.lru_cache(maxsize=2**16)
def _header(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """An ``.npy`` file's shape, dtype and data offset, read once per version of the file
    (parsing the header is most of the time of ``np.load``'s memory map)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered array; adseg writes C order")
        return tuple(shape), dtype, f.tell()


def read_array(path: Path, mapped: bool = True) -> np.ndarray:
    """An ``.npy`` file's array: a read-only map of the file (pages read when touched and
    never counted twice), or with ``mapped=False`` a copy in memory."""
    stat = os.stat(path)
    shape, dtype, offset = _header(str(path), stat.st_mtime_ns, stat.st_size)
    count = int(np.prod(shape))
    if not mapped:
        return np.fromfile(path, dtype, count, offset=offset).reshape(shape)
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(buffer, dtype, count, offset).reshape(shape)


def check_arrays(preprocessed: str | Path, case_id: str, *parts: str) -> dict[str, Path]:
    """A case's array paths, once ``parts`` (image, label, fg) are found.

    Raises:
        StoreError: naming the first missing file and how to make it.
    """
    paths = array_paths(preprocessed, case_id)
    for part in parts:
        if not paths[part].is_file():
            raise StoreError(
                f"{paths[part]}: missing; {preprocessed} was preprocessed by an adseg that did "
                "not keep arrays for training. Preprocess it again: the workflow redoes a "
                "folder it wrote by itself; for another, run `adseg preprocess`."
            )
    return paths


def read_image(preprocessed: str | Path, case_id: str, mapped: bool = True) -> np.ndarray:
    """A case's image alone, ``(C, X, Y, Z)``: a view of the mapped file (or a copy).

    Raises:
        StoreError: the image array is missing.
    """
    path = check_arrays(preprocessed, case_id, "image")["image"]
    return read_array(path, mapped).transpose(0, 3, 2, 1)


def open_case(preprocessed: str | Path, case_id: str, in_memory: bool = False) -> dict:
    """A case's arrays as MONAI's loader would give them, ``(C, X, Y, Z)`` and ``(1, X, Y, Z)``.

    Views of memory-mapped files, read only, unless ``in_memory``; ``"fg"`` holds the
    foreground indices (absent, like ``"label"``, for a case without a label).

    Raises:
        StoreError: the case's image array is missing.
    """
    paths = array_paths(preprocessed, case_id)
    mapped = not in_memory
    case = {"image": read_image(preprocessed, case_id, mapped)}
    if paths["label"].is_file():
        check_arrays(preprocessed, case_id, "fg")
        case["label"] = read_array(paths["label"], mapped).transpose()[None]
        case["fg"] = read_array(paths["fg"], mapped)
    return case
