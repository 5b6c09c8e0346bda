"""Whole-volume inference and the trip back to a scan's own grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from adseg.geometry import Grid
from adseg.inference.sliding import first_argmax, make_inferer, predict_probabilities, to_grid
from adseg.preprocessing.case import Plan, preprocess_images

OBLIQUE_LPS = tuple(
    np.array(
        [[-np.cos(0.2), -np.sin(0.2), 0.0], [np.sin(0.2), -np.cos(0.2), 0.0], [0.0, 0.0, 1.0]]
    ).ravel()
)


def _case(direction):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100, 10, (6, 20, 16)).astype(np.float32))
    label_arr = np.zeros((6, 20, 16), np.uint8)
    label_arr[2:4, 5:11, 4:9] = 1
    label = sitk.GetImageFromArray(label_arr)
    for img in (image, label):
        img.SetSpacing((0.6, 0.5, 3.0))
        img.SetOrigin((12.0, -30.0, 4.0))
        img.SetDirection(direction)
    return image, label


def _plan(spacing):
    return Plan(
        channel_names=["T2w"],
        labels={"background": 0, "lesion": 1},
        reference_channel=0,
        orientation="RAS",
        target_spacing=list(spacing),
        normalization=["zscore"],
        crop_to_nonzero=True,
    )


def _one_hot(label_img: sitk.Image) -> torch.Tensor:
    arr = torch.from_numpy(sitk.GetArrayFromImage(label_img).transpose(2, 1, 0).astype(np.int64))
    return torch.nn.functional.one_hot(arr, 2).permute(3, 0, 1, 2).float()


def test_probabilities_return_exactly_to_an_oblique_lps_grid():
    image, label = _case(OBLIQUE_LPS)
    # same spacing: reorientation is a permutation and resampling hits voxel centres
    _, pre_label, record = preprocess_images([image], label, _plan((0.6, 0.5, 3.0)))
    pred, probs = to_grid(_one_hot(pre_label), Grid.from_dict(record["final_grid"]), Grid.of(label))
    assert pred.shape == sitk.GetArrayFromImage(label).shape
    np.testing.assert_array_equal(pred, sitk.GetArrayFromImage(label))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_coarser_preprocessing_still_finds_the_lesion_in_place():
    image, label = _case((1, 0, 0, 0, 1, 0, 0, 0, 1))
    _, pre_label, record = preprocess_images([image], label, _plan((1.2, 1.0, 3.0)))
    pred, _ = to_grid(_one_hot(pre_label), Grid.from_dict(record["final_grid"]), Grid.of(label))
    truth = sitk.GetArrayFromImage(label).astype(bool)
    overlap = 2 * np.sum(truth & (pred == 1)) / (truth.sum() + np.sum(pred == 1))
    assert overlap > 0.7


class _Threshold(nn.Module):
    """Logits (x0, 0): class 0 where the first channel is positive. Flip-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.cat([x[:, :1] * 10, torch.zeros_like(x[:, :1])], dim=1) + self.dummy


def test_slice_and_window_inference_shapes_and_tta():
    torch.manual_seed(0)
    image = torch.randn(2, 24, 20, 7)
    model = _Threshold()
    for dims, patch in ((2, [16, 16]), (3, [16, 16, 4])):
        inferer = make_inferer(dims, patch, axis=2, batch_size=4)
        probs = predict_probabilities([model], image, inferer, dims, axis=2)
        assert probs.shape == (2, 24, 20, 7)
        torch.testing.assert_close(probs.sum(0), torch.ones(24, 20, 7))
        torch.testing.assert_close(probs[0] > 0.5, image[0] > 0)
        tta = predict_probabilities([model, model], image, inferer, dims, axis=2, tta=True)
        torch.testing.assert_close(tta, probs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_first_argmax_is_numpys_argmax_ties_included(classes):
    rng = np.random.default_rng(classes)
    # values from a few levels, so that many voxels tie between classes
    maps = rng.integers(0, 3, (classes, 7, 6, 5)).astype(np.float32) / 2
    labels = first_argmax(maps)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, maps.argmax(axis=0))
