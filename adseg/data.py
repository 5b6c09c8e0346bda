"""Training data from a preprocessed folder: MONAI dictionaries, transforms and loaders.

A case is ``{"image": [channel files], "label": file, "case_id": ...}``. Loading and padding
are cached once per job (MONAI ``CacheDataset``); the random part (patch sampling, flips,
intensity jitter) runs every epoch.

For 2-D training the patches are one voxel thick across the *slice axis* (the coarsest axis
of the preprocessed grid, usually z) and the singleton axis is squeezed away, so a 2-D
network sees in-plane slices, as Kohl et al. 2017 trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
    SqueezeDimd,
)

from adseg.io import read_json

# where the cached part keeps each case's lesion / background voxel indices for the crop
FG_INDICES, BG_INDICES = "label_fg_indices", "label_bg_indices"


def slice_axis(spacing: Sequence[float]) -> int:
    """Index (x=0, y=1, z=2) of the coarsest axis; the last one on ties."""
    spacing = list(spacing)
    return max(range(len(spacing)), key=lambda i: (spacing[i], i))


def case_items(preprocessed: Path, case_ids: Sequence[str]) -> list[dict]:
    """MONAI data dictionaries of the given preprocessed cases.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    dataset = read_json(preprocessed / "dataset.json")
    n_channels = len(dataset["channel_names"])
    items = []
    for case_id in case_ids:
        images = [
            preprocessed / "imagesTr" / f"{case_id}_{c:04d}.nii.gz" for c in range(n_channels)
        ]
        label = preprocessed / "labelsTr" / f"{case_id}.nii.gz"
        for path in [*images, label]:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing from the preprocessed folder")
        items.append({"image": [str(p) for p in images], "label": str(label), "case_id": case_id})
    return items


def patch_shape(patch_size: Sequence[int], spatial_dims: int, axis: int) -> list[int]:
    """The 3-D crop size for a 2-D patch (a singleton at ``axis``) or the 3-D patch itself."""
    if len(patch_size) != spatial_dims:
        raise ValueError(
            f"train.patch_size {list(patch_size)} has {len(patch_size)} sizes; "
            f"network.spatial_dims is {spatial_dims}"
        )
    if spatial_dims == 3:
        return list(patch_size)
    shape = list(patch_size)
    shape.insert(axis, 1)
    return shape


def load_transforms(pad_to: Sequence[int]) -> Compose:
    """Deterministic part (cached): load channels as ``(C, X, Y, Z)``, pad to the patch."""
    return Compose(
        [
            LoadImaged(keys=["image", "label"], image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            EnsureTyped(keys=["image", "label"], dtype=np.float32, track_meta=False),
            SpatialPadd(keys=["image", "label"], spatial_size=list(pad_to)),
        ]
    )


def crop_indices() -> list:
    """Deterministic, cached: the label's foreground and background voxel indices.

    The foreground-balanced crop would otherwise search the whole label for them at every
    draw (most of a batch's loading time, bench/run.py --only data). int32 halves their
    memory (4 bytes a voxel); a case has far fewer than 2**31 voxels.
    """
    return [
        FgBgToIndicesd(keys="label"),
        CastToTyped(keys=[FG_INDICES, BG_INDICES], dtype=np.int32),
    ]


def random_transforms(
    crop: Sequence[int], samples: int, pos_fraction: float, squeeze_axis: int | None
) -> Compose:
    """Random part: foreground-balanced patches (centred on the indices of
    :func:`crop_indices`), left-right flips, intensity jitter."""
    steps = [
        RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=list(crop),
            pos=pos_fraction,
            neg=1.0 - pos_fraction,
            num_samples=samples,
            fg_indices_key=FG_INDICES,
            bg_indices_key=BG_INDICES,
            allow_smaller=False,
        ),
        # RAS x is left-right: a mirrored prostate is still a prostate
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]
    if squeeze_axis is not None:
        steps.append(SqueezeDimd(keys=["image", "label"], dim=squeeze_axis + 1))
    return Compose(steps)


def training_loader(
    items: list[dict],
    patch_size: Sequence[int],
    spatial_dims: int,
    axis: int,
    batch_size: int,
    samples: int,
    pos_fraction: float,
    workers: int = 0,
    show_progress: bool = False,
    background: bool = False,
) -> tuple[DataLoader, Compose]:
    """A shuffling loader of training patches and its random transforms (to seed per epoch).

    ``workers`` > 0 draws batches in that many processes;
    ``background`` draws the next batch in a thread while the current one trains (for CUDA).

    Batches are ``{"image": (B, C, *patch), "label": (B, 1, *patch)}``.
    """
    crop = patch_shape(patch_size, spatial_dims, axis)
    # `pos_fraction` 0 or 1 would make MONAI divide by zero; keep a sliver of the other kind
    pos = min(max(pos_fraction, 1e-3), 1 - 1e-3)
    # cases without a lesion give only background patches; MONAI warns about each one
    warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
    randomize = random_transforms(crop, samples, pos, axis if spatial_dims == 2 else None)
    dataset = CacheDataset(
        items,
        # one flat chain: CacheDataset caches up to the first random transform, and a nested
        # Compose would count as random and disable the cache
        transform=Compose(
            [*load_transforms(crop).transforms, *crop_indices(), *randomize.transforms]
        ),
        # one thread: MONAI's image readers are not safe to share across loading threads
        num_workers=1,
        # no copy of the whole cached case per draw (a third of the loading time): the random
        # transforms make new tensors and never write into the cached ones
        # (tests/test_data.py checks)
        copy_cache=False,
        progress=show_progress,
    )
    # With `background`, the next batch is drawn in a thread while the network computes
    # (MONAI's advice for cached data on a GPU). On a CPU that thread only competes with the
    # network's own threads: 56 ms a batch against 48 ms inline (bench/RESULTS.md).
    loader = (ThreadDataLoader if background else DataLoader)(
        dataset,
        batch_size=max(1, batch_size // samples),
        shuffle=True,
        # workers are forked anew each epoch, so they take the epoch's reseeded transforms
        num_workers=workers,
    )
    return loader, randomize


def validation_dataset(items: list[dict]) -> CacheDataset:
    """Whole cases, loaded once: ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)}``."""
    return CacheDataset(items, transform=load_transforms([1, 1, 1]), progress=False)
