"""Training data: cases opened from their arrays draw the patches MONAI's chain draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    SpatialPadd,
    ToNumpyd,
)

from adseg.preprocessing import store
from adseg.training.loader import (
    BG_INDICES,
    FG_INDICES,
    CasePatches,
    CaseVolumes,
    OpenCase,
    collate_patches,
    random_transforms,
)


def _stored(tmp_path, shape=(40, 40, 12)) -> tuple[dict, dict]:
    """A case written to the store, as its loader item and as MONAI's tensors (X, Y, Z)."""
    rng = np.random.default_rng(0)
    image = rng.random((3, *shape), dtype=np.float32)
    label = np.zeros((1, *shape), np.uint8)
    x, y, z = (s // 4 for s in shape)
    label[0, x : 2 * x + 1, y : 2 * y + 1, z : 2 * z + 1] = 1
    # the store takes SimpleITK's (Z, Y, X) arrays
    store.write_case(tmp_path, "c", list(image.transpose(0, 3, 2, 1)), label[0].transpose())
    item = {"case_id": "c", "preprocessed": str(tmp_path)}
    return item, {"image": torch.from_numpy(image), "label": torch.from_numpy(label).float()}


@pytest.mark.parametrize(
    ("shape", "crop"),
    [((40, 40, 12), [16, 16, 1]), ((12, 40, 6), [16, 16, 8]), ((9, 7, 3), [16, 16, 1])],
)
def test_opened_cases_draw_the_patches_monai_draws_from_the_nifti_files(tmp_path, shape, crop):
    """Opened from the store, a case gives the patches, flips and jitters MONAI's chain gives
    after SpatialPadd and FgBgToIndicesd, bit for bit: also a case smaller than the patch,
    whose padding is never made but filled in where a patch reaches it."""
    item, case = _stored(tmp_path, shape)
    opened = OpenCase(crop)(item)
    indexed = Compose(
        [
            SpatialPadd(keys=["image", "label"], spatial_size=crop),
            FgBgToIndicesd(keys="label"),
            ToNumpyd(keys=[FG_INDICES, BG_INDICES]),
        ]
    )(case)
    assert np.array_equal(opened[FG_INDICES], indexed[FG_INDICES])
    background = opened[BG_INDICES]
    assert len(background) == len(indexed[BG_INDICES])
    picks = np.random.default_rng(0).integers(0, len(background), 200)
    assert [background[k] for k in picks] == indexed[BG_INDICES][picks].tolist()

    squeeze = 2 if crop[2] == 1 else None
    reference = random_transforms(crop, samples=4, pos_fraction=0.5, squeeze_axis=squeeze)
    patches = CasePatches(
        random_transforms(crop, samples=4, pos_fraction=0.5, squeeze_axis=squeeze)
    )
    for seed in range(8):
        reference.set_random_state(seed)
        patches.set_random_state(seed)
        expected = list_data_collate([reference(dict(indexed))])
        got = collate_patches([patches(OpenCase(crop)(item))])
        assert torch.equal(got["image"], expected["image"])
        assert torch.equal(got["label"], expected["label"])


def test_patches_never_write_into_the_stored_case(tmp_path):
    """The opened arrays are read-only maps of the files: a batch is always a copy, and
    whatever a training step does to it in place leaves the files as they were."""
    item, case = _stored(tmp_path)
    before = {k: np.array(v) for k, v in store.open_case(tmp_path, "c").items()}
    open_case, patches = (
        OpenCase([16, 16, 1]),
        CasePatches(random_transforms([16, 16, 1], 4, 0.5, 2)),
    )
    for seed in range(20):  # every flip and intensity branch is taken
        patches.set_random_state(seed)
        batch = collate_patches([patches(open_case(item))])
        batch["image"].mul_(0)
        batch["label"].add_(1)
    after = store.open_case(tmp_path, "c")
    for key, value in before.items():
        assert np.array_equal(after[key], value), key


def test_case_volumes_are_read_when_asked_for(tmp_path):
    item, case = _stored(tmp_path)
    volumes = CaseVolumes([item, item])
    assert len(volumes) == 2
    got = volumes[1]
    assert got["case_id"] == "c" and got["image"].dtype == got["label"].dtype == torch.float32
    assert torch.equal(got["image"], case["image"]) and torch.equal(got["label"], case["label"])
    got["image"].mul_(0)  # a copy: the next read is the file's again
    assert torch.equal(volumes[0]["image"], case["image"])
    assert [v["case_id"] for v in volumes] == ["c", "c"]


def _cached_case(shape=(40, 40, 12), lesion: bool = True) -> dict:
    label = torch.zeros(1, *shape)
    label[0, 10:15, 20:30, 3:6] = float(lesion)
    indexed = [FgBgToIndicesd(keys="label"), ToNumpyd(keys=[FG_INDICES, BG_INDICES])]
    return Compose(indexed)({"image": torch.rand(3, *shape), "label": label})


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


def test_a_folder_preprocessed_without_arrays_stops_before_training(tmp_path):
    """A folder an older adseg preprocessed has the NIfTI files but no arrays: the job's
    cases are refused when listed, naming the file, before any network is built."""
    from adseg.io import write_json
    from adseg.training.loader import case_items

    write_json(tmp_path / "dataset.json", {"channel_names": {"0": "T2w"}})
    for path in (tmp_path / "imagesTr" / "c_0000.nii.gz", tmp_path / "labelsTr" / "c.nii.gz"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    with pytest.raises(store.StoreError, match=r"arrays/c_image\.npy: missing.*adseg preprocess"):
        case_items(tmp_path, ["c"])
    store.write_case(tmp_path, "c", [np.zeros((2, 2, 2))], np.zeros((2, 2, 2), np.uint8))
    assert case_items(tmp_path, ["c"])[0]["preprocessed"] == str(tmp_path)
