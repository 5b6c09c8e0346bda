"""Training data: the cached crop indices change nothing but the speed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

from adseg.training.loader import (
    BG_INDICES,
    FG_INDICES,
    CasePatches,
    collate_patches,
    crop_indices,
    random_transforms,
)


def test_cached_crop_indices_draw_the_same_patches_as_searching_the_label():
    label = torch.zeros(1, 40, 40, 12)
    label[0, 10:15, 20:30, 3:6] = 1
    case = {"image": torch.rand(3, 40, 40, 12), "label": label}
    cached = Compose(crop_indices())(dict(case))
    assert cached[FG_INDICES].dtype == np.int32
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
    before = {k: torch.as_tensor(v).clone() for k, v in cached.items()}
    randomize = random_transforms([16, 16, 1], samples=4, pos_fraction=0.5, squeeze_axis=2)
    patches = CasePatches(random_transforms([16, 16, 1], 4, 0.5, squeeze_axis=2))
    for seed in range(20):  # every flip and intensity branch is taken
        randomize.set_random_state(seed)
        patches.set_random_state(seed)
        # a patch may be a view of the case; the loader's collation copies it into the batch
        for batch in (list_data_collate([randomize(cached)]), collate_patches([patches(cached)])):
            batch["image"].mul_(0)  # as a training step might: in place, on the batch
            batch["label"].add_(1)
    assert sorted(cached) == sorted(before)
    for key, value in before.items():
        assert torch.equal(torch.as_tensor(cached[key]), value), key


def _cached_case(shape=(40, 40, 12), lesion: bool = True) -> dict:
    label = torch.zeros(1, *shape)
    label[0, 10:15, 20:30, 3:6] = float(lesion)
    return Compose(crop_indices())({"image": torch.rand(3, *shape), "label": label})


@pytest.mark.parametrize(
    ("crop", "squeeze_axis", "lesion"),
    [
        ([16, 16, 1], 2, True),
        ([1, 16, 8], 0, True),
        ([16, 16, 8], None, True),
        ([16, 16, 1], 2, False),
    ],
)
@pytest.mark.filterwarnings("ignore:Num foregrounds 0")  # MONAI's, for the lesion-free case
def test_case_patches_draw_exactly_what_monais_chain_draws(crop, squeeze_axis, lesion):
    """The batched transform the loader uses gives the patches, flips and intensity factors
    of MONAI's dictionary chain, bit for bit, for the same seed: so the switch to it changed
    no training result at the default ``train.workers: 0`` (loading processes are seeded by
    MONAI through the outer chain, so their draws, still reproducible, moved)."""
    cached = _cached_case(lesion=lesion)
    reference = random_transforms(crop, samples=4, pos_fraction=0.5, squeeze_axis=squeeze_axis)
    chain = random_transforms(crop, samples=4, pos_fraction=0.5, squeeze_axis=squeeze_axis)
    patches = CasePatches(chain)
    flips = 0
    for seed in range(12):  # every flip and jitter branch is taken
        reference.set_random_state(seed)
        patches.set_random_state(seed)
        for _ in range(3):  # and the states go on alike from draw to draw
            expected = list_data_collate([reference(dict(cached)), reference(dict(cached))])
            got = collate_patches([patches(dict(cached)), patches(dict(cached))])
            assert got["image"].shape == expected["image"].shape
            assert got["image"].shape[0] == 8
            assert torch.equal(got["image"], expected["image"])
            assert torch.equal(got["label"], expected["label"])
            flips += reference.transforms[1]._do_transform
    assert flips > 0


@pytest.mark.parametrize("axis", [-1, (0, 2), None])
def test_case_patches_flip_the_axes_monai_would(axis):
    """The flip's axes, negative, several or all, are mapped as MONAI maps them."""

    def chain() -> Compose:  # each its own transforms, and so its own random states
        crop, _, scale, shift = random_transforms([8, 8, 4], 4, 0.5, None).transforms
        flip = RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=axis)
        return Compose([crop, flip, scale, shift]).set_random_state(3)

    cached = _cached_case()
    reference, patches = chain(), CasePatches(chain())
    expected = list_data_collate([reference(dict(cached))])
    got = collate_patches([patches(dict(cached))])
    assert torch.equal(got["image"], expected["image"])
    assert torch.equal(got["label"], expected["label"])


def test_case_patches_refuse_another_chain():
    chain = Compose([RandCropByPosNegLabeld(keys="label", label_key="label", spatial_size=[4])])
    with pytest.raises(TypeError, match="not the chain"):
        CasePatches(chain)
    # a step after the chain's would be skipped silently
    longer = random_transforms([8, 8, 1], 4, 0.5, squeeze_axis=2).transforms
    with pytest.raises(TypeError, match="not the chain"):
        CasePatches(Compose([*longer, RandFlipd(keys="image", prob=0.5)]))
