"""Adversarial losses on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from adseg.training.losses import (
    ADVERSARIAL_LOSSES,
    GAN_LOSSES,
    check_loss,
    discriminator_loss,
    feature_matching,
    generator_loss,
    gradient_penalty,
    loss_floor,
)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def test_minimax_and_nonsaturating_discriminator():
    expected = -sum(math.log(sig(r)) for r in REAL.tolist()) / 2
    expected += -sum(math.log(1 - sig(f)) for f in FAKE.tolist()) / 2
    for name in ("minimax", "nonsaturating"):
        assert discriminator_loss(name, REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_one_sided_label_smoothing():
    t = 0.9
    expected = (
        -sum(t * math.log(sig(r)) + (1 - t) * math.log(1 - sig(r)) for r in REAL.tolist()) / 2
    )
    expected += -sum(math.log(1 - sig(f)) for f in FAKE.tolist()) / 2
    loss = discriminator_loss("minimax", REAL, FAKE, real_target=t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_generator_losses():
    mm = sum(math.log(1 - sig(f)) for f in FAKE.tolist()) / 2
    ns = -sum(math.log(sig(f)) for f in FAKE.tolist()) / 2
    assert generator_loss("minimax", FAKE).item() == pytest.approx(mm, rel=1e-6)
    assert generator_loss("nonsaturating", FAKE).item() == pytest.approx(ns, rel=1e-6)
    assert generator_loss("lsgan", FAKE).item() == pytest.approx((0.25 + 16) / 4, rel=1e-6)
    for name in ("hinge", "wgan", "wgan-gp"):
        assert generator_loss(name, FAKE).item() == pytest.approx(1.25)


def test_nonsaturating_gradient_is_stronger_where_d_rejects_the_fake():
    # Goodfellow 2014: with D(G(z)) near 0, log(1 - D) saturates, -log D does not
    fake = torch.tensor([-6.0], requires_grad=True)
    generator_loss("minimax", fake).backward()
    weak = fake.grad.abs().item()
    fake.grad = None
    generator_loss("nonsaturating", fake).backward()
    assert fake.grad.abs().item() > 100 * weak


def test_lsgan_hinge_wasserstein_discriminator():
    ls = 0.5 * ((1.0**2 + 2.0**2) / 2) + 0.5 * ((0.25 + 9) / 2)
    assert discriminator_loss("lsgan", REAL, FAKE).item() == pytest.approx(ls)
    hinge = (0 + 2.0) / 2 + (1.5 + 0) / 2
    assert discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(hinge)
    for name in ("wgan", "wgan-gp"):
        assert discriminator_loss(name, REAL, FAKE).item() == pytest.approx(-1.25 - 0.5)


def test_unknown_loss_lists_the_choices():
    with pytest.raises(
        ValueError, match="'bce2' unknown; choose from " + ", ".join(ADVERSARIAL_LOSSES)
    ):
        discriminator_loss("bce2", REAL, FAKE)


def test_gradient_penalty_zero_for_unit_gradient_critic():
    torch.manual_seed(0)
    w = torch.randn(12)
    w = w / w.norm()  # a linear critic with ‖∇D‖ = 1 everywhere
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    gp = gradient_penalty(lambda x: x.flatten(1) @ w, real, fake)
    assert gp.item() == pytest.approx(0.0, abs=1e-10)
    # gradient norm 3 everywhere: penalty (3 - 1)² = 4
    gp3 = gradient_penalty(lambda x: 3 * (x.flatten(1) @ w), real, fake)
    assert gp3.item() == pytest.approx(4.0, rel=1e-5)


def test_gradient_penalty_is_differentiable_in_critic_weights():
    critic = torch.nn.Linear(4, 1)
    gp = gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(3, 4), torch.randn(3, 4))
    gp.backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_loss_floor_of_smoothed_targets():
    floor = loss_floor("nonsaturating", 0.9)
    assert floor == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    # the best a discriminator can do: sigmoid(real) = 0.9, sigmoid(fake) = 0
    best = discriminator_loss(
        "nonsaturating",
        torch.full((4,), math.log(9.0)),
        torch.full((4,), -50.0),
        real_target=0.9,
    )
    assert float(best) == pytest.approx(floor, abs=1e-6)
    assert loss_floor("nonsaturating", 1.0) == 0.0 and loss_floor("hinge", 0.9) == 0.0
    # feature matching trains D with the minimax loss, so it has the same floor
    assert loss_floor("feature-matching", 0.9) == pytest.approx(floor)


def test_feature_matching_is_the_squared_distance_of_batch_means():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # batch mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # batch mean (1, 1)
    # ((2 - 1)² + (3 - 1)²) / 2 entries
    assert feature_matching(real, fake).item() == pytest.approx(2.5)
    # same means, different samples: nothing to match (it ignores how samples spread)
    assert feature_matching(real, real.flip(0)).item() == 0.0


def test_feature_matching_d_loss_is_minimax():
    assert discriminator_loss("feature-matching", REAL, FAKE).item() == pytest.approx(
        discriminator_loss("minimax", REAL, FAKE).item()
    )


def test_gan_losses_extend_the_segmentation_ones():
    assert (*ADVERSARIAL_LOSSES, "feature-matching") == GAN_LOSSES
    # the segmentation schemes do not take feature matching (their D has no features API)
    with pytest.raises(ValueError, match="choose from minimax"):
        check_loss("feature-matching")
    assert check_loss("feature-matching", GAN_LOSSES) == "feature-matching"
