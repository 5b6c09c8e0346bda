"""Uncertainty maps of ``adseg predict --uncertainty``: where the ensemble is unsure.

Two voxel maps, each in ``[0, 1]``:

- **entropy**: the Shannon entropy of the ensemble-mean class probabilities (the mean over
  the folds and, with ``--tta``, over the mirrorings: the probabilities the mask is the argmax
  of), divided by ``log K`` for ``K`` classes: 0 where one class has probability 1, 1 where
  all classes are equally likely. It is computed on the scan's grid, from the probabilities
  resampled there (:func:`adseg.inference.sliding.to_grid`), so it is the entropy of
  ``<case>_probabilities.nii.gz``.
- **disagreement**: the fraction of the folds whose own mask (the argmax of the fold's mean
  over mirrorings, after the fold's own ``postprocess``) differs from the ensemble's at the
  voxel, in steps of ``1 / n`` for ``n`` folds: 0 where every fold agrees with the ensemble.
  One fold always agrees with itself: its map is all 0 (as is that of identical folds). It
  is counted on the preprocessed grid and resampled to the scan's (linear, like the
  probabilities).

The folds are read once each, model by model: what is kept is the running sum of the
probabilities (as :func:`adseg.inference.sliding.predict_probabilities` keeps) and per class
the number of folds voting for it, never every fold's maps at once.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import special
from torch import nn

from adseg.inference.inputs import InputCase, PredictError
from adseg.inference.sliding import mirrored_probabilities, remove_small_components

MAPS = ("entropy", "disagreement")  # written as <case>_<map>.nii.gz


def map_paths(out: Path, case_id: str) -> list[Path]:
    """Where a case's uncertainty maps go in the output folder ``out``, as in :data:`MAPS`."""
    return [out / f"{case_id}_{name}.nii.gz" for name in MAPS]


def plan_uncertainty(
    cases: list[InputCase], todo: list[InputCase], out: Path, ours: bool, wanted: bool
) -> list[InputCase]:
    """The cases to (re)do, in ``cases``' order: ``todo`` (from
    :func:`adseg.inference.provenance.plan_cases`) and, if the maps are ``wanted``, the
    finished cases without them: plan_cases found those made from this model and these
    files, so redoing one adds its maps to the same mask.

    Args:
        ours: ``out`` is a folder adseg made (:func:`adseg.guard.owned`).

    Raises:
        PredictError: an uncertainty map of a case to do, in a folder adseg did not create.
    """
    redo = {c.case_id for c in todo}
    if wanted:
        redo |= {
            c.case_id for c in cases if not all(p.is_file() for p in map_paths(out, c.case_id))
        }
    todo = [c for c in cases if c.case_id in redo]
    clash = [str(p) for c in todo for p in map_paths(out, c.case_id) if os.path.lexists(p)]
    if clash and not ours:
        raise PredictError(
            f"{', '.join(clash)}: in a folder adseg did not create; adseg never replaces files "
            "it did not write. Move them away, or choose another output folder"
        )
    return todo


@torch.inference_mode()
def probabilities_and_votes(
    models: Sequence[nn.Module],
    specs: Sequence[dict],
    image: torch.Tensor,
    inferer,
    spatial_dims: int,
    axis: int,
    tta: bool = False,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble-mean probabilities and the folds' votes for one case.

    Args:
        models: the folds' segmentors; ``specs`` their model specs (for each fold's own
            ``postprocess``, :func:`adseg.inference.sliding.remove_small_components`).
        image: ``(C, X, Y, Z)`` on the preprocessed grid; the rest as
            :func:`adseg.inference.sliding.predict_probabilities`.

    Returns:
        The mean probabilities ``(K, X, Y, Z)`` float32, the very values (same order of sums)
        :func:`~adseg.inference.sliding.predict_probabilities` returns, and the votes
        ``(K, X, Y, Z)`` uint8: how many folds' masks have class k at the voxel.
    """
    total, count, votes = None, 0, None
    maps = mirrored_probabilities(models, image, inferer, spatial_dims, axis, tta, amp)
    for index, fold_maps in itertools.groupby(maps, key=lambda item: item[0]):
        fold_sum, fold_count = None, 0
        for _, probs in fold_maps:
            total = probs if total is None else total + probs
            fold_sum = probs if fold_sum is None else fold_sum + probs
            count, fold_count = count + 1, fold_count + 1
        fold_probs = remove_small_components((fold_sum / fold_count)[0].cpu(), specs[index])
        labels = fold_probs.argmax(0)
        if votes is None:
            votes = torch.zeros(fold_probs.shape, dtype=torch.uint8)
        for k in range(len(votes)):
            votes[k] += labels == k
    return (total / count)[0].cpu(), votes


def fold_disagreement(votes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of folds whose mask differs from ``labels`` (the ensemble's), per voxel.

    Args:
        votes: ``(K, X, Y, Z)`` counts of folds voting for each class (every voxel's counts
            sum to the number of folds).
        labels: ``(X, Y, Z)`` the ensemble's classes.

    Returns:
        ``(X, Y, Z)`` float32 in ``[0, 1]``: 0 where all folds agree with ``labels``.
    """
    folds = votes.sum(0, dtype=torch.float32)
    agree = votes.gather(0, labels[None].long())[0].float()
    return 1.0 - agree / folds


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of class probabilities ``(K, ...)`` over the class axis, divided by ``log K``.

    ``0 · log 0`` counts as 0, so a one-hot voxel (a hard map, e.g. a threshold rule's where
    all folds agree) has entropy 0.

    Returns:
        ``(...)`` float32 in ``[0, 1]``.
    """
    k = probs.shape[0]
    entropy = special.entr(np.clip(probs, 0.0, 1.0)).sum(axis=0) / np.log(k)
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)
