"""The ring-of-8-Gaussians mode test for GAN losses (../shared/BRIEF.md §2).

Data: 8 isotropic Gaussians, σ = 0.02, centred on a circle of radius 2 (Metz et al. 2017,
*Unrolled GANs*; Srivastava et al. 2017, *VEEGAN*). A generated sample is *high quality* when it
lies within 3σ of its nearest centre; a mode is *covered* when enough high-quality samples are
assigned to it (VEEGAN: out of 2500 samples, a mode with fewer than 20 is lost).

Every update goes through :func:`adseg.training.steps.discriminator_step` and
:func:`adseg.training.steps.generator_step`: ``d_steps`` D updates per G update, each on a
fresh real batch and a fresh z batch (Goodfellow et al. 2014, Algorithm 1).

Sizes, chosen so that a run takes seconds to about a minute on one CPU thread: MLPs of 2 hidden
layers of 128 units, the width of Metz et al.'s toy networks (64 units were no faster to
converge); batch 256 (Gulrajani et al.'s toy; 128 made WGAN-GP worse); a 16-dimensional latent
(cheap, and more than the 2 dimensions of the data); 5000 generator steps.

Learning rates: the published ones (:data:`RECIPES`) are meant for 10⁴–10⁵ steps (Gulrajani et
al. train 100k); at those rates no loss covered more than 2 of the 8 modes in 2000 steps
(WGAN-GP none in 8000). So the default ``lr_scale`` multiplies every recipe's rates by 5
(DCGAN's 2e-4 becomes 1e-3, WGAN-GP's 1e-4 becomes 5e-4) and keeps their ratios, betas and
critic steps; ``lr_scale=1`` gives the published rates. At ×10 WGAN-GP got there sooner but
lost modes again later in one of three seeds; at ×5 it needs 4000–6000 steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from adseg.gan.networks import MLPDiscriminator, MLPGenerator
from adseg.training.losses import FEATURE_MATCHING, GAN_LOSSES, check_loss
from adseg.training.steps import discriminator_step, generator_step

TOY_LOSSES = GAN_LOSSES
# VEEGAN's rule (Srivastava et al. 2017): of 2500 samples, a mode with fewer than 20
# high-quality ones is lost
VEEGAN_SAMPLES, VEEGAN_MIN_COUNT = 2500, 20
EVAL_SAMPLES = VEEGAN_SAMPLES

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, betas: torch.optim.Adam(params, lr=lr, betas=betas),
    "rmsprop": lambda params, lr, betas: torch.optim.RMSprop(params, lr=lr),
}

# The published recipe of each loss. DCGAN's Adam (2e-4, β = (0.5, 0.999); Radford 2016) for
# the sigmoid, least-squares (Mao 2017 use the same) and hinge losses and feature matching;
# WGAN: RMSprop 5e-5, clip 0.01, 5 critic steps (Arjovsky 2017, Algorithm 1); WGAN-GP: Adam
# 1e-4, β = (0.5, 0.9), 5 critic steps, λ = 10 (Gulrajani 2017, their toy setting).
_ADAM = {"optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999), "d_steps": 1}
RECIPES: dict[str, dict] = {
    "minimax": _ADAM,
    "nonsaturating": _ADAM,
    "lsgan": _ADAM,
    "hinge": _ADAM,
    FEATURE_MATCHING: _ADAM,
    "wgan": {"optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "d_steps": 5, "clip": 0.01},
    "wgan-gp": {
        "optimizer": "adam",
        "lr_g": 1e-4,
        "lr_d": 1e-4,
        "betas": (0.5, 0.9),
        "d_steps": 5,
        "gp_weight": 10.0,
    },
}


def ring_modes(n: int = 8, radius: float = 2.0) -> torch.Tensor:
    """Centres of ``n`` modes evenly spaced on a circle, the first at angle 0.

    Returns:
        ``(n, 2)`` float tensor of (x, y) points at angles ``2πk/n``.
    """
    angles = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def sample_ring(
    n_samples: int,
    generator: torch.Generator | None = None,
    std: float = 0.02,
    modes: int = 8,
    radius: float = 2.0,
) -> torch.Tensor:
    """Samples of the ring mixture: a uniformly chosen centre plus ``N(0, std² I)``.

    Returns:
        ``(n_samples, 2)`` float tensor.
    """
    centres = ring_modes(modes, radius)
    which = torch.randint(modes, (n_samples,), generator=generator)
    return centres[which] + std * torch.randn(n_samples, 2, generator=generator)


def default_min_count(n_samples: int) -> int:
    """High-quality samples a mode needs to count as covered: VEEGAN's 20 per 2500 samples,
    scaled to ``n_samples`` and rounded up (at least 1)."""
    return max(1, -(-VEEGAN_MIN_COUNT * n_samples // VEEGAN_SAMPLES))  # exact integer ceil


def mode_metrics(
    samples: torch.Tensor, modes: torch.Tensor, std: float, min_count: int | None = None
) -> dict:
    """Mode coverage and sample quality of generated points (VEEGAN's definitions).

    Each sample is assigned to its nearest mode; it is high quality when that distance is at
    most 3σ. Non-finite samples (a diverged generator) are never high quality.

    Args:
        samples: ``(N, 2)`` generated points.
        modes: ``(K, 2)`` mode centres.
        std: σ of each mode (same units as the points).
        min_count: high-quality samples a mode needs to be covered; default
            :func:`default_min_count` of N (20 for VEEGAN's 2500 samples).

    Returns:
        ``modes_covered`` (int), ``high_quality`` (share of all N samples), ``counts`` (high-
        quality samples per mode, list of K ints), ``mean_distance`` (mean distance of the
        finite samples to their nearest mode; NaN if none is finite), ``non_finite`` (count),
        ``min_count`` and ``n_samples``.
    """
    samples = samples.detach().float().cpu()
    n = samples.shape[0]
    min_count = default_min_count(n) if min_count is None else min_count
    # exact differences, not cdist's matrix-product shortcut, which is off by ~1e-5 here
    offsets = samples[:, None, :] - modes.float().cpu()[None, :, :]
    distance, nearest = offsets.norm(dim=2).min(dim=1)
    finite = torch.isfinite(samples).all(dim=1)
    good = finite & (distance <= 3 * std)
    counts = torch.bincount(nearest[good], minlength=modes.shape[0])
    return {
        "modes_covered": int((counts >= min_count).sum()),
        "high_quality": float(good.sum()) / n if n else 0.0,
        "counts": counts.tolist(),
        "mean_distance": float(distance[finite].mean()) if finite.any() else math.nan,
        "non_finite": int((~finite).sum()),
        "min_count": min_count,
        "n_samples": n,
    }


@dataclass
class ToySettings:
    """One toy run. Fields left ``None`` take the recipe of ``loss`` (:data:`RECIPES`), whose
    learning rates are multiplied by ``lr_scale`` (rates given explicitly are used as given).

    ``steps`` counts generator updates; D gets ``d_steps`` updates per G update.
    ``noise_std`` is instance noise, annealed linearly from its value to 0 over the run.
    ``betas`` apply to Adam only; ``clip`` to ``wgan``, ``gp_weight`` to ``wgan-gp``.
    ``std`` is σ of the data's modes. ``threads`` sets torch's CPU threads for the run (the
    previous number is restored after): MLPs this small run as fast on 1 thread as on 2, and
    on a machine busy with other work 2 threads made a WGAN-GP step 20 to 50 times slower
    (measured: 14 ms a step on 1 thread, 280 to 670 ms on 2).
    """

    loss: str = "nonsaturating"
    steps: int = 5000
    batch: int = 256
    latent_dim: int = 16
    hidden: int = 128
    layers: int = 2
    optimizer: str | None = None
    lr_scale: float = 5.0
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple[float, float] | None = None
    d_steps: int | None = None
    real_label: float = 1.0
    gp_weight: float | None = None
    clip: float | None = None
    noise_std: float = 0.0
    seed: int = 0
    std: float = 0.02
    threads: int = 1

    def __post_init__(self) -> None:
        check_loss(self.loss, TOY_LOSSES)
        recipe = {"betas": (0.5, 0.999), "gp_weight": 10.0, "clip": 0.01, **RECIPES[self.loss]}
        recipe["lr_g"] *= self.lr_scale
        recipe["lr_d"] *= self.lr_scale
        for key, value in recipe.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.betas = tuple(self.betas)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer {self.optimizer!r} unknown; choose from {', '.join(OPTIMIZERS)}"
            )
        if (
            self.steps < 0
            or min(self.batch, self.d_steps, self.latent_dim, self.layers, self.threads) < 1
        ):
            raise ValueError("steps must be >= 0; batch, d_steps, latent_dim, layers, threads >= 1")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latent(n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latent codes ``z ~ N(0, I)``, shape ``(n, dim)``."""
    return torch.randn(n, dim, generator=generator)


class _History:
    """Per-G-step losses, summarised as window means (about ``points`` windows)."""

    KEYS = ("loss_d", "loss_g", "d_real", "d_fake")

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {k: [] for k in self.KEYS}

    def add(self, stats: dict[str, float]) -> None:
        for key in self.KEYS:
            self.values[key].append(stats[key])

    def summary(self, points: int = 20) -> dict[str, list[float]]:
        n = len(self.values["loss_d"])
        size = max(1, math.ceil(n / points))
        out: dict[str, list[float]] = {"step": [min(i + size, n) for i in range(0, n, size)]}
        for key, values in self.values.items():
            out[key] = [
                sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, n, size)
            ]
        return out


def _train_step(
    s: ToySettings,
    nets: tuple[nn.Module, nn.Module],
    opts: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    rng: torch.Generator,
    sigma: float,
) -> dict[str, float]:
    """``d_steps`` D updates on fresh real and z batches, then one G update."""
    gen, disc = nets
    opt_g, opt_d = opts
    for _ in range(s.d_steps):
        real = sample_ring(s.batch, rng, s.std)
        with torch.no_grad():  # the D step detaches the fake anyway; skip building G's graph
            fake = gen(latent(s.batch, s.latent_dim, rng))
        d = discriminator_step(
            disc, opt_d, real, fake, s.loss, s.real_label, s.gp_weight, s.clip, noise_std=sigma
        )
    real = sample_ring(s.batch, rng, s.std)  # the feature-matching target; ignored otherwise
    fake = gen(latent(s.batch, s.latent_dim, rng))
    g = generator_step(gen, disc, opt_g, fake, s.loss, noise_std=sigma, real=real)
    return {**d, **g}


def _fit(
    s: ToySettings,
    gen: MLPGenerator,
    disc: MLPDiscriminator,
    rng: torch.Generator,
    progress: Callable[[int, dict[str, float]], None] | None,
) -> tuple[_History, dict[str, float], int, bool]:
    """The training loop; returns the history, last statistics, steps done and whether a
    loss went non-finite (training stops at that step)."""
    make = OPTIMIZERS[s.optimizer]
    opts = (make(gen.parameters(), s.lr_g, s.betas), make(disc.parameters(), s.lr_d, s.betas))
    history, stats = _History(), {}
    for step in range(1, s.steps + 1):
        sigma = s.noise_std * (1 - (step - 1) / s.steps)
        stats = _train_step(s, (gen, disc), opts, rng, sigma)
        history.add(stats)
        if progress is not None:
            progress(step, stats)
        if not all(math.isfinite(stats[k]) for k in ("loss_d", "loss_g")):
            return history, stats, step, True
    return history, stats, s.steps, False


def train_toy(
    settings: ToySettings, progress: Callable[[int, dict[str, float]], None] | None = None
) -> dict:
    """Train a toy GAN on the ring and measure its modes.

    A run that diverges (a non-finite D or G loss) stops at that step and says so; it does
    not raise.

    Args:
        settings: the run; ``settings.seed`` fixes initialisation, data, z and evaluation
            (it seeds torch's global generator too, which the gradient penalty and instance
            noise draw from).
        progress: called as ``progress(step, stats)`` after every generator step, with the
            last D step's and the G step's statistics.

    Returns:
        ``metrics`` (:func:`mode_metrics` of 2500 samples of the final generator),
        ``samples`` (those samples, ``(2500, 2)``), ``history`` (means of ``loss_d``,
        ``loss_g``, ``d_real``, ``d_fake`` over about 20 windows of steps, and each window's
        last ``step``), ``last`` (the last step's statistics), ``steps_done``, ``diverged``,
        ``seconds`` (training, wall clock) and ``settings`` (as a dict).
    """
    s = settings
    torch.manual_seed(s.seed)  # initialisation, GP interpolation weights, instance noise
    rng = torch.Generator().manual_seed(s.seed)  # real batches, z, evaluation codes
    gen = MLPGenerator(s.latent_dim, 2, s.hidden, s.layers)
    disc = MLPDiscriminator(2, s.hidden, s.layers)
    z_eval = latent(EVAL_SAMPLES, s.latent_dim, rng)
    start = time.perf_counter()
    with _torch_threads(s.threads):
        history, stats, steps_done, diverged = _fit(s, gen, disc, rng, progress)
        with torch.no_grad():
            samples = gen(z_eval)
    return {
        "metrics": mode_metrics(samples, ring_modes(), s.std),
        "samples": samples,
        "history": history.summary(),
        "last": stats,
        "steps_done": steps_done,
        "diverged": diverged,
        "seconds": time.perf_counter() - start,
        "settings": asdict(s),
    }
