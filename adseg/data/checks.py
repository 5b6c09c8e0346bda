"""Read and check the files of one case, learning what later steps need to know of it.

Each file is read with SimpleITK's NIfTI reader (header first, then voxels). Two things ITK
hides are checked by hand: it fills a truncated file's missing voxels with zeros, so the size
of the voxel data is checked against the header (for .nii.gz by decompressing the whole stream,
which also checks its CRC); and it reads NaN/inf as 0, so floating-point voxels are counted
with nibabel. Each channel is placed against the first (reference) channel in world space: too
little overlap is an error, a field of view shifted by more than a reference voxel a warning.
What validation learns about a case (grids, label values, intensities) is kept in a
:class:`CaseInfo`, so the fingerprint and QC need not read the files again.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from adseg.data.cohort import Case
from adseg.data.problems import ChannelSource, Problem, Problems
from adseg.geometry import Grid, obliquity_deg, orientation_code

OBLIQUE_WARNING_DEG = 30.0  # below this an oblique scan is routine; above, its code is a guess
MIN_CHANNEL_OVERLAP = 0.5  # of the reference channel's world bounding box
MAX_CHANNEL_SHIFT_VOXELS = 1.0  # of the coarser channel, between centres of the fields of view
FLOAT_PIXELS = (sitk.sitkFloat32, sitk.sitkFloat64)


@dataclass
class CaseInfo:
    """What validation learned about one case, reused for QC and the fingerprint.

    Attributes:
        channel_grids: ``Grid.to_dict()`` per channel (original geometry); ``{}`` if unreadable.
        label_grid: ``Grid.to_dict()`` of the label, None if it has none or it is unreadable.
        label_values: distinct values in the label.
        label_voxels: voxels per declared label name.
        intensity: per channel min, max, mean, std, p01, p99 of the finite voxels; ``{}`` if
            unreadable.
    """

    case_id: str
    patient_id: str
    domain: str
    channel_grids: list[dict]
    label_grid: dict | None
    label_values: list[int]
    label_voxels: dict[str, int]
    intensity: list[dict]


def check_case(
    case: Case,
    channel_names: list[str],
    labels: dict[str, int],
    grid_tolerance: float = 0.01,
    anisotropy_warning: float = 10.0,
) -> tuple[CaseInfo, list[Problem]]:
    """Read and check every file of one case.

    Returns:
        What was learned about the case, and its problems.
    """
    problems = Problems()
    volumes = _read_channels(case.channels, channel_names, problems)
    grids = [None if v is None else Grid.of(v) for v in volumes]
    ref, ref_name = grids[0], channel_names[0]
    intensity, checked = [], set()
    for c, (source, name) in enumerate(zip(case.channels, channel_names, strict=True)):
        if grids[c] is None:
            intensity.append({})
            continue
        intensity.append(_intensity(volumes[c], source.path, name, problems))
        if source.path not in checked:  # a 4-D file's channels share one grid: warn once
            _geometry_warnings(grids[c], source.path, anisotropy_warning, problems)
            checked.add(source.path)
        if c > 0 and ref is not None:
            check_placement(grids[c], ref, source.path, name, ref_name, problems)
    label_grid, values, voxels = None, [], {}
    label = None if case.label is None else _read_label(case.label, problems)
    if label is not None:
        label_grid = Grid.of(label)
        values, voxels = _label_values(label, case.label, labels, problems)
        mismatch = "" if ref is None else grid_mismatch(label_grid, ref, grid_tolerance)
        if mismatch:
            problems.error(case.label, f"label grid differs from {ref_name}: {mismatch}")
    info = CaseInfo(
        case.case_id,
        case.patient_id,
        case.domain,
        [{} if g is None else g.to_dict() for g in grids],
        None if label_grid is None else label_grid.to_dict(),
        values,
        voxels,
        intensity,
    )
    return info, list(problems)


def read_nifti(path: Path, problems: Problems) -> sitk.Image | None:
    """Read a NIfTI file, or add an error naming what is wrong with it and return None."""
    if path.stat().st_size == 0:
        problems.error(path, "empty file (0 bytes)")
        return None
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        problems.error(path, _header_error(path, err))
        return None
    missing = _missing_bytes(path, reader)
    if missing:
        problems.error(path, f"truncated or corrupt: {missing}")
        return None
    try:
        image = reader.Execute()
    except RuntimeError as err:
        problems.error(path, f"unreadable voxel data ({_itk_message(err, path)})")
        return None
    if image.GetPixelID() in FLOAT_PIXELS:
        n_bad = int(np.count_nonzero(~np.isfinite(np.asanyarray(nib.load(path).dataobj))))
        if n_bad:
            problems.error(path, f"{n_bad} NaN/inf voxels (ITK reads them as 0)")
    return image


def _header_error(path: Path, err: RuntimeError) -> str:
    """What to say about a file whose NIfTI header cannot be read."""
    try:
        io = sitk.ImageFileReader.GetImageIOFromFileName(str(path))
    except RuntimeError:
        io = ""
    if io and io != "NiftiImageIO":
        return f"not a NIfTI file (ITK reads it as {io.removesuffix('ImageIO')})"
    return f"not a NIfTI file, or its header is damaged ({_itk_message(err, path)})"


def _itk_message(err: RuntimeError, path: Path) -> str:
    """The last line of an ITK exception, without source file, object address and path."""
    line = str(err).strip().splitlines()[-1].replace(str(path), path.name)
    return re.sub(r"^.*?ERROR: (\w+\(0x[0-9a-f]+\): )?", "", line).strip()


def _missing_bytes(path: Path, reader: sitk.ImageFileReader) -> str:
    """Why the file holds less voxel data than its header promises ("" if it holds enough)."""
    keys = ("dim[0]", "vox_offset", "bitpix")
    if not all(reader.HasMetaDataKey(k) for k in keys):
        return ""
    header = {k: int(float(reader.GetMetaData(k))) for k in keys}
    dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, header["dim[0]"] + 1)]
    needed = header["vox_offset"] + int(np.prod(dims)) * header["bitpix"] // 8
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if not gzipped:
        size = os.path.getsize(path)
    else:
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 16):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            return f"gzip stream broken after {size} of {needed} bytes ({err})"
    return "" if size >= needed else f"{size} bytes of {needed} the header needs"


def _read_channels(
    sources: tuple[ChannelSource, ...], names: list[str], problems: Problems
) -> list[sitk.Image | None]:
    """The 3-D volume of each channel (None where it cannot be had); each file read once."""
    by_path: dict[Path, list[int]] = {}
    for c, source in enumerate(sources):
        by_path.setdefault(source.path, []).append(c)
    volumes: list[sitk.Image | None] = [None] * len(sources)
    for path, channels in by_path.items():
        image = read_nifti(path, problems)
        if image is None:
            continue
        wanted = [names[c] for c in channels]
        split = _split_channels(image, path, sources[channels[0]].index is None, wanted, problems)
        for c, volume in zip(channels, split, strict=False):
            volumes[c] = volume
    return volumes


def _split_channels(
    image: sitk.Image, path: Path, single: bool, names: list[str], problems: Problems
) -> list[sitk.Image]:
    """3-D volumes of a file: one for a 3-D file, one per channel of a 4-D file ([] if wrong)."""
    dim, size = image.GetDimension(), image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        n = image.GetNumberOfComponentsPerPixel()
        problems.error(path, f"{n} components per voxel; expected scalar voxels")
        return []
    if dim == 4 and size[3] == 1:
        return [image[:, :, :, 0]]
    if dim == 3 and single:
        return [image]
    if dim == 4 and not single and size[3] == len(names):
        return [image[:, :, :, k] for k in range(size[3])]
    shape = "x".join(map(str, size))
    declared = f"{len(names)} ({', '.join(names)})"
    if dim == 4 and single:
        problems.error(path, f"4-D image ({shape}) holds {size[3]} volumes; expected 3-D")
    elif dim == 4:
        problems.error(path, f"4-D image with {size[3]} channels; dataset.json declares {declared}")
    elif dim == 3:
        problems.error(path, f"3-D image; dataset.json declares {declared} channels in a 4-D file")
    else:
        problems.error(path, f"{dim}-D image ({shape}); expected 3-D")
    return []


def _intensity(volume: sitk.Image, path: Path, name: str, problems: Problems) -> dict:
    """Intensity statistics of one channel, with errors for empty and constant images."""
    values = sitk.GetArrayViewFromImage(volume).astype(np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if lo == hi == 0:
        problems.error(path, f"{name}: image is empty (all voxels 0)")
    elif lo == hi:
        problems.error(path, f"{name}: image is constant (all voxels {lo:g})")
    p01, p99 = np.percentile(values, [1, 99])
    return {
        "min": lo,
        "max": hi,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p01": float(p01),
        "p99": float(p99),
    }


def _geometry_warnings(grid: Grid, path: Path, limit: float, problems: Problems) -> None:
    ratio = max(grid.spacing) / min(grid.spacing)
    if ratio > limit:
        spacing = "x".join(f"{s:.3g}" for s in grid.spacing)
        problems.warning(
            path, f"extreme anisotropy: spacing {spacing} mm, ratio {ratio:.1f} (> {limit:g})"
        )
    oblique = obliquity_deg(grid.direction)
    if oblique >= OBLIQUE_WARNING_DEG:
        code = orientation_code(grid.direction)
        problems.warning(
            path, f"axes {oblique:.1f} degrees oblique; orientation {code} is only the nearest"
        )


def _check_overlap(
    grid: Grid, ref: Grid, path: Path, name: str, ref_name: str, problems: Problems
) -> bool:
    """Error if a channel's world bounding box covers too little of the reference channel's.

    Returns:
        True when the overlap is enough (no error).
    """
    a, b = ref.corners(), grid.corners()
    lo, hi = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))
    fraction = np.prod(np.clip(hi - lo, 0, None)) / np.prod(a.max(0) - a.min(0))
    if fraction < MIN_CHANNEL_OVERLAP:
        problems.error(
            path,
            f"{name} overlaps only {100 * fraction:.0f} % of {ref_name} in world space "
            f"(bounding boxes; at least {100 * MIN_CHANNEL_OVERLAP:.0f} % needed)",
        )
        return False
    return True


def _channel_shift(grid: Grid, ref: Grid) -> np.ndarray:
    """Shift of ``grid``'s field of view against ``ref``'s, in ``ref``'s voxels along its axes.

    The shift is that of the physical centre of each grid's extent (the world position of the
    middle of its voxel cuboid), expressed along ``ref``'s voxel axes in units of ``ref``'s
    spacing. Centres are compared, not origins: the origin is the centre of voxel (0, 0, 0), so
    two channels covering the same field of view with different voxel sizes (T2w at 0.6 mm, ADC
    at 2 mm) or different orientations (RAS vs LPS, where voxel 0 sits at opposite corners) have
    different origins but one centre; and a channel with a smaller field of view planned on the
    same point (the usual scanner protocol) keeps its centre too.
    """
    centre = grid.index_to_world(((np.asarray(grid.size) - 1) / 2)[None])
    return ref.world_to_index(centre)[0] - (np.asarray(ref.size) - 1) / 2


def _check_shift(
    grid: Grid, ref: Grid, path: Path, name: str, ref_name: str, problems: Problems
) -> None:
    """Warn if a channel's field of view is shifted by more than a voxel of the coarser of
    the two channels (along any of the reference's axes).

    A shifted header origin (a channel exported with the wrong position, or moved by hand)
    leaves enough overlap to pass :func:`_check_overlap` but puts the channels' anatomy out of
    register; resampling onto one grid would keep that shift. See :func:`_channel_shift`. The
    coarser channel's voxel is the unit because a shift below it cannot show in that channel
    (the synthetic cohort places ADC/DWI fields of view up to 3 mm off the T2w's centre, as
    planning does; an ADC voxel is 2 x 2 x 3 mm).
    """
    voxels = _channel_shift(grid, ref)
    shift_mm = voxels * np.asarray(ref.spacing)
    voxel_mm = np.maximum(np.asarray(ref.spacing), max(grid.spacing))
    if np.all(np.abs(shift_mm) <= MAX_CHANNEL_SHIFT_VOXELS * voxel_mm + 1e-6):
        return
    mm = float(np.linalg.norm(shift_mm))
    shown = ", ".join(f"{v:.1f}" for v in shift_mm)
    problems.warning(
        path,
        f"{name} is shifted {mm:.1f} mm against {ref_name} ({shown} mm along {ref_name}'s "
        f"axes; more than a voxel of the coarser channel): centres of the fields of view "
        "differ, check that the channels are registered",
    )


def grid_mismatch(grid: Grid, ref: Grid, tolerance: float) -> str:
    """How ``grid`` differs from ``ref`` beyond ``tolerance`` voxel ("" if it does not).

    Size must match exactly; spacing is compared relative to ``ref``'s, origin in ``ref``'s
    voxels and direction cosines absolutely.
    """
    size = f"size {'x'.join(map(str, grid.size))} vs {'x'.join(map(str, ref.size))}"
    parts = []
    spacing = float(np.max(np.abs(np.subtract(grid.spacing, ref.spacing)) / ref.spacing))
    origin = float(np.abs(ref.world_to_index(np.asarray(grid.origin)[None])).max())
    direction = float(np.max(np.abs(np.subtract(grid.direction, ref.direction))))
    for value, text in (
        (spacing, "spacing off by {:.3g} (relative)"),
        (origin, "origin off by {:.3g} voxel"),
        (direction, "direction off by {:.3g} (cosine)"),
    ):
        if value > tolerance:
            parts.append(text.format(value))
    text = ", ".join(parts) + (f" (tolerance {tolerance:g})" if parts else "")
    return ", ".join(p for p in (size if grid.size != ref.size else "", text) if p)


def _read_label(path: Path, problems: Problems) -> sitk.Image | None:
    image = read_nifti(path, problems)
    if image is None:
        return None
    volumes = _split_channels(image, path, True, ["label"], problems)
    return volumes[0] if volumes else None


def _label_values(
    label: sitk.Image, path: Path, labels: dict[str, int], problems: Problems
) -> tuple[list[int], dict[str, int]]:
    """Distinct label values and voxels per declared label, with errors for bad values."""
    values, counts = np.unique(sitk.GetArrayViewFromImage(label), return_counts=True)
    fractional = values[values != np.round(values)]
    if fractional.size:
        shown = ", ".join(f"{v:g}" for v in fractional[:5])
        problems.error(path, f"non-integer label values ({fractional.size}: {shown})")
    integral = values == np.round(values)
    found = {int(v): int(n) for v, n in zip(values[integral], counts[integral], strict=True)}
    undeclared = sorted(set(found) - set(labels.values()))
    if undeclared:
        declared = ", ".join(f"{n}={v}" for n, v in labels.items())
        problems.error(
            path,
            f"label values not declared in dataset.json: {', '.join(map(str, undeclared))} "
            f"(declared: {declared})",
        )
    if not any(v != 0 for v in found):
        problems.warning(path, "label is empty (no foreground voxels)")
    return sorted(found), {name: found.get(value, 0) for name, value in labels.items()}


def check_placement(
    grid: Grid, ref: Grid, path: Path, name: str, ref_name: str, problems: Problems
) -> None:
    """Validation's world-space checks of one channel against the reference channel, for
    commands that read scans outside a cohort (``adseg predict``): too little overlap is an
    error, a field of view shifted by more than a reference voxel a warning."""
    if _check_overlap(grid, ref, path, name, ref_name, problems):
        _check_shift(grid, ref, path, name, ref_name, problems)
