"""The D step leaves the generator unchanged; the G step leaves D unchanged; the logged
gradient norm is that of all the gradients together."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adseg.training.losses import GAN_LOSSES
from adseg.training.steps import discriminator_step, generator_step, grad_norm, noisy


class Disc(nn.Module):
    """A small D with the feature_map() that feature matching uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2))
        self.head = nn.Linear(8, 1)

    def feature_map(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(1)


def nets():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return gen, Disc()


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize("loss", GAN_LOSSES)
def test_d_step_updates_only_d(loss):
    gen, disc = nets()
    # one optimizer over both nets: only the step's own gradient handling keeps G still
    opt = torch.optim.SGD([*gen.parameters(), *disc.parameters()], lr=0.1)
    g0, d0 = snapshot(gen), snapshot(disc)
    fake = gen(torch.randn(6, 4))
    stats = discriminator_step(disc, opt, torch.randn(6, 3), fake, loss)
    assert changed(d0, disc) and not changed(g0, gen)
    assert all(p.grad is None for p in gen.parameters())  # the fake was detached
    assert set(stats) == {"loss_d", "d_real", "d_fake", "grad_norm_d"} and stats["grad_norm_d"] > 0


@pytest.mark.parametrize("loss", GAN_LOSSES)
def test_g_step_updates_only_g(loss):
    gen, disc = nets()
    opt = torch.optim.SGD([*gen.parameters(), *disc.parameters()], lr=0.1)
    g0, d0 = snapshot(gen), snapshot(disc)
    real = torch.randn(6, 3)
    stats = generator_step(gen, disc, opt, gen(torch.randn(6, 4)), loss, real=real)
    assert changed(g0, gen) and not changed(d0, disc)
    assert all(p.grad is None for p in disc.parameters())  # D was frozen
    assert all(p.requires_grad for p in disc.parameters())  # and is trainable again
    assert stats["grad_norm_g"] > 0


def test_g_step_restores_frozen_parameters_as_they_were():
    gen, disc = nets()
    disc.body[0].weight.requires_grad_(False)  # a layer the caller froze on purpose
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    generator_step(gen, disc, opt, gen(torch.randn(6, 4)), "hinge")
    assert not disc.body[0].weight.requires_grad and disc.body[0].bias.requires_grad


def test_supervised_term_is_added():
    gen, disc = nets()
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.0)
    fake = gen(torch.randn(6, 4))
    stats = generator_step(gen, disc, opt_g, fake, "nonsaturating", 0.5, torch.tensor(2.0))
    assert stats["loss_g"] == pytest.approx(0.5 * stats["loss_adv"] + 2.0)


def test_wgan_clips_critic_weights():
    gen, disc = nets()
    opt_d = torch.optim.SGD(disc.parameters(), lr=10.0)
    discriminator_step(disc, opt_d, torch.randn(6, 3), gen(torch.randn(6, 4)), "wgan", clip=0.01)
    assert max(p.abs().max().item() for p in disc.parameters()) <= 0.01 + 1e-7


def test_feature_matching_needs_the_real_batch():
    gen, disc = nets()
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="feature matching needs the real batch"):
        generator_step(gen, disc, opt, gen(torch.randn(6, 4)), "feature-matching")


def test_feature_matching_step_moves_fake_features_toward_real_ones():
    from adseg.training.losses import feature_matching

    gen, disc = nets()
    opt = torch.optim.SGD(gen.parameters(), lr=0.05)
    z, real = torch.randn(16, 4), torch.randn(16, 3) + 2.0
    with torch.no_grad():
        before = feature_matching(disc.feature_map(real), disc.feature_map(gen(z))).item()
    for _ in range(20):
        generator_step(gen, disc, opt, gen(z), "feature-matching", real=real)
    with torch.no_grad():
        after = feature_matching(disc.feature_map(real), disc.feature_map(gen(z))).item()
    assert after < 0.5 * before


def test_instance_noise_changes_what_d_sees_and_zero_noise_does_not():
    gen, disc = nets()
    real, fake = torch.randn(6, 3), gen(torch.randn(6, 4)).detach()
    lr0 = torch.optim.SGD(disc.parameters(), lr=0.0)  # measure without updating
    clean = discriminator_step(disc, lr0, real, fake, "minimax")
    again = discriminator_step(disc, lr0, real, fake, "minimax", noise_std=0.0)
    torch.manual_seed(1)
    noisy = discriminator_step(disc, lr0, real, fake, "minimax", noise_std=1.0)
    assert again["loss_d"] == clean["loss_d"]
    assert noisy["loss_d"] != pytest.approx(clean["loss_d"], abs=1e-4)


def test_instance_noise_leaves_conditioning_channels_alone():
    x = torch.zeros(4, 3, 5, 5)
    out = noisy(x, 1.0, slice(1, 2))
    assert torch.equal(out[:, [0, 2]], x[:, [0, 2]]) and out[:, 1].std() > 0.5
    assert torch.equal(x, torch.zeros_like(x))  # the input is not changed in place
    assert noisy(x, 0.0, slice(1, 2)) is x


def test_grad_norm_is_the_norm_of_all_gradients_together():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3, bias=False))
    assert grad_norm(net) == 0.0  # no backward yet
    net(torch.rand(2, 3, 9, 9)).square().sum().backward()
    every = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert grad_norm(net) == pytest.approx(float(every.norm()), rel=1e-5)
