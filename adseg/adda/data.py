"""What ADDA reads of its cases: images only, so no transform can reach a target label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandFlipd,
    RandSpatialCropSamplesd,
    SpatialPadd,
    SqueezeDimd,
)

from adseg.adda.job import AddaJob
from adseg.training.loader import case_items, patch_shape


def image_items(preprocessed: Path, case_ids: list[str]) -> list[dict]:
    """Data dictionaries without the label: what ADDA reads of its cases."""
    return [
        {"image": item["image"], "case_id": item["case_id"]}
        for item in case_items(preprocessed, case_ids)
    ]


def image_loader(
    items: list[dict],
    patch_size: list[int],
    spatial_dims: int,
    axis: int,
    batch_size: int,
    samples: int,
) -> tuple[DataLoader, Compose]:
    """A shuffling loader of random image patches (no label, so no label-guided crops: source
    and target patches are drawn alike), and its random transforms to seed per epoch."""
    crop = patch_shape(patch_size, spatial_dims, axis)
    steps = [
        RandSpatialCropSamplesd(
            keys="image", roi_size=crop, num_samples=samples, random_size=False
        ),
        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
    ]
    if spatial_dims == 2:
        steps.append(SqueezeDimd(keys="image", dim=axis + 1))
    randomize = Compose(steps)
    load = [*load_images().transforms, SpatialPadd(keys="image", spatial_size=crop)]
    dataset = CacheDataset(
        items,
        transform=Compose([*load, *randomize.transforms]),
        num_workers=1,
        copy_cache=False,
        progress=False,
    )
    loader = DataLoader(dataset, batch_size=max(1, batch_size // samples), shuffle=True)
    return loader, randomize


def load_images() -> Compose:
    return Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys="image", dtype=np.float32, track_meta=False),
        ]
    )


def endless(loader):
    while True:
        yield from loader


def image_dataset(job: AddaJob, case_ids: list[str]) -> CacheDataset:
    """Whole cases, images only: ``{"image": (C, X, Y, Z), "case_id": ...}``."""
    return CacheDataset(
        image_items(job.preprocessed, case_ids), transform=load_images(), progress=False
    )
