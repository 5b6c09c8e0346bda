"""Training data from a preprocessed folder: MONAI dictionaries, transforms and loaders.

A case is ``{"image": [channel files], "label": file, "case_id": ..., "preprocessed": ...}``.
Training and validation read the case's arrays (:mod:`adseg.preprocessing.store`), memory
mapped: a batch reads the pages of its patches and nothing stays in memory between draws,
so a cohort of any size trains in bounded memory, and the operating system's page cache
keeps a cohort that fits in RAM there. The random part (patch sampling, flips, intensity
jitter) runs at every draw.

For 2-D training the patches are one voxel thick across the *slice axis* (the coarsest axis
of the preprocessed grid, usually z) and the singleton axis is squeezed away, so a 2-D
network sees in-plane slices, as Kohl et al. 2017 trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset, ThreadDataLoader
from monai.transforms import (
    Compose,
    RandCropByPosNegLabeld,
    RandFlipd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPad,
    SqueezeDimd,
)
from monai.transforms.utils import map_spatial_axes

from adseg.io import read_json
from adseg.preprocessing import store

# where an opened case keeps its lesion / background voxel indices for the crop
FG_INDICES, BG_INDICES = "label_fg_indices", "label_bg_indices"
# and, when smaller than the patch, the padding before each axis and the padded shape
PAD_BEFORE, PADDED_SHAPE = "pad_before", "padded_shape"


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
        store.check_arrays(preprocessed, case_id, "image", "label", "fg")
        items.append(
            {
                "image": [str(p) for p in images],
                "label": str(label),
                "case_id": case_id,
                "preprocessed": str(preprocessed),
            }
        )
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


class OpenCase:
    """A case's arrays, opened for :class:`CasePatches`: memory-mapped views, the lesion's
    voxel indices and the background's as their :class:`~adseg.preprocessing.store.Complement`.

    What MONAI's ``LoadImaged``, ``SpatialPadd`` to the patch and ``FgBgToIndicesd`` made of
    the NIfTI files (tests/training/test_loader.py compares). A case smaller than the patch is
    not padded: its indices are those of the padded case (``SpatialPad``'s rule), and
    :class:`CasePatches` fills what a patch takes of the padding with zeros.
    """

    def __init__(self, crop: Sequence[int]) -> None:
        self.pad = SpatialPad(spatial_size=list(crop))

    def __call__(self, item: dict) -> dict:
        case = store.open_case(item["preprocessed"], item["case_id"])
        label, fg = case["label"], case["fg"]
        shape = label.shape[1:]
        widths = self.pad.compute_pad_width(shape)[1:]  # the first is the channel's
        before = [int(w[0]) for w in widths]
        padded = tuple(int(s + a + b) for s, (a, b) in zip(shape, widths, strict=True))
        opened = {"image": case["image"], "label": label}
        if padded != shape:
            voxels = np.add(np.unravel_index(fg, shape), np.reshape(before, (-1, 1)))
            fg = np.ravel_multi_index(tuple(voxels), padded).astype(fg.dtype)
            opened[PAD_BEFORE], opened[PADDED_SHAPE] = before, padded
        opened[FG_INDICES], opened[BG_INDICES] = fg, store.Complement(fg, int(np.prod(padded)))
        return opened


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

    def _cut(self, image: np.ndarray, label: np.ndarray, corner: list[int], before) -> tuple:
        """The patch at ``corner`` of the (padded) case: views of the arrays, or, where the
        patch reaches into the padding, a copy with zeros there."""
        if before is None:
            box = (slice(None), *(slice(c, c + s) for c, s in zip(corner, self.size, strict=True)))
            return image[box], label[box]
        low = np.subtract(corner, before)
        start, stop = np.maximum(low, 0), np.minimum(low + self.size, label.shape[1:])
        source = (slice(None), *(slice(a, b) for a, b in zip(start, stop, strict=True)))
        target = (slice(None), *(slice(a, b) for a, b in zip(start - low, stop - low, strict=True)))
        patch = np.zeros((image.shape[0], *self.size), np.float32)
        mask = np.zeros((label.shape[0], *self.size), label.dtype)
        patch[target], mask[target] = image[source], label[source]
        return patch, mask

    def __call__(self, data: dict) -> dict:
        # numpy views of the opened (memory-mapped) case: a patch is cut, flipped and scaled
        # in one copy, with none of torch's dispatch (half the time of the same in torch)
        image, label = np.asarray(data["image"]), np.asarray(data["label"])
        before = data.get(PAD_BEFORE)
        shape = label.shape[1:] if before is None else data[PADDED_SHAPE]
        corners = self._corners(data[FG_INDICES], data[BG_INDICES], shape)
        n = len(corners)
        out_image = np.empty((n, image.shape[0], *self.size), np.float32)
        out_label = np.empty((n, label.shape[0], *self.size), np.float32)
        for i, corner in enumerate(corners):
            patch, mask = self._cut(image, label, corner, before)
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
    # a plain dataset: each draw opens the case's memory-mapped arrays and cuts its patches
    dataset = Dataset(items, transform=Compose([OpenCase(crop), CasePatches(randomize)]))
    # With `background`, the next batch is drawn in a thread while the network computes
    # (MONAI's advice for data on a GPU). On a 2-core CPU it gains nothing measurable
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


class CaseVolumes(Sequence):
    """Whole cases, each read from its arrays when asked for and kept by no one:
    ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z), "case_id": ...}``, float32 tensors,
    what MONAI's ``LoadImaged`` makes of the NIfTI files."""

    def __init__(self, items: list[dict]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        item = self.items[index]
        case = store.open_case(item["preprocessed"], item["case_id"])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(case["image"], dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(case["label"], dtype=np.float32)),
            "case_id": item["case_id"],
        }


def validation_dataset(items: list[dict]) -> CaseVolumes:
    """Whole cases in the order given, read one at a time (memory bounded by one case)."""
    return CaseVolumes(items)
