"""Slices of a preprocessed cohort for the GAN tasks, scaled to the generators' [-1, 1].

Preprocessing leaves each channel normalised (z-scores by default, but any scheme a config
picks). The GANs need a bounded range for their tanh outputs, so every channel is mapped
linearly from ``[lo, hi]`` (percentiles of its voxels over the training patients) to
``[-1, 1]`` and clipped (the DCGAN recipe's image scaling). The ranges are stored in the model
folder, so samples and translations are turned back into the preprocessed units.

Slices are taken across the slice axis (the coarsest one, as the 2-D segmentors use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandFlipd,
    RandSpatialCropd,
    ResizeWithPadOrCrop,
)

from adseg.io import read_json
from adseg.preprocessing.case import channel_index
from adseg.training.loader import case_items, validation_dataset


def cohort_channels(preprocessed: Path) -> list[str]:
    """Channel names of a preprocessed cohort, in file order."""
    names = read_json(Path(preprocessed) / "dataset.json")["channel_names"]
    return [names[str(k)] for k in range(len(names))]


def channel_indices(preprocessed: Path, channels: Sequence[str]) -> list[int]:
    """Indices of named channels in the cohort.

    Raises:
        ValueError: a name the cohort lacks, listing the channels it has.
    """
    names = cohort_channels(preprocessed)
    return [channel_index(c, names) for c in channels]


def load_volumes(
    preprocessed: Path, case_ids: Sequence[str], channels: Sequence[int]
) -> dict[str, np.ndarray]:
    """The chosen channels of each case, ``(C, X, Y, Z)`` float32, on the preprocessed grid."""
    dataset = validation_dataset(case_items(Path(preprocessed), list(case_ids)))
    return {
        item["case_id"]: np.asarray(item["image"][list(channels)], dtype=np.float32)
        for item in dataset
    }


def intensity_ranges(
    volumes: Sequence[np.ndarray], percentiles: Sequence[float]
) -> list[list[float]]:
    """Per channel ``[lo, hi]``: the percentiles of its voxels over all ``volumes``.

    Raises:
        ValueError: a channel that is constant over the whole set (nothing to scale).
    """
    ranges = []
    for c in range(volumes[0].shape[0]):
        voxels = np.concatenate([v[c].ravel() for v in volumes])
        lo, hi = (float(x) for x in np.percentile(voxels, list(percentiles)))
        if hi <= lo:
            raise ValueError(f"channel {c} is constant ({lo:g}) on the training cases")
        ranges.append([lo, hi])
    return ranges


def scale(x: np.ndarray | torch.Tensor, lo: float, hi: float, clip: bool = True):
    """``[lo, hi]`` → ``[-1, 1]``, clipped unless ``clip`` is False (a reference to measure
    against keeps its tails)."""
    y = 2.0 * (x - lo) / (hi - lo) - 1.0
    return y.clip(-1.0, 1.0) if clip else y


def unscale(y: np.ndarray | torch.Tensor, lo: float, hi: float):
    """Inverse of :func:`scale` inside the range: ``[-1, 1]`` → ``[lo, hi]``."""
    return (y + 1.0) / 2.0 * (hi - lo) + lo


def scaled(
    volume: np.ndarray, ranges: Sequence[Sequence[float]], clip: Sequence[bool] | None = None
) -> np.ndarray:
    """Each channel of ``(C, ...)`` scaled by its own range (clipped, unless ``clip`` says
    otherwise per channel)."""
    clip = clip or [True] * len(ranges)
    out = [scale(v, *r, c) for v, r, c in zip(volume, ranges, clip, strict=True)]
    return np.stack(out).astype(np.float32)


def slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """``(C, X, Y, Z)`` → ``(S, C, A, B)``: the slices across ``axis`` (0-2), in order."""
    return np.moveaxis(volume, axis + 1, 0)


def synthesis_slices(
    volumes: dict[str, np.ndarray],
    ranges: Sequence[Sequence[float]],
    axis: int,
    size: int,
    classes: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every slice of every case, scaled, centre-cropped or padded to ``size`` × ``size``.

    Padding is the preprocessed background, 0, before scaling.

    Args:
        classes: case id → class index (conditional GAN); None gives class 0 throughout.

    Returns:
        Images ``(N, C, size, size)`` in [-1, 1] and class indices ``(N,)``.
    """
    fit = ResizeWithPadOrCrop((size, size))
    images, labels = [], []
    for case_id, volume in volumes.items():
        for s in slices(volume, axis):
            fitted = np.asarray(fit(torch.from_numpy(np.ascontiguousarray(s))))
            images.append(scaled(fitted, ranges))
            labels.append(classes[case_id] if classes else 0)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def pad_in_plane(
    volume: np.ndarray, patch: Sequence[int], axis: int, value: float = 0.0
) -> np.ndarray:
    """``(C, X, Y, Z)`` padded at the end of the in-plane axes to at least ``patch`` with
    ``value`` (the background, so training crops and inference windows see the same)."""
    sizes = list(volume.shape[1:])
    in_plane = [a for a in range(3) if a != axis]
    for a, p in zip(in_plane, patch, strict=True):
        sizes[a] = max(sizes[a], int(p))
    widths = [(0, 0)] + [(0, t - n) for t, n in zip(sizes, volume.shape[1:], strict=True)]
    return np.pad(volume, widths, constant_values=value)


def paired_slices(
    volumes: dict[str, np.ndarray],
    ranges: Sequence[Sequence[float]],
    axis: int,
    patch: Sequence[int],
) -> list[dict]:
    """Scaled (source, target) slice pairs of cases whose channels are ``[source, target]``,
    padded to at least ``patch``: ``{"source": (1, A, B), "target": (1, A, B), "case_id"}``."""
    items = []
    for case_id, volume in volumes.items():
        for s in slices(scaled(pad_in_plane(volume, patch, axis), ranges), axis):
            items.append({"source": s[:1], "target": s[1:2], "case_id": case_id})
    return items


def translation_loader(
    items: list[dict], patch: Sequence[int], batch_size: int, draws: int
) -> tuple[DataLoader, Compose, torch.Generator]:
    """A loader of ``draws`` random slice pairs per epoch (from :func:`paired_slices`),
    randomly cropped and flipped left-right together.

    Returns:
        The loader, its random transforms and the sampler's generator (seed both per epoch
        so a resumed run draws what an uninterrupted one would).
    """
    keys = ["source", "target"]
    randomize = Compose(
        [
            RandSpatialCropd(keys, list(patch), random_size=False),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            # plain tensors: a MetaTensor sends every torch call of the networks through
            # Python (the step took 3.6 s instead of 0.5 s)
            EnsureTyped(keys, track_meta=False),
        ]
    )
    generator = torch.Generator()
    sampler = torch.utils.data.RandomSampler(
        items, replacement=draws > len(items), num_samples=draws, generator=generator
    )
    dataset = Dataset(items, transform=randomize)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=draws > batch_size
    )
    return loader, randomize, generator
