"""What ADDA reads of its cases: images only, so no transform can reach a target label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandFlipd,
    RandSpatialCropSamplesd,
    SpatialPadd,
    SqueezeDimd,
)

from adseg.adda.job import AddaJob
from adseg.preprocessing import store
from adseg.training.loader import case_items, patch_shape


def image_items(preprocessed: Path, case_ids: list[str]) -> list[dict]:
    """Data dictionaries without the label: what ADDA reads of its cases."""
    return [
        {"image": item["image"], "case_id": item["case_id"], "preprocessed": item["preprocessed"]}
        for item in case_items(preprocessed, case_ids)
    ]


class OpenImage:
    """A case's image ``(C, X, Y, Z)`` from its array (:mod:`adseg.preprocessing.store`), a
    read-only map of the file: what MONAI's ``LoadImaged`` reads from its NIfTI files. Only
    the image file is opened; no label can come along."""

    def __call__(self, item: dict) -> dict:
        return {**item, "image": store.read_image(item["preprocessed"], item["case_id"])}


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
    # each draw reads its case anew (memory bounded by one case, not the cohort)
    dataset = Dataset(items, transform=Compose([*load, *randomize.transforms]))
    loader = DataLoader(dataset, batch_size=max(1, batch_size // samples), shuffle=True)
    return loader, randomize


def load_images() -> Compose:
    """A case's image as a float32 tensor ``(C, X, Y, Z)``, a copy of its array."""
    return Compose([OpenImage(), EnsureTyped(keys="image", dtype=np.float32, track_meta=False)])


def endless(loader):
    while True:
        yield from loader


def image_dataset(job: AddaJob, case_ids: list[str]) -> Dataset:
    """Whole cases, images only, each read when asked for:
    ``{"image": (C, X, Y, Z), "case_id": ...}``."""
    return Dataset(image_items(job.preprocessed, case_ids), transform=load_images())
