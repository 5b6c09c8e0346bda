"""Training data from a preprocessed folder: MONAI dictionaries, transforms and loaders.

A case is ``{"image": [channel files], "label": file, "case_id": ...}``. Loading and padding
are cached once per job (MONAI ``CacheDataset``); the random part (patch sampling, flips,
intensity jitter) runs every epoch.

For 2-D training the patches are one voxel thick across the *slice axis* (the coarsest axis
of the preprocessed grid, usually z) and the singleton axis is squeezed away, so a 2-D
network sees in-plane slices, as Kohl et al. 2017 trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    RandCropByPosNegLabeld,
    RandFlipd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
    SqueezeDimd,
    ToNumpyd,
)
from monai.transforms.utils import map_spatial_axes

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
        ToNumpyd(keys=[FG_INDICES, BG_INDICES], dtype=np.int32),
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


class CasePatches(Randomizable):
    """The random part of :func:`random_transforms`, a case's patches drawn as one array.

    MONAI's chain makes a dictionary per patch and sends each through the flip and the two
    intensity jitters, then the loader collates them: about 0.5 ms of bookkeeping a patch,
    a quarter of a CPU training step (bench/run.py --only data). This transform asks the
    chain's own transforms for their random draws (``randomize``, so the same seed draws the
    same patches, flips and factors; tests/training/test_loader.py compares them to the chain), then
    cuts the patches by MONAI's slice rule and applies the draws to one stacked array.

    Returns numpy arrays ``{"image": (S, C, *patch), "label": (S, 1, *patch)}`` for a case;
    :func:`collate_patches` joins them into a batch of tensors.

    Seeding this transform seeds the chain, so in one process it draws what the chain would.
    In loading processes MONAI seeds it with one seed from the loader's outer chain, where it
    used to seed the chain's four transforms one by one: reproducible draws, but not the same.
    """

    def __init__(self, chain: Compose) -> None:
        kinds = (RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd, RandShiftIntensityd)
        steps = list(chain.transforms)
        if (
            len(steps) not in (len(kinds), len(kinds) + 1)
            or not all(map(isinstance, steps, kinds))
            or not all(isinstance(s, SqueezeDimd) for s in steps[len(kinds) :])
        ):
            raise TypeError(f"not the chain of random_transforms: {steps}")
        crop, flip, scale, shift, *squeeze = steps
        self.chain = chain
        self.crop, self.flip, self.scale, self.shift = crop, flip, scale, shift
        # SqueezeDimd's dim counts the channel; a stacked patch has the sample axis first too
        self.squeeze = squeeze[0].converter.dim + 1 if squeeze else None
        self.size = list(crop.cropper.spatial_size)
        # a patch is flipped as cut, (C, X, Y, Z): MONAI's own mapping of its spatial axes
        self.flip_dims = map_spatial_axes(len(self.size) + 1, flip.flipper.spatial_axis)

    def set_random_state(self, seed=None, state=None) -> CasePatches:
        self.chain.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:  # the draws are the chain's, made in __call__
        raise NotImplementedError("CasePatches draws through its chain's transforms")

    def _corners(self, fg: np.ndarray, bg: np.ndarray, shape: Sequence[int]) -> list[list[int]]:
        """Each patch's first voxel: MONAI's ``generate_pos_neg_label_crop_centers`` and
        ``SpatialCrop``'s slice rule, drawn from the crop's own random state in the same
        order (``rand`` for lesion or background, ``randint`` for the voxel, per patch)
        without its per-patch type conversions (half of a patch's drawing time)."""
        cropper = self.crop.cropper
        size = np.asarray(self.size)
        if np.any(np.asarray(shape) < size):
            raise ValueError(
                f"a case of {list(shape)} voxels is smaller than the patch {self.size}"
            )
        if not len(fg) and not len(bg):
            raise ValueError("No sampling location available.")
        pos = cropper.pos_ratio if len(fg) and len(bg) else float(len(fg) > 0)
        # the valid centres of correct_crop_centers: [size // 2, shape + 1 - size / 2)
        low = size // 2
        high = (np.asarray(shape) + 1 - size / 2).astype(np.uint16).astype(np.int64)
        high[high == low] += 1
        corners = []
        for _ in range(cropper.num_samples):
            pool = fg if cropper.R.rand() < pos else bg
            voxel = np.unravel_index(pool[cropper.R.randint(len(pool))], shape)
            centre = np.minimum(np.maximum(voxel, low), high - 1)
            corners.append(np.maximum(centre - low, 0).tolist())
        return corners

    def __call__(self, data: dict) -> dict:
        # numpy views of the cached case: a patch is cut, flipped and scaled in one copy,
        # with none of torch's per-operation dispatch (half the time of the same in torch)
        image, label = np.asarray(data["image"]), np.asarray(data["label"])
        corners = self._corners(data[FG_INDICES], data[BG_INDICES], label.shape[1:])
        n = len(corners)
        out_image = np.empty((n, image.shape[0], *self.size), np.float32)
        out_label = np.empty((n, label.shape[0], *self.size), np.float32)
        for i, corner in enumerate(corners):
            box = (slice(None), *(slice(c, c + s) for c, s in zip(corner, self.size, strict=True)))
            patch, mask = image[box], label[box]
            # in the chain's order, each transform drawing from its own random state:
            # flip (image and label), scale, shift (image)
            self.flip.randomize(None)
            if self.flip._do_transform:
                patch, mask = np.flip(patch, self.flip_dims), np.flip(mask, self.flip_dims)
            out_label[i] = mask
            self.scale.randomize(None)
            if self.scale._do_transform:
                self.scale.scaler.randomize(patch)
                np.multiply(patch, 1 + self.scale.scaler.factor, out=out_image[i])
            else:
                out_image[i] = patch
            self.shift.randomize(None)
            if self.shift._do_transform:
                self.shift.shifter.randomize(patch)
                out_image[i] += self.shift.shifter._offset
        if self.squeeze is not None:
            out_image, out_label = out_image.squeeze(self.squeeze), out_label.squeeze(self.squeeze)
        return {"image": out_image, "label": out_label}


def collate_patches(cases: list[dict]) -> dict:
    """Join cases' :class:`CasePatches` into a batch: ``{"image": (B, C, ...), ...}``.

    In numpy, not ``torch.cat``: a torch operation in the loading thread of
    ``ThreadDataLoader`` starts a second pool of OpenMP threads that spin beside the
    network's; on 2 cores that took the step from 38 to 60 ms (bench/RESULTS.md)."""
    return {
        key: torch.from_numpy(np.concatenate([c[key] for c in cases])) for key in ("image", "label")
    }


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
    randomize = random_transforms(crop, samples, pos, axis if spatial_dims == 2 else None)
    dataset = CacheDataset(
        items,
        # one flat chain: CacheDataset caches up to the first random transform, and a nested
        # Compose would count as random and disable the cache
        transform=Compose(
            [
                *load_transforms(crop).transforms,
                *crop_indices(),
                # cached as plain arrays: cutting a patch out of a MetaTensor goes through
                # Python for its metadata (a fifth of the loading time)
                EnsureTyped(keys=["image", "label"], data_type="numpy"),
                CasePatches(randomize),
            ]
        ),
        # one thread: MONAI's image readers are not safe to share across loading threads
        num_workers=1,
        # no copy of the whole cached case per draw (a third of the loading time): the random
        # transforms make new tensors and never write into the cached ones
        # (tests/training/test_loader.py checks)
        copy_cache=False,
        progress=show_progress,
    )
    # With `background`, the next batch is drawn in a thread while the network computes
    # (MONAI's advice for cached data on a GPU). On a 2-core CPU it gains nothing measurable
    # (40.4 ms a batch against 41.1 ms inline, bench/RESULTS.md), so the CPU path stays inline.
    loader = (ThreadDataLoader if background else DataLoader)(
        dataset,
        batch_size=max(1, batch_size // samples),
        shuffle=True,
        # loading processes start anew each epoch; MONAI seeds their transforms from torch's
        # generator, which set_determinism resets every epoch: still reproducible
        num_workers=workers,
        collate_fn=collate_patches,
        # page-locked batches go to the GPU by DMA, with no staging copy, and asynchronously
        # (the trainer's non_blocking copy)
        pin_memory=background and torch.cuda.is_available(),
    )
    return loader, randomize


def validation_dataset(items: list[dict]) -> CacheDataset:
    """Whole cases, loaded once: ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)}``."""
    return CacheDataset(items, transform=load_transforms([1, 1, 1]), progress=False)
