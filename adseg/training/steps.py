"""The two adversarial updates, written out (pix2pix's ``optimize_parameters`` pattern).

Shared by the segmentation schemes (the segmentor S plays the generator; real = expert
one-hot maps, fake = S's softmax maps) and by the GAN synthesis modules.

- :func:`discriminator_step`: D learns to tell real from fake. The fake is detached, so no
  gradient reaches the generator.
- :func:`generator_step`: the generator learns to fool D. D's parameters are frozen
  (``requires_grad_(False)``) for the step, so D is not updated by the generator's loss.

Instance noise (Sønderby et al. 2016; ``noise_std``) adds ``N(0, σ²)`` to everything D sees,
real and fake, in both steps, so the two distributions overlap and D cannot separate them
perfectly early on; the caller anneals σ towards 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

import torch
from torch import nn

from adseg.training.losses import (
    FEATURE_MATCHING,
    discriminator_loss,
    feature_matching,
    generator_loss,
    gradient_penalty,
)


def grad_norm(module: nn.Module) -> float:
    """Global L2 norm of the gradients of ``module``'s parameters (0 if there are none)."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    # one fused call over all the tensors (as torch's clip_grad_norm_ does): 0.30 ms against
    # 0.44 ms a step for a norm each, 1 % of a CPU training step (bench/RESULTS.md)
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2))))


ALL = slice(None)


def noisy(x: torch.Tensor, std: float, channels: slice = ALL) -> torch.Tensor:
    """``x`` plus instance noise ``N(0, std²)`` on ``channels`` (``x`` itself when ``std``
    is 0). Conditioning channels (a class map, pix2pix's source image) are left out: they
    are the same on the real and the fake side, so noise there only blurs what D is told."""
    if std <= 0:
        return x
    if channels == ALL:
        return x + std * torch.randn_like(x)
    out = x.clone()
    out[:, channels] += std * torch.randn_like(x[:, channels])
    return out


def discriminator_step(
    disc: nn.Module,
    optimizer: torch.optim.Optimizer,
    real: torch.Tensor,
    fake: torch.Tensor,
    loss: str,
    real_target: float = 1.0,
    gp_weight: float = 10.0,
    clip: float = 0.01,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    noise_std: float = 0.0,
    noise_channels: slice = ALL,
    update: bool = True,
) -> dict[str, float]:
    """One update of D on a batch of real and generated samples.

    L_D = discriminator_loss(D(real), D(fake.detach())), plus λ·GP for ``wgan-gp``; for
    ``wgan`` the weights are clipped to ``[-clip, clip]`` after the step (Arjovsky 2017).
    ``noise_std`` > 0 adds instance noise to both batches' ``noise_channels`` first.

    ``autocast`` makes the context for the forward pass (mixed precision on CUDA); the
    backward pass runs outside it, as PyTorch recommends.

    ``update=False`` scores the batch and computes L_D (without the gradient penalty, which
    needs gradients) but changes nothing: a D that is only watched (``hybrid-frozen``).

    Returns:
        ``loss_d``, mean raw scores ``d_real`` and ``d_fake``, and ``grad_norm_d``.
    """
    real = noisy(real, noise_std, noise_channels)
    fake = noisy(fake.detach(), noise_std, noise_channels)
    if not update:
        with torch.no_grad(), autocast():
            real_scores, fake_scores = disc(real).float(), disc(fake).float()
            loss_d = discriminator_loss(loss, real_scores, fake_scores, real_target)
        return _d_stats(loss_d, real_scores, fake_scores, 0.0)
    disc.requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        real_scores, fake_scores = disc(real).float(), disc(fake).float()
        loss_d = discriminator_loss(loss, real_scores, fake_scores, real_target)
        if loss == "wgan-gp":
            loss_d = loss_d + gp_weight * gradient_penalty(disc, real, fake)
    loss_d.backward()
    norm = grad_norm(disc)
    optimizer.step()
    if loss == "wgan":
        with torch.no_grad():
            for p in disc.parameters():
                p.clamp_(-clip, clip)
    return _d_stats(loss_d, real_scores, fake_scores, norm)


def _d_stats(loss_d, real_scores, fake_scores, norm: float) -> dict[str, float]:
    return {
        "loss_d": float(loss_d.detach()),
        "d_real": float(real_scores.detach().mean()),
        "d_fake": float(fake_scores.detach().mean()),
        "grad_norm_d": norm,
    }


def generator_step(
    gen: nn.Module,
    disc: nn.Module,
    optimizer: torch.optim.Optimizer,
    fake: torch.Tensor,
    loss: str,
    adv_weight: float = 1.0,
    supervised: torch.Tensor | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    noise_std: float = 0.0,
    real: torch.Tensor | None = None,
    noise_channels: slice = ALL,
) -> dict[str, float]:
    """One update of the generator (or segmentor) through a frozen D.

    L = adv_weight · generator_loss(D(fake)) + supervised, where ``fake`` still carries the
    generator's graph and ``supervised`` is an optional extra term (the segmentor's
    cross-entropy in the hybrid scheme: λ·L_mce + L_S; pix2pix's λ·L1).

    For ``feature-matching`` the adversarial term is
    :func:`adseg.training.losses.feature_matching` of ``disc.feature_map`` on ``real`` and ``fake``.

    Returns:
        ``loss_g`` (total), ``loss_adv`` and ``grad_norm_g``.
    """
    trainable = [p.requires_grad for p in disc.parameters()]
    disc.requires_grad_(False)
    try:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            fake = noisy(fake, noise_std, noise_channels)
            if real is not None and loss == FEATURE_MATCHING:
                real = noisy(real, noise_std, noise_channels)
            loss_adv = _adversarial_term(disc, loss, fake, real)
        total = adv_weight * loss_adv
        if supervised is not None:
            total = total + supervised
        total.backward()
        norm = grad_norm(gen)
        optimizer.step()
    finally:
        for p, flag in zip(disc.parameters(), trainable, strict=True):
            p.requires_grad_(flag)
    return {
        "loss_g": float(total.detach()),
        "loss_adv": float(loss_adv.detach()),
        "grad_norm_g": norm,
    }


def _adversarial_term(
    disc: nn.Module, loss: str, fake: torch.Tensor, real: torch.Tensor | None
) -> torch.Tensor:
    if loss != FEATURE_MATCHING:
        return generator_loss(loss, disc(fake).float())
    if real is None or not hasattr(disc, "feature_map"):
        raise ValueError(
            "feature matching needs the real batch and a discriminator with feature_map()"
        )
    with torch.no_grad():
        target = disc.feature_map(real).float()
    return feature_matching(target, disc.feature_map(fake).float())
