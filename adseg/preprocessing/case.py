"""Put every case on one canonical grid: reorient, resample, crop, normalise.

The steps for one case (:func:`preprocess_images`, shared with prediction):

1. optional N4 bias-field correction of chosen channels (SimpleITK, on the original grid);
2. reorient the reference channel to the canonical orientation (a lossless axis permutation);
3. build the target grid: the reference's direction and physical extent at the target spacing;
4. resample every channel straight onto that grid (linear; labels nearest), so each voxel is
   interpolated once, not once to the reference grid and again to the target spacing;
5. crop to the bounding box of the voxels that are non-zero in any channel (holes filled);
6. normalise each channel (MONAI intensity transforms).

Everything is done in world coordinates, so the written NIfTI headers carry the exact geometry
and a prediction can be sent back to any scan's own grid by resampling alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import ScaleIntensityRangePercentiles
from scipy import ndimage

from adseg import __version__
from adseg.geometry import Grid, reorient

NORMALIZATION_SCHEMES = ("zscore", "zscore-nonzero", "percentile", "none")


@dataclass
class Plan:
    """Everything needed to preprocess a new scan exactly like the training cases.

    Saved as ``plans.json`` next to the preprocessed data and, later, in every model folder.
    """

    channel_names: list[str]
    labels: dict[str, int]
    reference_channel: int
    orientation: str
    target_spacing: list[float]
    normalization: list[str]
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    crop_to_nonzero: bool = True
    n4_channels: list[str] = field(default_factory=list)
    adseg_version: str = __version__

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a plan from another version)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"plan has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)


def make_plan(
    settings: dict, channel_names: list[str], labels: dict[str, int], target_spacing
) -> Plan:
    """Build a :class:`Plan` from the ``preprocess`` section of a resolved config.

    Raises:
        ValueError: a channel named in the config does not exist, naming the channels that do.
    """
    ref = channel_index(settings["reference_channel"], channel_names)
    norm = settings["normalization"]
    for name in [*norm["channels"], *settings["n4_channels"]]:
        channel_index(name, channel_names)
    return Plan(
        channel_names=list(channel_names),
        labels=dict(labels),
        reference_channel=ref,
        orientation=settings["orientation"],
        target_spacing=[float(s) for s in target_spacing],
        normalization=[norm["channels"].get(c, norm["default"]) for c in channel_names],
        percentiles=[float(p) for p in norm["percentiles"]],
        crop_to_nonzero=settings["crop_to_nonzero"],
        n4_channels=list(settings["n4_channels"]),
    )


def channel_index(channel: str | int, channel_names: list[str]) -> int:
    """Index of a channel given by name or index, with the channels listed if it is unknown."""
    if isinstance(channel, str):
        if channel not in channel_names:
            names = ", ".join(channel_names)
            raise ValueError(f"channel {channel!r} unknown; channels: {names}")
        return channel_names.index(channel)
    if not 0 <= channel < len(channel_names):
        names = ", ".join(channel_names)
        raise ValueError(f"channel {channel} out of range 0..{len(channel_names) - 1} ({names})")
    return channel


def reoriented_grid(grid: Grid, code: str) -> Grid:
    """The grid an image on ``grid`` has after :func:`adseg.geometry.reorient` (no voxels read)."""
    return Grid.of(reorient(grid.reference_image(sitk.sitkUInt8), code))


def nnunet_target_spacing(
    spacings: np.ndarray, sizes: np.ndarray, threshold: float = 3.0
) -> np.ndarray:
    """nnU-Net's full-resolution target spacing from a cohort's spacings.

    The median spacing per axis, except for strongly anisotropic data (the coarsest axis more
    than ``threshold`` times the finest other axis, and correspondingly few voxels along it):
    that axis gets the 10th percentile of its spacings, so thin-slice cases are not blurred
    down to the thick-slice median (Isensee et al. 2021, nnU-Net's ``ExperimentPlanner``).

    Args:
        spacings: ``(N, 3)`` spacings in mm, in the canonical axis order.
        sizes: ``(N, 3)`` image sizes in voxels, same axis order.
    """
    spacings, sizes = np.asarray(spacings, float), np.asarray(sizes, float)
    target = np.median(spacings, axis=0)
    target_size = np.median(sizes, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > threshold * max(target[others])
    aniso_voxels = target_size[worst] * threshold < min(target_size[others])
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        if coarse < max(target[others]):
            coarse = max(max(target[others]), coarse) + 1e-5
        target[worst] = coarse
    return target


def target_grid(reference: sitk.Image, spacing) -> Grid:
    """A grid with ``reference``'s direction and physical extent at ``spacing`` (mm).

    The outer faces of the voxel cuboid are kept, so the new voxel centres shift by half the
    change of voxel size from the reference's first voxel centre.
    """
    ref = Grid.of(reference)
    spacing = np.asarray(spacing, float)
    extent = np.asarray(ref.size) * np.asarray(ref.spacing)
    size = np.maximum(np.round(extent / spacing), 1).astype(int)
    direction = np.asarray(ref.direction).reshape(3, 3)
    origin = np.asarray(ref.origin) + direction @ ((spacing - np.asarray(ref.spacing)) / 2)
    return Grid(size, spacing, origin, ref.direction)


def resample_to(
    image: sitk.Image, grid: Grid, label: bool = False, default: float = 0.0
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (linear, or nearest neighbour for labels).

    Points of ``grid`` outside ``image`` get ``default`` (0 for labels).
    """
    if label:
        return sitk.Resample(
            image,
            grid.reference_image(),
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
            sitk.sitkUInt8,
        )
    return sitk.Resample(
        image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32
    )


def n4_correct(image: sitk.Image, shrink: int = 4) -> sitk.Image:
    """N4 bias-field correction; the field is fitted on an in-plane shrunk copy for speed."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    factors = [shrink if s > 8 * shrink else 1 for s in image.GetSize()]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([25, 25, 25])
    corrector.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask, factors))
    log_field = corrector.GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Exp(log_field), sitk.sitkFloat32)


def nonzero_bbox(arrays: list[np.ndarray]) -> tuple[slice, ...]:
    """Bounding box of the voxels non-zero in any array, as numpy slices."""
    mask = np.zeros(arrays[0].shape, bool)
    for arr in arrays:
        mask |= arr != 0
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    return ndimage.find_objects(mask.astype(np.uint8))[0]


def normalize(
    arr: np.ndarray, scheme: str, percentiles=(0.5, 99.5), statistics: bool = True
) -> tuple[np.ndarray, dict]:
    """Normalise one channel ``(Z, Y, X)``; return it and the statistics used.

    Schemes: ``zscore`` over all voxels; ``zscore-nonzero`` over non-zero voxels only (zeros
    stay 0, nnU-Net's mask rule); ``percentile`` clips to the given percentiles and maps them to
    [0, 1]; ``none`` leaves intensities as they are.

    With ``statistics`` False only the scheme is recorded: the QC statistics (mean, std,
    percentiles: a sort of the channel) are skipped, which the normalisation does not need.
    """
    if scheme not in NORMALIZATION_SCHEMES:
        raise ValueError(
            f"normalization {scheme!r} unknown; choose from {', '.join(NORMALIZATION_SCHEMES)}"
        )
    stats = {"scheme": scheme}
    if statistics:
        values = arr[arr != 0] if scheme == "zscore-nonzero" else arr.ravel()
        lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 0.0)
        stats.update(
            mean=float(values.mean()) if values.size else 0.0,
            std=float(values.std()) if values.size else 0.0,
            p_low=float(lo),
            p_high=float(hi),
        )
    if scheme == "none":
        return arr.astype(np.float32), stats
    if scheme != "percentile":
        return zscore(arr, nonzero=scheme == "zscore-nonzero"), stats
    transform = ScaleIntensityRangePercentiles(*percentiles, b_min=0.0, b_max=1.0, clip=True)
    out = transform(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
    return np.asarray(out, dtype=np.float32), stats


def zscore(arr: np.ndarray, nonzero: bool) -> np.ndarray:
    """MONAI's ``NormalizeIntensity`` (``nonzero`` as there), in numpy on a float32 copy.

    Same rules: statistics over the non-zero voxels with ``nonzero`` (which stay 0), a zero
    standard deviation divides by 1, an all-zero channel is returned as it is. MONAI's goes
    through torch's masked indexing, about twice the time (3.4 against 1.8 ms a channel of
    216,000 voxels, bench/RESULTS.md); tests/preprocessing/test_case.py compares the two.
    """
    out = np.array(arr, dtype=np.float32)
    mask = out != 0 if nonzero else None
    values = out[mask] if mask is not None else out
    if values.size == 0:
        return out
    # statistics in float64; Python floats keep the arithmetic in float32
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    scaled = (values - mean) / (std or 1.0)
    if mask is None:
        return scaled
    out[mask] = scaled
    return out


def preprocess_images(
    channels: list[sitk.Image], label: sitk.Image | None, plan: Plan, statistics: bool = True
) -> tuple[list[sitk.Image], sitk.Image | None, dict]:
    """Preprocess the channels (and label, if given) of one case according to ``plan``.

    ``statistics`` False leaves the intensity statistics out of the record (see
    :func:`normalize`); the images are the same.

    Returns:
        The channels as float32 images on the final grid, the label as uint8 on that grid (or
        None), and a record: the grids at each stage, the crop, normalisation statistics.
    """
    if len(channels) != len(plan.channel_names):
        raise ValueError(
            f"expected {len(plan.channel_names)} channels {plan.channel_names}, got {len(channels)}"
        )
    channels = [
        n4_correct(img) if name in plan.n4_channels else img
        for name, img in zip(plan.channel_names, channels, strict=True)
    ]
    reference = reorient(channels[plan.reference_channel], plan.orientation)
    grid = target_grid(reference, plan.target_spacing)
    arrays = [sitk.GetArrayFromImage(resample_to(img, grid)) for img in channels]
    label_arr = (
        sitk.GetArrayFromImage(resample_to(label, grid, label=True)) if label is not None else None
    )
    crop = (
        nonzero_bbox(arrays)
        if plan.crop_to_nonzero
        else tuple(slice(0, n) for n in arrays[0].shape)
    )
    # numpy arrays are (z, y, x); the grid's first voxel moves by the crop start in (x, y, z)
    start = [crop[2].start, crop[1].start, crop[0].start]
    final = Grid(
        size=(
            crop[2].stop - crop[2].start,
            crop[1].stop - crop[1].start,
            crop[0].stop - crop[0].start,
        ),
        spacing=grid.spacing,
        origin=grid.index_to_world(np.array([start]))[0],
        direction=grid.direction,
    )
    out, stats = [], []
    for arr, scheme in zip(arrays, plan.normalization, strict=True):
        normed, st = normalize(arr[crop], scheme, plan.percentiles, statistics)
        out.append(final.image(normed))
        stats.append(st)
    out_label = None
    if label_arr is not None:
        out_label = final.image(np.ascontiguousarray(label_arr[crop]))
    record = {
        "reoriented_reference": Grid.of(reference).to_dict(),
        "target_grid": grid.to_dict(),
        "crop_start_xyz": start,
        "final_grid": final.to_dict(),
        "normalization": [
            {"channel": c, **s} for c, s in zip(plan.channel_names, stats, strict=True)
        ],
        "label_voxels_outside_crop": int(
            np.count_nonzero(label_arr) - np.count_nonzero(label_arr[crop])
        )
        if label_arr is not None
        else 0,
    }
    return out, out_label, record
