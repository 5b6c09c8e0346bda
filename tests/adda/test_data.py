"""What ADDA reads of its cases: the image arrays, as MONAI read the NIfTI files."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged

from adseg.adda.data import image_items, load_images


def test_images_are_read_from_the_arrays_as_monai_read_the_nifti_files(tiny_experiment):
    pre = tiny_experiment["preprocessed"]
    ids = sorted(p.name[: -len(".nii.gz")] for p in (pre / "labelsTr").glob("*.nii.gz"))[:3]
    before = Compose(  # the chain ADDA cached from the NIfTI files until the arrays
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys="image", dtype=np.float32, track_meta=False),
        ]
    )
    for item in image_items(pre, ids):
        assert "label" not in item
        got, expected = load_images()(dict(item)), before(dict(item))
        assert sorted(got) == ["case_id", "image", "preprocessed"]  # no label comes along
        assert got["image"].dtype == torch.float32 and got["image"].is_contiguous()
        assert torch.equal(got["image"], expected["image"])
        got["image"].mul_(0)  # a copy: the array on disk is untouched
        assert torch.equal(load_images()(dict(item))["image"], expected["image"])
