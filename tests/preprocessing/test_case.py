"""Preprocessing: geometry is tested, not assumed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from adseg.geometry import Grid, orientation_code
from adseg.preprocessing.case import (
    Plan,
    channel_index,
    make_plan,
    nnunet_target_spacing,
    normalize,
    preprocess_images,
    reoriented_grid,
    target_grid,
    zscore,
)

LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


def rotation(axis: str, degrees: float) -> np.ndarray:
    """A rotation matrix about a world axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


OBLIQUE = tuple((rotation("x", 12) @ rotation("z", -7) @ np.diag([-1, -1, 1])).ravel())


def blob_image(direction, spacing, size, centre_world, radius_mm=4.0, label=False) -> sitk.Image:
    """An image whose intensity is a ball (label) or Gaussian blob at a world position (mm)."""
    grid = Grid(tuple(size), tuple(spacing), (0.0, 0.0, 0.0), tuple(float(d) for d in direction))
    # put the grid's centre near the blob so it is well inside the field of view
    centre_index = (np.asarray(size) - 1) / 2
    offset = np.asarray(centre_world) - grid.index_to_world(centre_index[None])[0]
    grid = Grid(grid.size, grid.spacing, tuple(offset + np.array([1.3, -0.7, 2.1])), grid.direction)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    dist = np.linalg.norm(grid.index_to_world(index) - np.asarray(centre_world), axis=1).reshape(
        zz.shape
    )
    if label:
        arr = (dist <= radius_mm).astype(np.uint8)
    else:
        arr = (100.0 + 1000.0 * np.exp(-0.5 * (dist / radius_mm) ** 2)).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def world_centroid(image: sitk.Image, background: float = 0.0) -> np.ndarray:
    """Intensity-weighted centroid of an image in world coordinates (mm)."""
    arr = sitk.GetArrayFromImage(image).astype(float) - background
    arr = np.clip(arr, 0, None)
    zz, yy, xx = np.nonzero(arr > 0)
    w = arr[zz, yy, xx]
    index = np.stack([xx, yy, zz], axis=1)
    return (Grid.of(image).index_to_world(index) * w[:, None]).sum(axis=0) / w.sum()


def plan_for(n_channels: int, spacing=(1.0, 1.0, 1.0), norm="none", crop=False) -> Plan:
    return Plan(
        channel_names=[f"c{i}" for i in range(n_channels)],
        labels={"background": 0, "lesion": 1},
        reference_channel=0,
        orientation="RAS",
        target_spacing=list(spacing),
        normalization=[norm] * n_channels,
        crop_to_nonzero=crop,
    )


@pytest.mark.parametrize("direction", [LPS, RAS, OBLIQUE], ids=["LPS", "RAS", "oblique"])
def test_world_point_survives_reorientation_and_resampling(direction):
    centre = np.array([12.0, -30.0, 45.0])
    t2 = blob_image(direction, (0.5, 0.5, 3.0), (48, 48, 12), centre)
    adc = blob_image(direction, (2.0, 2.0, 3.0), (14, 14, 12), centre)
    label = blob_image(direction, (0.5, 0.5, 3.0), (48, 48, 12), centre, radius_mm=5.0, label=True)
    images, label_out, record = preprocess_images([t2, adc], label, plan_for(2))
    assert orientation_code(images[0].GetDirection()) == "RAS"
    for image in images:
        assert world_centroid(image, background=100.0) == pytest.approx(centre, abs=0.35)
    assert world_centroid(label_out) == pytest.approx(world_centroid(label), abs=0.6)
    # both channels share one grid after preprocessing
    assert Grid.of(images[0]) == Grid.of(images[1]) == Grid.of(label_out)
    assert record["final_grid"]["spacing"] == [1.0, 1.0, 1.0]


def test_reorientation_is_lossless_permutation():
    image = blob_image(LPS, (0.5, 0.7, 3.0), (20, 16, 6), (0.0, 0.0, 0.0))
    grid = reoriented_grid(Grid.of(image), "RAS")
    assert grid.direction == RAS
    assert grid.spacing == (0.5, 0.7, 3.0)
    # the same world box: corners coincide as sets
    a = np.sort(Grid.of(image).corners(), axis=0)
    b = np.sort(grid.corners(), axis=0)
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_target_grid_keeps_physical_extent():
    image = blob_image(OBLIQUE, (0.5, 0.5, 3.0), (40, 40, 10), (0.0, 0.0, 0.0))
    grid = target_grid(image, (1.0, 1.0, 3.0))
    assert grid.size == (20, 20, 10)
    np.testing.assert_allclose(
        np.sort(grid.corners(), 0), np.sort(Grid.of(image).corners(), 0), atol=1e-6
    )


