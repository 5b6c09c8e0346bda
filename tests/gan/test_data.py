"""Slices of a preprocessed cohort for the GANs: scaling, cropping, pairing, reseeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adseg.gan.data import (
    channel_indices,
    intensity_ranges,
    load_volumes,
    pad_in_plane,
    paired_slices,
    scale,
    slices,
    synthesis_slices,
    translation_loader,
    unscale,
)


def test_scale_maps_the_range_to_unit_interval_and_clips():
    x = np.array([-5.0, 0.0, 5.0, 10.0, 20.0])
    y = scale(x, 0.0, 10.0)
    assert y.tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    assert np.allclose(unscale(y[1:4], 0.0, 10.0), [0.0, 5.0, 10.0])


def test_intensity_ranges_per_channel_and_constant_channel_refused():
    rng = np.random.default_rng(0)
    a = np.stack([rng.uniform(0, 1, (4, 4, 4)), rng.uniform(10, 20, (4, 4, 4))])
    (lo0, hi0), (lo1, hi1) = intensity_ranges([a, a], [0, 100])
    assert (lo0, hi0) == (a[0].min(), a[0].max()) and (lo1, hi1) == (a[1].min(), a[1].max())
    with pytest.raises(ValueError, match="channel 0 is constant"):
        intensity_ranges([np.ones((1, 2, 2, 2))], [1, 99])


def test_slices_run_across_the_chosen_axis():
    v = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert slices(v, 2).shape == (5, 2, 3, 4)
    assert slices(v, 0).shape == (3, 2, 4, 5)
    assert np.array_equal(slices(v, 2)[1], v[..., 1])


def test_synthesis_slices_are_cropped_or_padded_to_size_with_classes():
    big = np.full((1, 20, 12, 3), 5.0, np.float32)  # x larger, y smaller than 16
    images, labels = synthesis_slices(
        {"a": big, "b": big[..., :2]}, [[0.0, 10.0]], 2, 16, {"a": 0, "b": 1}
    )
    assert images.shape == (5, 1, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1]
    # the padding is the preprocessed background 0, scaled: -1 here; the image 5 -> 0
    assert images[0, 0, 8, 0].item() == -1.0 and images[0, 0, 8, 8].item() == 0.0


def test_pad_in_plane_pads_at_the_end_of_in_plane_axes_only():
    v = np.ones((1, 10, 30, 4), np.float32)
    out = pad_in_plane(v, [16, 16], axis=2, value=-1.0)
    assert out.shape == (1, 16, 30, 4)
    assert np.all(out[:, :10] == 1) and np.all(out[:, 10:] == -1)


def test_paired_slices_keep_source_and_target_aligned():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    items = paired_slices({"c": v}, [[-3, 3], [-3, 3]], 2, [8, 8])
    assert len(items) == 3 and items[0]["source"].shape == (1, 8, 8)
    assert np.allclose(items[2]["target"][0], scale(v[1, :, :, 2], -3, 3))


def test_translation_loader_reseeded_draws_repeat_and_crop_both_alike():
    rng = np.random.default_rng(2)
    items = [
        {"source": (s := rng.normal(size=(1, 20, 20)).astype(np.float32)), "target": 2 * s}
        for _ in range(10)
    ]
    loader, randomize, generator = translation_loader(items, [8, 8], 4, 12)

    def epoch(seed):
        generator.manual_seed(seed)
        randomize.set_random_state(seed=seed)
        batches = list(loader)
        return [b["source"] for b in batches], [b["target"] for b in batches]

    first, again, other = epoch(3), epoch(3), epoch(4)
    assert len(first[0]) == 3 and first[0][0].shape == (4, 1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first[0], other[0], strict=True))
    assert type(first[0][0]) is torch.Tensor  # no MetaTensor overhead in the networks
    # the same crop and flip for source and target
    assert torch.allclose(first[1][0], 2 * first[0][0])


def test_cohort_channels_and_volumes(tiny_experiment):
    pre = tiny_experiment["preprocessed"]
    assert channel_indices(pre, ["ADC", "T2w"]) == [1, 0]
    with pytest.raises(ValueError, match="channel 'FLAIR' unknown; channels: T2w, ADC, DWI"):
        channel_indices(pre, ["FLAIR"])
    ids = sorted(p.name.split(".")[0] for p in (pre / "labelsTr").glob("*.nii.gz"))[:2]
    volumes = load_volumes(pre, ids, [1])
    assert list(volumes) == ids and volumes[ids[0]].shape[0] == 1
    assert volumes[ids[0]].dtype == np.float32
