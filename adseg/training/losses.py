"""Adversarial losses, written as the equations of ../shared/BRIEF.md §2.

Every discriminator here outputs raw scores (logits; a WGAN critic's values), never
probabilities: the sigmoid is folded into the loss with ``softplus`` identities, which is
numerically stable where ``log(sigmoid(x))`` is not.

With ``s = D(x)`` a logit and ``σ`` the sigmoid: ``-log σ(s) = softplus(-s)`` and
``-log(1 - σ(s)) = softplus(s)``.

=============  =============================================  ===============================
name           discriminator loss L_D                          generator / segmentor loss L_G
=============  =============================================  ===============================
minimax        -E[log D(real)] - E[log(1 - D(fake))]           E[log(1 - D(fake))]
nonsaturating  same as minimax                                 -E[log D(fake)]
lsgan          ½E[(D(real) - 1)²] + ½E[D(fake)²]               ½E[(D(fake) - 1)²]
hinge          E[relu(1 - D(real))] + E[relu(1 + D(fake))]     -E[D(fake)]
wgan           E[D(fake)] - E[D(real)]  (+ weight clipping)    -E[D(fake)]
wgan-gp        E[D(fake)] - E[D(real)] + λ·E[(‖∇D(x̂)‖₂ - 1)²]  -E[D(fake)]
=============  =============================================  ===============================

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1 by e.g. 0.9 in the
losses that have targets (minimax, nonsaturating, lsgan).

Feature matching (Salimans et al. 2016) is a generator loss only: the generator matches the
batch mean of an intermediate D layer on real data, ``‖E f(real) − E f(fake)‖²``, while D keeps
the minimax loss. It needs D's features, so :func:`adseg.training.steps.generator_step` computes it
(:data:`GAN_LOSSES` lists it beside the losses above).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _bce_real(real: Tensor, target: float) -> Tensor:
    """-E[t·log σ(s) + (1 - t)·log(1 - σ(s))] for real scores with target t."""
    return F.binary_cross_entropy_with_logits(real, torch.full_like(real, target))


def _d_minimax(real: Tensor, fake: Tensor, real_target: float) -> Tensor:
    return _bce_real(real, real_target) + F.softplus(fake).mean()


def _d_lsgan(real: Tensor, fake: Tensor, real_target: float) -> Tensor:
    return 0.5 * ((real - real_target) ** 2).mean() + 0.5 * (fake**2).mean()


def _d_hinge(real: Tensor, fake: Tensor, real_target: float) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _d_wasserstein(real: Tensor, fake: Tensor, real_target: float) -> Tensor:
    return fake.mean() - real.mean()


def _g_minimax(fake: Tensor) -> Tensor:
    # E[log(1 - σ(s))] = -E[softplus(s)]: saturates when D confidently rejects the fake
    return -F.softplus(fake).mean()


def _g_nonsaturating(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


def _g_lsgan(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1.0) ** 2).mean()


def _g_critic(fake: Tensor) -> Tensor:
    return -fake.mean()


D_LOSSES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "minimax": _d_minimax,
    "nonsaturating": _d_minimax,
    "lsgan": _d_lsgan,
    "hinge": _d_hinge,
    "wgan": _d_wasserstein,
    "wgan-gp": _d_wasserstein,
}
G_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "minimax": _g_minimax,
    "nonsaturating": _g_nonsaturating,
    "lsgan": _g_lsgan,
    "hinge": _g_critic,
    "wgan": _g_critic,
    "wgan-gp": _g_critic,
}
ADVERSARIAL_LOSSES = tuple(D_LOSSES)
# losses whose discriminator is a critic: no sigmoid, no batch norm with a gradient penalty
CRITIC_LOSSES = ("wgan", "wgan-gp")


# losses of the GAN synthesis modules: the adversarial ones plus feature matching, whose
# D is trained with the minimax loss
FEATURE_MATCHING = "feature-matching"
GAN_LOSSES = (*ADVERSARIAL_LOSSES, FEATURE_MATCHING)


def check_loss(name: str, allowed: tuple[str, ...] = ADVERSARIAL_LOSSES) -> str:
    """Return ``name`` if it is one of ``allowed``, else raise listing them."""
    if name not in allowed:
        raise ValueError(f"adversarial loss {name!r} unknown; choose from {', '.join(allowed)}")
    return name


def loss_floor(loss: str, real_target: float) -> float:
    """The smallest L_D can be: a cross-entropy D loss with a smoothed real target t cannot go
    below the entropy H(t); the other losses reach 0 (critics have no floor at all)."""
    t = real_target
    if loss in ("minimax", "nonsaturating", FEATURE_MATCHING) and 0 < t < 1:
        return -(t * math.log(t) + (1 - t) * math.log(1 - t))
    return 0.0


def feature_matching(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """Salimans et al. 2016: ``‖mean_batch f(real) − mean_batch f(fake)‖²₂``.

    Args:
        real_features, fake_features: an intermediate D layer's activations ``(B, ...)``; the
            real ones should carry no graph (the generator cannot change them).

    Returns:
        The squared distance of the batch means, averaged over feature entries so its size
        does not grow with the layer's width.
    """
    return ((real_features.mean(0) - fake_features.mean(0)) ** 2).mean()


def discriminator_loss(name: str, real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """L_D for discriminator scores of real and fake samples, shapes ``(B, ...)``.

    Args:
        name: one of :data:`ADVERSARIAL_LOSSES`.
        real_target: target for real samples; 0.9 is one-sided label smoothing (ignored by
            hinge and Wasserstein losses, which have no targets).
    """
    if name == FEATURE_MATCHING:
        name = "minimax"
    return D_LOSSES[check_loss(name)](real, fake, real_target)


def generator_loss(name: str, fake: Tensor) -> Tensor:
    """L_G (for a segmentor: L_S) from the discriminator's scores of generated samples."""
    return G_LOSSES[check_loss(name)](fake)


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP's E[(‖∇D(x̂)‖₂ - 1)²] on random interpolates x̂ of real and fake (Gulrajani 2017).

    Args:
        critic: maps a batch ``(B, C, ...)`` to scores ``(B, ...)``.
        real, fake: batches of the same shape; ``fake`` should be detached.

    Returns:
        The penalty without the λ factor (the caller multiplies, λ = 10 by default).
    """
    alpha = torch.rand(
        (real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype
    )
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()
