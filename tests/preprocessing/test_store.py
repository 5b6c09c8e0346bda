"""The preprocessed cases' arrays: what MONAI reads from the NIfTI files, read in parts."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose, EnsureChannelFirstd, FgBgToIndicesd, LoadImaged

from adseg.io import write_image
from adseg.preprocessing import store


@pytest.mark.parametrize("fg", [[], [0], [9], [0, 1, 2], [3, 4, 7], list(range(10)), [1, 5, 6, 8]])
def test_complement_lists_what_the_foreground_lacks(fg):
    complement = store.Complement(np.array(fg, dtype=np.int32), 10)
    expected = np.setdiff1d(np.arange(10), fg)
    assert len(complement) == len(expected)
    assert [complement[k] for k in range(len(complement))] == expected.tolist()
    if len(expected):
        assert complement[-1] == expected[-1]
    with pytest.raises(IndexError):
        complement[len(expected)]


def test_complement_of_a_large_random_foreground():
    rng = np.random.default_rng(0)
    n = 200_000
    fg = np.sort(rng.choice(n, 5_000, replace=False))
    complement = store.Complement(fg, n)
    expected = np.setdiff1d(np.arange(n), fg)
    picks = rng.integers(0, len(expected), 2_000)
    assert [complement[k] for k in picks] == expected[picks].tolist()


def _mapped(array: np.ndarray) -> bool:
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, memoryview) and isinstance(array.obj, mmap.mmap)


def _sitk(array: np.ndarray, pixel) -> sitk.Image:
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetOrigin((-10.0, 4.0, 2.5))
    return image


def test_arrays_hold_what_monai_reads_from_the_nifti_files(tmp_path):
    """The arrays are SimpleITK's (C, Z, Y, X); opened, they are MONAI's (C, X, Y, Z) of the
    NIfTI files written from the same images, and the indices FgBgToIndicesd's."""
    rng = np.random.default_rng(1)
    channels = [rng.normal(size=(5, 12, 9)).astype(np.float32) for _ in range(2)]
    label = np.zeros((5, 12, 9), np.uint8)
    label[1:3, 4:8, 2:5] = 1
    label[4, 0, 0] = 2
    files = []
    for c, array in enumerate(channels):
        files.append(tmp_path / f"case_{c:04d}.nii.gz")
        write_image(_sitk(array, sitk.sitkFloat32), files[-1])
    write_image(_sitk(label, sitk.sitkUInt8), tmp_path / "case.nii.gz")
    store.write_case(tmp_path, "case", channels, label)

    monai = Compose(
        [
            LoadImaged(keys=["image", "label"], image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            FgBgToIndicesd(keys="label"),
        ]
    )({"image": [str(f) for f in files], "label": str(tmp_path / "case.nii.gz")})
    case = store.open_case(tmp_path, "case")
    assert _mapped(case["image"])  # read in parts, not loaded
    assert case["image"].shape == tuple(monai["image"].shape) == (2, 9, 12, 5)
    assert np.array_equal(case["image"], np.asarray(monai["image"]))
    assert np.array_equal(case["label"], np.asarray(monai["label"]))
    assert np.array_equal(case["fg"], np.asarray(monai["label_fg_indices"]))
    background = store.Complement(case["fg"], label.size)
    assert [background[k] for k in range(len(background))] == list(monai["label_bg_indices"])
    in_memory = store.open_case(tmp_path, "case", in_memory=True)
    assert not _mapped(in_memory["image"])
    assert np.array_equal(in_memory["image"], case["image"])


def test_a_case_without_label_has_only_its_image(tmp_path):
    store.write_case(tmp_path, "x", [np.ones((2, 3, 4))], None)
    case = store.open_case(tmp_path, "x")
    assert sorted(case) == ["image"] and case["image"].dtype == np.float32
    assert case["image"].shape == (1, 4, 3, 2)


def test_labels_beyond_uint8_are_refused(tmp_path):
    with pytest.raises(ValueError, match="0-255"):
        store.write_case(tmp_path, "x", [np.ones((2, 2, 2))], np.full((2, 2, 2), 300))


def test_a_rewritten_file_is_read_anew(tmp_path):
    """The header cache is keyed by the file's version: a case preprocessed again with
    another shape is read with its new shape in the same process."""
    store.write_case(tmp_path, "x", [np.ones((2, 3, 4))], None)
    assert store.open_case(tmp_path, "x")["image"].shape == (1, 4, 3, 2)
    store.write_case(tmp_path, "x", [np.zeros((5, 3, 4)), np.zeros((5, 3, 4))], None)
    assert store.open_case(tmp_path, "x")["image"].shape == (2, 4, 3, 5)


def test_a_folder_without_arrays_says_to_preprocess_again(tmp_path):
    with pytest.raises(store.StoreError, match=r"case_image\.npy: missing.*Preprocess it again"):
        store.open_case(tmp_path, "case")


def test_opened_arrays_are_read_only(tmp_path):
    store.write_case(tmp_path, "x", [np.ones((2, 3, 4))], np.zeros((2, 3, 4), np.uint8))
    case = store.open_case(tmp_path, "x")
    with pytest.raises(ValueError, match="read-only"):
        case["image"][0, 0, 0, 0] = 2
    assert torch.from_numpy(np.array(case["image"])).sum() == 24


def test_a_label_without_its_foreground_indices_is_named(tmp_path):
    store.write_case(tmp_path, "x", [np.ones((2, 3, 4))], np.zeros((2, 3, 4), np.uint8))
    store.array_paths(tmp_path, "x")["fg"].unlink()
    with pytest.raises(store.StoreError, match=r"x_fg\.npy: missing"):
        store.open_case(tmp_path, "x")
    assert store.case_files(tmp_path, "x") == [
        tmp_path / "arrays" / "x_image.npy",
        tmp_path / "arrays" / "x_label.npy",
    ]
