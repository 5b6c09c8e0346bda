"""Whole-volume inference and the trip back to a scan's own grid.

Shared by validation during training, ``adseg evaluate`` and ``adseg predict``:

- :func:`make_inferer`: MONAI's ``SliceInferer`` (2-D networks, slices across the slice axis,
  stacked back) or ``SlidingWindowInferer`` (3-D), both with Gaussian blending of windows.
- :func:`predict_probabilities`: softmax maps of one preprocessed case, averaged over models
  (fold ensemble) and optionally over mirrored inputs (test-time augmentation); each
  model's and mirroring's maps one by one from :func:`mirrored_probabilities`.
- :func:`remove_small_components`: a model's ``postprocess`` (the threshold scheme's least
  lesion size), applied to the probabilities before any mask is made.
- :func:`to_grid`: probabilities on the preprocessed grid resampled (linear, per class) onto
  any grid in world space, then the argmax, as nnU-Net does, so a label is never
  interpolated; :func:`map_to_grid` takes any continuous map (an uncertainty map) the same
  way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from torch import nn

from adseg.geometry import Grid
from adseg.preprocessing.case import resample_to
from adseg.training.networks import discriminator_input
from adseg.training.threshold import small_components


def make_inferer(
    spatial_dims: int, patch_size: Sequence[int], axis: int, batch_size: int = 8
) -> Inferer:
    """The inferer for a network of ``spatial_dims`` trained on ``patch_size`` windows.

    Args:
        axis: slice axis (x=0, y=1, z=2) of the volumes, for 2-D networks.
    """
    common = {"sw_batch_size": batch_size, "overlap": 0.5, "mode": "gaussian"}
    if spatial_dims == 2:
        return SliceInferer(roi_size=list(patch_size), spatial_dim=axis, progress=False, **common)
    return SlidingWindowInferer(roi_size=list(patch_size), **common)


def _flip_sets(spatial_dims: int, axis: int, tta: bool) -> list[tuple[int, ...]]:
    """Axes (of a ``(B, C, X, Y, Z)`` tensor) to mirror for test-time augmentation."""
    if not tta:
        return [()]
    in_plane = [a for a in range(3) if spatial_dims == 3 or a != axis]
    dims = [a + 2 for a in in_plane]
    flips: list[tuple[int, ...]] = [()]
    for d in dims:
        flips += [f + (d,) for f in flips]
    return flips


@torch.inference_mode()
def mirrored_probabilities(
    models: Sequence[nn.Module],
    image: torch.Tensor,
    inferer: Inferer,
    spatial_dims: int,
    axis: int,
    tta: bool = False,
    amp: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Softmax maps ``(1, K, X, Y, Z)`` of one case ``image`` ``(C, X, Y, Z)``, one per model
    and mirroring (just the unmirrored input without ``tta``), each with its model's index,
    model by model, on the models' device.

    With ``tta``, all mirrorings of the in-plane axes (and the slice axis too for 3-D
    networks).
    """
    # a model's buffers too: a fitted rule (ThresholdRule) has no parameters
    device = next(itertools.chain(models[0].parameters(), models[0].buffers())).device
    batch = image.unsqueeze(0).to(device)
    for index, model in enumerate(models):
        model.eval()
        for dims in _flip_sets(spatial_dims, axis, tta):
            x = batch.flip(dims) if dims else batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = inferer(x, model)
            probs = torch.softmax(logits.float(), dim=1)
            yield index, probs.flip(dims) if dims else probs


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[nn.Module],
    image: torch.Tensor,
    inferer: Inferer,
    spatial_dims: int,
    axis: int,
    tta: bool = False,
    amp: bool = False,
) -> torch.Tensor:
    """Softmax maps ``(K, X, Y, Z)`` of one case ``image`` ``(C, X, Y, Z)``.

    The mean over ``models`` and, with ``tta``, over all mirrorings
    (:func:`mirrored_probabilities`).
    """
    total, count = None, 0
    for _, probs in mirrored_probabilities(models, image, inferer, spatial_dims, axis, tta, amp):
        total = probs if total is None else total + probs
        count += 1
    return (total / count)[0].cpu()


def remove_small_components(probs: torch.Tensor, spec: dict) -> torch.Tensor:
    """Drop the lesion components smaller than the model's least size, before any mask.

    ``spec``'s ``postprocess`` (``{"min_component_voxels": N, "label": name}``, written by
    the threshold scheme) is part of the model: a component of the argmax's ``name`` class
    (26-connectivity) smaller than N voxels of the preprocessed grid has its probability of
    that class moved to background, so the mask and the continuous map both lose it. A spec
    without ``postprocess`` (every network) returns ``probs`` unchanged.

    Args:
        probs: class probabilities ``(K, X, Y, Z)`` on the preprocessed grid.
        spec: a model spec (``model.json``), or :func:`ensemble_spec`'s for several folds.
    """
    post = spec.get("postprocess") or {}
    size = int(post.get("min_component_voxels", 0))
    if size <= 1:
        return probs
    name = post.get("label", "lesion")
    if name not in spec["labels"]:
        raise ValueError(f"postprocess label {name!r} not among the labels {list(spec['labels'])}")
    value = spec["labels"][name]
    small = torch.from_numpy(small_components((probs.argmax(0) == value).numpy(), size))
    if not small.any():
        return probs
    out = probs.clone()
    out[0][small] += out[value][small]
    out[value][small] = 0.0
    return out


