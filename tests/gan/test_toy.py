"""The ring-of-8-Gaussians mode test: geometry, metrics by hand, and short real training runs."""

from __future__ import annotations

import math

import pytest
import torch

from adseg.gan.networks import MLPDiscriminator, MLPGenerator
from adseg.gan.toy import (
    TOY_LOSSES,
    ToySettings,
    default_min_count,
    mode_metrics,
    ring_modes,
    sample_ring,
    train_toy,
)
from adseg.training.losses import GAN_LOSSES

STD = 0.02


def test_ring_modes_lie_on_the_circle_at_even_angles():
    modes = ring_modes(8, 2.0)
    assert modes.shape == (8, 2)
    torch.testing.assert_close(modes.norm(dim=1), torch.full((8,), 2.0))
    angles = torch.atan2(modes[:, 1], modes[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles, torch.arange(8) * math.pi / 4, atol=1e-6, rtol=0)
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    torch.testing.assert_close(ring_modes(4, 1.0), square, atol=1e-7, rtol=0)


def test_samples_all_at_one_mode_cover_one_mode():
    modes = ring_modes()
    samples = modes[3] + torch.tensor([[0.01, -0.01]]).repeat(100, 1)
    m = mode_metrics(samples, modes, STD)
    assert m["modes_covered"] == 1 and m["high_quality"] == 1.0
    assert m["counts"] == [0, 0, 0, 100, 0, 0, 0, 0]
    assert m["mean_distance"] == pytest.approx(0.01 * math.sqrt(2), rel=1e-4)


def test_points_far_from_every_mode_are_not_high_quality():
    modes = ring_modes()
    samples = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [2.0 + 3.5 * STD, 0.0]])
    m = mode_metrics(samples, modes, STD)
    assert m["high_quality"] == 0.0 and m["modes_covered"] == 0 and sum(m["counts"]) == 0


def test_three_sigma_is_the_high_quality_boundary():
    modes = ring_modes()
    samples = modes[0] + torch.tensor([[2.9 * STD, 0.0], [0.0, 3.1 * STD]])
    m = mode_metrics(samples, modes, STD)
    assert m["high_quality"] == 0.5 and m["counts"][0] == 1


def test_samples_at_every_centre_cover_all_modes():
    m = mode_metrics(ring_modes(), ring_modes(), STD)
    assert m["modes_covered"] == 8 and m["high_quality"] == 1.0 and m["min_count"] == 1
    assert m["mean_distance"] == pytest.approx(0.0, abs=1e-6)


def test_min_count_follows_veegan_20_of_2500():
    assert default_min_count(2500) == 20
    assert default_min_count(5000) == 40
    assert default_min_count(100) == 1 and default_min_count(8) == 1
    modes = ring_modes()
    for minority, covered in ((19, 1), (20, 2)):
        samples = torch.cat([modes[0].repeat(2500 - minority, 1), modes[5].repeat(minority, 1)])
        m = mode_metrics(samples, modes, STD)
        assert m["min_count"] == 20 and m["modes_covered"] == covered
        assert mode_metrics(samples, modes, STD, min_count=minority + 1)["modes_covered"] == 1


def test_non_finite_samples_are_counted_and_never_high_quality():
    modes = ring_modes()
    samples = torch.stack([modes[0], modes[1], torch.tensor([math.nan, 0.0]), modes[2] * math.inf])
    m = mode_metrics(samples, modes, STD)
    assert m["non_finite"] == 2 and m["high_quality"] == 0.5
    assert m["counts"] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert m["mean_distance"] == pytest.approx(0.0, abs=1e-6)