def test_crop_to_nonzero_keeps_world_positions():
    centre = np.array([0.0, 5.0, 10.0])
    image = blob_image(RAS, (1.0, 1.0, 1.0), (30, 30, 30), centre)
    arr = sitk.GetArrayFromImage(image)
    arr[:, :, :8] = 0  # a zero band, as resampling leaves outside a smaller field of view
    padded = sitk.GetImageFromArray(arr)
    padded.CopyInformation(image)
    images, _, record = preprocess_images([padded], None, plan_for(1, crop=True))
    assert images[0].GetSize() == (22, 30, 30)
    assert record["crop_start_xyz"] == [8, 0, 0]
    assert world_centroid(images[0], 100.0) == pytest.approx(
        world_centroid(padded, 100.0), abs=1e-3
    )


def test_nnunet_target_spacing_anisotropic_rule():
    spacings = np.array([[0.5, 0.5, 3.0]] * 6 + [[0.5, 0.5, 4.0]] * 5)
    sizes = np.array([[300, 300, 20]] * 11)
    np.testing.assert_allclose(nnunet_target_spacing(spacings, sizes), [0.5, 0.5, 3.0])
    # median of z would be 3.0 here too; make the median 4.0 to see the 10th percentile win
    spacings = np.array([[0.5, 0.5, 3.0]] * 3 + [[0.5, 0.5, 4.0]] * 8)
    np.testing.assert_allclose(nnunet_target_spacing(spacings, sizes), [0.5, 0.5, 3.0])
    iso = np.array([[1.0, 1.0, 1.2]] * 5)
    np.testing.assert_allclose(
        nnunet_target_spacing(iso, np.array([[100, 100, 80]] * 5)), [1.0, 1.0, 1.2]
    )


def test_normalization_schemes():
    rng = np.random.default_rng(0)
    arr = rng.normal(50, 10, (4, 8, 8)).astype(np.float32)
    arr[0] = 0
    z, stats = normalize(arr, "zscore")
    assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-4)
    assert stats["mean"] == pytest.approx(arr.mean(), rel=1e-5)
    nz, _ = normalize(arr, "zscore-nonzero")
    assert np.all(nz[0] == 0)
    assert nz[1:].mean() == pytest.approx(0, abs=1e-4)
    p, _ = normalize(arr, "percentile", (1, 99))
    assert p.min() == 0.0 and p.max() == 1.0
    same, _ = normalize(arr, "none")
    np.testing.assert_array_equal(same, arr)
    with pytest.raises(ValueError, match="choose from zscore, zscore-nonzero, percentile, none"):
        normalize(arr, "minmax")


@pytest.mark.parametrize("nonzero", [True, False])
@pytest.mark.parametrize("kind", ["mixed", "all-zero", "constant", "integers"])
def test_zscore_is_monais_normalize_intensity(kind, nonzero):
    """adseg's numpy z-score gives MONAI's NormalizeIntensity, edge cases included."""
    import torch
    from monai.transforms import NormalizeIntensity

    rng = np.random.default_rng(0)
    arr = {
        "mixed": rng.normal(300, 80, (6, 20, 20)) * (rng.random((6, 20, 20)) > 0.3),
        "all-zero": np.zeros((3, 4, 5)),
        "constant": np.full((3, 4, 5), 7.0),
        "integers": rng.integers(0, 4000, (6, 20, 20)),
    }[kind]
    expected = NormalizeIntensity(nonzero=nonzero)(torch.from_numpy(arr.astype(np.float32)))
    got = zscore(arr, nonzero)
    assert got.dtype == np.float32 and got.shape == arr.shape
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-5)
    if nonzero:
        assert np.all(got[arr == 0] == 0)


def test_make_plan_rejects_unknown_channels():
    settings = {
        "reference_channel": "T2w",
        "orientation": "RAS",
        "normalization": {"default": "zscore", "channels": {"ADC": "none"}, "percentiles": [1, 99]},
        "crop_to_nonzero": True,
        "n4_channels": [],
    }
    plan = make_plan(settings, ["T2w", "ADC"], {"background": 0}, [1, 1, 3])
    assert plan.normalization == ["zscore", "none"]
    assert Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="channel 'DWI' unknown; channels: T2w, ADC"):
        make_plan({**settings, "n4_channels": ["DWI"]}, ["T2w", "ADC"], {}, [1, 1, 3])
    with pytest.raises(ValueError, match="out of range"):
        channel_index(3, ["T2w", "ADC"])


def test_n4_reduces_a_bias_field():
    image = blob_image(LPS, (1.0, 1.0, 2.0), (40, 40, 8), (0.0, 0.0, 0.0), radius_mm=30)
    arr = sitk.GetArrayFromImage(image)
    ramp = np.linspace(0.6, 1.4, arr.shape[2])[None, None, :]
    biased = sitk.GetImageFromArray((arr * ramp).astype(np.float32))
    biased.CopyInformation(image)
    plan = plan_for(1)
    plan.n4_channels = ["c0"]
    (corrected,), _, _ = preprocess_images([biased], None, plan)
    (plain,), _, _ = preprocess_images([biased], None, plan_for(1))

    def left_right_ratio(img):
        a = sitk.GetArrayFromImage(img)
        return a[:, :, :10].mean() / a[:, :, -10:].mean()

    # the ramp makes one side darker; N4 should bring the ratio closer to 1
    assert abs(np.log(left_right_ratio(corrected))) < abs(np.log(left_right_ratio(plain)))
