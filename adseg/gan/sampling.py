"""Samples of a trained synthesis generator, and how far they are from real slices.

:func:`generate` draws slices from noise (and classes); :func:`sliced_wasserstein` measures the
distance between two sets of images; :func:`evaluate_samples` puts a model's samples against a
fold's held-out slices, beside the training slices' distance to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.utils.data import TensorDataset

from adseg.gan.blocks import condition_latent
from adseg.gan.job import GanTrainer, spread_ratio

CHUNK = 256  # samples per generator call when drawing many


@torch.inference_mode()
def generate(
    gen: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    device,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """``gen``'s slices ``(N, 1, S, S)`` for noise ``z`` and class indices ``y`` (one-hot
    conditioned when ``classes`` > 0), on the CPU, :data:`CHUNK` at a time."""
    out = []
    for i in range(0, len(z), CHUNK):
        latent = z[i : i + CHUNK].to(device)
        if classes:
            latent = condition_latent(latent, y[i : i + CHUNK].to(device), classes)
        with autocast():
            out.append(gen(latent).float().cpu())
    return torch.cat(out)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256) -> float:
    """Sliced Wasserstein-1 distance between two sets of images ``(N, ...)`` and ``(M, ...)``.

    Both are flattened and projected on ``projections`` random unit directions (seeded, so
    every model is measured on the same ones); the 1-D Wasserstein distance of the sorted
    projections is averaged over directions. The larger set is subsampled to the smaller's
    size (evenly, so it is repeatable).
    """
    n = min(len(a), len(b))
    a = a[torch.linspace(0, len(a) - 1, n).long()].flatten(1).double()
    b = b[torch.linspace(0, len(b) - 1, n).long()].flatten(1).double()
    rng = torch.Generator().manual_seed(0)
    dirs = torch.randn(a.shape[1], projections, generator=rng, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float((pa - pb).abs().mean())


def evaluate_samples(trainer: GanTrainer, train: TensorDataset, test: TensorDataset) -> dict:
    """The model of ``trainer`` (an :class:`adseg.gan.synthesis.SynthesisTrainer`) against the
    held-out slices ``test`` (images ``(N, 1, S, S)``, scaled).

    ``swd``: sliced Wasserstein distance of as many samples as there are held-out slices;
    ``swd_train``: the training slices' distance to them (the floor a generator that copied the
    training distribution would reach); ``std_ratio``: the samples' spread over the held-out
    slices'. Samples are drawn from seeded noise, classes in the held-out proportions.
    """
    images, classes = test.tensors
    rng = torch.Generator().manual_seed(1)
    z = torch.randn(len(images), trainer.spec["latent_dim"], generator=rng)
    samples = trainer.sample(z, classes)
    return {
        "n_test_slices": len(images),
        "swd": sliced_wasserstein(samples, images),
        "swd_train": sliced_wasserstein(train.tensors[0], images),
        **spread_ratio(samples, images),
    }
