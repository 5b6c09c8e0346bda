"""Training data: the cached crop indices change nothing but the speed."""

from __future__ import annotations

import torch
from monai.data import list_data_collate
from monai.transforms import Compose, RandCropByPosNegLabeld

from adseg.data import BG_INDICES, FG_INDICES, crop_indices, random_transforms


def test_cached_crop_indices_draw_the_same_patches_as_searching_the_label():
    label = torch.zeros(1, 40, 40, 12)
    label[0, 10:15, 20:30, 3:6] = 1
    case = {"image": torch.rand(3, 40, 40, 12), "label": label}
    cached = Compose(crop_indices())(dict(case))
    assert cached[FG_INDICES].dtype == torch.int32
    assert len(cached[FG_INDICES]) == 5 * 10 * 3
    assert len(cached[FG_INDICES]) + len(cached[BG_INDICES]) == label.numel()

    searching = RandCropByPosNegLabeld(
        keys=["image", "label"],
        label_key="label",
        spatial_size=[16, 16, 1],
        pos=0.5,
        neg=0.5,
        num_samples=4,
    )
    # adseg's chain also flips and jitters: compare its crop, the first transform
    crop = random_transforms([16, 16, 1], samples=4, pos_fraction=0.5, squeeze_axis=2).transforms[0]
    for seed in range(5):
        searching.set_random_state(seed)
        crop.set_random_state(seed)
        expected = searching(dict(case))
        drawn = crop(dict(cached))
        for a, b in zip(expected, drawn, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
            assert sorted(b) == ["image", "label"]  # the indices do not reach the batch


def test_random_transforms_never_write_into_the_cached_case():
    """What lets the training cache skip its per-draw copy (``copy_cache=False``): neither
    the random transforms nor anything done to a batch reach the cached tensors."""
    label = torch.zeros(1, 40, 40, 12)
    label[0, 10:15, 20:30, 3:6] = 1
    cached = Compose(crop_indices())({"image": torch.rand(3, 40, 40, 12), "label": label})
    before = {k: v.clone() for k, v in cached.items()}
    randomize = random_transforms([16, 16, 1], samples=4, pos_fraction=0.5, squeeze_axis=2)
    for seed in range(20):  # every flip and intensity branch is taken
        randomize.set_random_state(seed)
        # a patch may be a view of the case; the loader's collation copies it into the batch
        batch = list_data_collate([randomize(cached)])
        batch["image"].mul_(0)  # as a training step might: in place, on the batch
    assert sorted(cached) == sorted(before)
    for key, value in before.items():
        assert torch.equal(cached[key], value), key