def test_sample_ring_covers_all_modes_with_gaussian_quality():
    samples = sample_ring(2500, torch.Generator().manual_seed(0))
    assert samples.shape == (2500, 2) and samples.dtype == torch.float32
    m = mode_metrics(samples, ring_modes(), STD)
    assert m["modes_covered"] == 8
    # a 2-D Gaussian puts 1 - exp(-9/2) = 98.9 % of its mass within 3σ (Rayleigh)
    assert m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert all(250 <= c <= 375 for c in m["counts"])  # 2500 / 8 = 312.5 each
    again = sample_ring(2500, torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_toy_networks_shapes_and_feature_map():
    torch.manual_seed(0)
    gen, disc = MLPGenerator(16, 2, 32, 2), MLPDiscriminator(2, 32, 3)
    points = gen(torch.randn(5, 16))
    assert points.shape == (5, 2)
    assert disc(points).shape == (5,) and disc.feature_map(points).shape == (5, 32)
    assert sum(isinstance(m, torch.nn.Linear) for m in disc.modules()) == 4


def test_recipes_follow_the_papers():
    wgan = ToySettings("wgan", lr_scale=1)
    assert (wgan.optimizer, wgan.lr_g, wgan.lr_d) == ("rmsprop", 5e-5, 5e-5)
    assert (wgan.clip, wgan.d_steps) == (0.01, 5)
    gp = ToySettings("wgan-gp", lr_scale=1)
    assert (gp.optimizer, gp.lr_g, gp.betas, gp.d_steps, gp.gp_weight) == (
        "adam",
        1e-4,
        (0.5, 0.9),
        5,
        10.0,
    )
    dcgan = ToySettings("nonsaturating", lr_scale=1)
    assert (dcgan.lr_g, dcgan.betas, dcgan.d_steps) == (2e-4, (0.5, 0.999), 1)
    assert ToySettings("wgan-gp").lr_d == pytest.approx(5 * 1e-4)  # the default lr_scale
    assert ToySettings("hinge", lr_g=3e-4).lr_g == 3e-4  # explicit rates are not scaled
    assert set(TOY_LOSSES) == set(GAN_LOSSES)


def test_unknown_loss_or_optimizer_fails_with_the_choices():
    with pytest.raises(ValueError, match="choose from .*wgan-gp.*feature-matching"):
        ToySettings("bce2")
    with pytest.raises(ValueError, match="choose from adam, rmsprop"):
        ToySettings("lsgan", optimizer="sgd")


@pytest.mark.parametrize("loss", TOY_LOSSES)
def test_every_loss_trains_a_few_steps(loss):
    result = train_toy(ToySettings(loss, steps=3, batch=32))
    assert result["steps_done"] == 3 and not result["diverged"]
    assert result["samples"].shape == (2500, 2) and result["metrics"]["n_samples"] == 2500
    assert math.isfinite(result["last"]["loss_d"]) and math.isfinite(result["last"]["loss_g"])
    assert result["history"]["step"][-1] == 3


def test_same_seed_same_run_and_threads_restored():
    threads = torch.get_num_threads()
    a = train_toy(ToySettings("wgan-gp", steps=10, batch=32, seed=4))
    b = train_toy(ToySettings("wgan-gp", steps=10, batch=32, seed=4))
    c = train_toy(ToySettings("wgan-gp", steps=10, batch=32, seed=5))
    assert torch.equal(a["samples"], b["samples"]) and not torch.equal(a["samples"], c["samples"])
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_training_moves_samples_to_the_modes(loss):
    # one seed's run depends on the CPU's float rounding (wgan-gp seed 1 at 300 steps: 0.85 of
    # its start on one x86-64 machine, 0.6 on another), so judge the median of three seeds;
    # measured on this project's machine at 600 steps: wgan-gp 0.61, 0.55, 0.44 and
    # nonsaturating 0.25, 0.43, 0.25 of the start
    ratios = []
    for seed in (1, 2, 3):
        before = train_toy(ToySettings(loss, steps=0, seed=seed))["metrics"]["mean_distance"]
        after = train_toy(ToySettings(loss, steps=600, seed=seed))["metrics"]["mean_distance"]
        # the untrained generator sits near the origin, about one radius (2) from every mode
        assert before > 1.5
        ratios.append(after / before)
    assert sorted(ratios)[1] < 0.75, ratios


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_absurd_learning_rate_is_flagged_not_raised(loss):
    result = train_toy(ToySettings(loss, steps=50, lr_g=1e10, lr_d=1e10))
    assert result["diverged"] and result["steps_done"] < 50
    last = result["last"]
    assert not (math.isfinite(last["loss_d"]) and math.isfinite(last["loss_g"]))
    assert result["metrics"]["non_finite"] == 2500 and result["metrics"]["high_quality"] == 0.0