def ensemble_spec(specs: Sequence[dict]) -> dict:
    """The spec whose ``postprocess`` applies to the mean of several folds' probabilities:
    the first fold's, with the median of the folds' least component sizes (0 for a fold
    without one), as their probabilities are averaged.

    Raises:
        ValueError: folds that remove small components of different labels.
    """
    posts = [s.get("postprocess") or {} for s in specs]
    if not any(posts):
        return specs[0]
    labels = {p.get("label", "lesion") for p in posts if p}
    if len(labels) > 1:
        raise ValueError(f"folds remove small components of different labels: {sorted(labels)}")
    sizes = [int(p.get("min_component_voxels", 0)) for p in posts]
    post = {"min_component_voxels": int(np.median(sizes)), "label": labels.pop()}
    return {**specs[0], "postprocess": post}


def probabilities_image(probs: torch.Tensor, grid: Grid) -> list[sitk.Image]:
    """One SimpleITK image per class from ``(K, X, Y, Z)`` maps on ``grid``."""
    arrays = probs.numpy().astype(np.float32)
    # numpy/SimpleITK order is (z, y, x)
    return [grid.image(np.ascontiguousarray(a.transpose(2, 1, 0))) for a in arrays]


def map_to_grid(values: torch.Tensor, source: Grid, target: Grid) -> np.ndarray:
    """Resample a continuous map ``(X, Y, Z)`` on ``source`` onto ``target`` (linear, as the
    probabilities in :func:`to_grid`); voxels of ``target`` outside ``source`` get 0.

    Returns:
        The map ``(z, y, x)`` float32 on ``target``.
    """
    image = probabilities_image(values[None], source)[0]
    return sitk.GetArrayFromImage(resample_to(image, target, default=0.0)).astype(np.float32)


def to_grid(probs: torch.Tensor, source: Grid, target: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Resample class probabilities from ``source`` onto ``target`` and take the argmax.

    Voxels of ``target`` outside ``source`` (cropped-away background) get probability 1 for
    class 0.

    Returns:
        Labels ``(z, y, x)`` uint8 and probabilities ``(K, z, y, x)`` float32 on ``target``.
    """
    # Linear interpolation keeps the classes summing to 1, so the background is 1 minus the
    # rest: K - 1 resamplings instead of K (half the work for a single lesion label).
    channels = probabilities_image(probs[1:], source)
    resampled = [sitk.GetArrayFromImage(resample_to(im, target, default=0.0)) for im in channels]
    foreground = np.stack(resampled).astype(np.float32)
    background = np.clip(1.0 - foreground.sum(axis=0), 0.0, 1.0)[None]
    stacked = np.concatenate([background, foreground])
    return first_argmax(stacked), stacked


def first_argmax(maps: np.ndarray) -> np.ndarray:
    """``maps.argmax(axis=0)`` as uint8 for ``(K, ...)`` maps without NaN, ties to the lower
    class as numpy's: K - 1 comparisons of whole maps, a third of the time of numpy's
    reduction across the class axis (bench/RESULTS.md)."""
    labels = np.zeros(maps.shape[1:], np.uint8)
    best = maps[0]
    for k in range(1, len(maps)):
        better = maps[k] > best
        labels[better] = k
        if k < len(maps) - 1:
            best = np.where(better, maps[k], best)
    return labels


@torch.inference_mode()
def discriminator_score(
    disc: nn.Module,
    d_input: str,
    spatial_dims: int,
    axis: int,
    image: torch.Tensor,
    labels: torch.Tensor,
) -> float:
    """Mean sigmoid score D gives a whole case's label map (high = expert-like).

    Args:
        d_input: the discriminator's input variant (see
            :func:`adseg.training.networks.discriminator_input`).
        image: ``(C, X, Y, Z)`` on the preprocessed grid.
        labels: one-hot ``(K, X, Y, Z)``.

    2-D discriminators see the case slice by slice across ``axis``, as in training.
    """
    device = next(disc.parameters()).device
    x = discriminator_input(d_input, image[None], labels[None]).to(device)
    if spatial_dims == 2:
        x = x.movedim(axis + 2, 1).flatten(0, 1)  # (slices, channels, in-plane...)
    disc.eval()
    return float(torch.sigmoid(disc(x).float()).mean())


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(X, Y, Z)`` integer labels to ``(K, X, Y, Z)`` float one-hot maps."""
    return torch.nn.functional.one_hot(labels.long(), classes).movedim(-1, 0).float()
