"""Tests for adseg.gan.networks, adseg.gan.pix2pix and adseg.gan.blocks: shapes in 2-D and
3-D, output ranges, size rules, minibatch std, initialisation, conditioning, registries and
per-sample independence of critics."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from adseg.gan.blocks import MinibatchStdDev, condition_image, condition_latent, dcgan_init
from adseg.gan.networks import (
    DISCRIMINATORS,
    GENERATORS,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    build_discriminator,
    build_generator,
)
from adseg.gan.pix2pix import PatchGANDiscriminator, UNetGenerator

DIMS = [2, 3]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _blow_up(net: nn.Module) -> None:
    """Scale every weight so that, without a tanh, outputs would leave [-1, 1]."""
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(100.0)


@pytest.mark.parametrize("dims", DIMS)
def test_dcgan_generator_shape_and_range(dims: int) -> None:
    g = DCGANGenerator(dims, latent_dim=8, out_channels=2, image_size=16, features=(16, 8))
    _blow_up(g)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, 2, *(16,) * dims)
    assert x.abs().max() <= 1.0
    assert x.abs().max() > 0.99  # saturated: the bound comes from tanh, not small weights


@pytest.mark.parametrize("norm", ["batch", "instance", "layer", "none"])
def test_dcgan_generator_norms(norm: str) -> None:
    g = DCGANGenerator(2, 4, 1, image_size=32, features=(16, 8, 8), norm=norm)
    assert g(torch.randn(2, 4)).shape == (2, 1, 32, 32)
    has_norm = any(
        isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) for m in g.modules()
    )
    assert has_norm == (norm != "none")


@pytest.mark.parametrize(
    "build",
    [
        lambda size, f: DCGANGenerator(2, 4, 1, image_size=size, features=f),
        lambda size, f: DCGANDiscriminator(2, 1, image_size=size, features=f),
    ],
    ids=["generator", "discriminator"],
)
def test_dcgan_image_size_mismatch_names_the_fix(
    build: Callable[[int, tuple[int, ...]], nn.Module],
) -> None:
    with pytest.raises(
        ValueError, match=r"give image_size 16, not 32; image_size 32 needs 3 features"
    ):
        build(32, (16, 8))
    with pytest.raises(ValueError, match=r"not 30; image_size must be 4·2\*\*n"):
        build(30, (16, 8))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("mbstd", [False, True])
def test_dcgan_discriminator_scores_and_features(dims: int, mbstd: bool) -> None:
    d = DCGANDiscriminator(
        dims, in_channels=2, image_size=16, features=(8, 16), minibatch_std=mbstd
    )
    x = torch.randn(4, 2, *(16,) * dims)
    assert d(x).shape == (4,)
    assert d.feature_map(x).shape == (4, 16, *(4,) * dims)


def test_dcgan_discriminator_rejects_wrong_input_size() -> None:
    d = DCGANDiscriminator(2, 1, image_size=16, features=(8, 16))
    with pytest.raises(ValueError, match=r"expected \(16, 16\)"):
        d(torch.randn(2, 1, 32, 32))


def test_dcgan_discriminator_scores_are_unbounded_logits() -> None:
    d = DCGANDiscriminator(2, 1, image_size=16, features=(8, 16), norm="none")
    _blow_up(d)
    scores = d(torch.randn(8, 1, 16, 16))
    assert scores.abs().max() > 1.0  # no sigmoid or tanh at the end


@pytest.mark.parametrize("norm", ["layer", "none", "instance"])
def test_per_sample_norm_keeps_scores_independent_of_batch(norm: str) -> None:
    d = DCGANDiscriminator(2, 1, image_size=16, features=(8, 16), norm=norm).train()
    x = torch.randn(4, 1, 16, 16)
    others = torch.cat([x[:2], 5 * torch.randn(2, 1, 16, 16) + 3])
    torch.testing.assert_close(d(x)[:2], d(others)[:2])
    torch.testing.assert_close(d(x)[:1], d(x[:1]))


def test_batch_norm_couples_scores_in_train_mode() -> None:
    d = DCGANDiscriminator(2, 1, image_size=16, features=(8, 16), norm="batch").train()
    x = torch.randn(4, 1, 16, 16)
    others = torch.cat([x[:2], 5 * torch.randn(2, 1, 16, 16) + 3])
    assert not torch.allclose(d(x)[:2], d(others)[:2], atol=1e-4)


def test_minibatch_std_shape_and_values() -> None:
    m = MinibatchStdDev(group_size=4)
    x = torch.randn(8, 3, 5, 5)
    y = m(x)
    assert y.shape == (8, 4, 5, 5)
    torch.testing.assert_close(y[:, :3], x)
    # groups are samples {0, 2, 4, 6} and {1, 3, 5, 7}; the channel is constant per sample
    expected = x.reshape(4, 2, 3, 5, 5).std(dim=0, correction=0).flatten(1).mean(1)
    # MinibatchStdDev's eps shifts the std by about sqrt(1e-8) = 1e-4
    torch.testing.assert_close(
        y[:, 3], expected.repeat(4).view(8, 1, 1).expand(8, 5, 5), atol=2e-4, rtol=0
    )
    assert (y[:, 3] > 0).all()


def test_minibatch_std_identical_samples_and_batch_one() -> None:
    m = MinibatchStdDev(group_size=4)
    same = torch.randn(1, 2, 3, 3).expand(4, 2, 3, 3)
    # sqrt(var + eps) - sqrt(eps) in float32: zero up to rounding on any CPU and BLAS
    assert m(same)[:, 2].abs().max() < 1e-6
    one = m(torch.randn(1, 2, 3, 3))
    assert one.shape == (1, 3, 3, 3)
    assert one[:, 2].abs().max() < 1e-6


def test_minibatch_std_odd_batch_uses_largest_divisor() -> None:
    m = MinibatchStdDev(group_size=4)
    x = torch.randn(6, 2)  # groups of 3 (6 % 4 != 0): samples {0, 2, 4} and {1, 3, 5}
    y = m(x)
    expected = x.reshape(3, 2, 2).std(dim=0, correction=0).mean(1).repeat(3)
    torch.testing.assert_close(y[:, 2], expected, atol=2e-4, rtol=0)
    assert y[0, 2] != y[1, 2]


def test_minibatch_std_gradient_is_finite_for_identical_samples() -> None:
    x = torch.ones(4, 2, 3, 3, requires_grad=True)
    MinibatchStdDev()(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dcgan_init_statistics() -> None:
    conv = nn.Conv2d(64, 64, 4)
    bn = nn.BatchNorm2d(4096)
    gn = nn.GroupNorm(1, 4096)
    for m in (conv, bn, gn):
        m.apply(dcgan_init)
    w = conv.weight.detach()
    assert abs(w.std().item() - 0.02) < 1e-3
    assert abs(w.mean().item()) < 1e-3
    assert torch.count_nonzero(conv.bias) == 0
    for norm in (bn, gn):
        assert abs(norm.weight.mean().item() - 1.0) < 2e-3
        assert abs(norm.weight.std().item() - 0.02) < 2e-3
        assert torch.count_nonzero(norm.bias) == 0


def test_dcgan_init_skips_non_affine_norm() -> None:
    net = nn.Sequential(nn.Conv2d(2, 2, 3), nn.InstanceNorm2d(2), nn.ConvTranspose2d(2, 2, 3))
    net.apply(dcgan_init)
    assert abs(net[2].weight.std().item() - 0.02) < 0.01


@pytest.mark.parametrize("dims", DIMS)
def test_unet_generator_shape_and_range(dims: int) -> None:
    g = UNetGenerator(dims, in_channels=2, out_channels=3, features=(8, 16, 16), dropout=0.5)
    _blow_up(g)
    y = g(torch.randn(2, 2, *(16,) * dims))
    assert y.shape == (2, 3, *(16,) * dims)
    assert y.abs().max() <= 1.0
    assert y.abs().max() > 0.99


def test_unet_generator_rejects_sizes_not_multiple_of_levels() -> None:
    g = UNetGenerator(2, 1, 1, features=(8, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        g(torch.randn(1, 1, 16, 18))


@pytest.mark.parametrize("dims", DIMS)
def test_patchgan_scores_and_features(dims: int) -> None:
    d = PatchGANDiscriminator(dims, in_channels=2, features=4, layers=2)
    x = torch.randn(2, 2, *(16,) * dims)
    # 16 // 4 = 4 after two halvings, minus 1 for each stride-1 kernel-4 convolution
    assert d(x).shape == (2, 2**dims)
    assert d.feature_map(x).shape == (2, 16, *(3,) * dims)


def test_patchgan_minimum_size() -> None:
    d = PatchGANDiscriminator(2, 1, features=4, layers=3, norm="instance")
    assert d(torch.randn(1, 1, 24, 24)).shape == (1, 1)
    with pytest.raises(ValueError, match="at least 24"):
        d(torch.randn(1, 1, 23, 40))


def test_patchgan_default_is_70x70() -> None:
    d = PatchGANDiscriminator(2, 1, features=4, norm="none").eval()
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    scores = d.net(x)[-1]
    scores[0, 0, 7, 7].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).flatten()
    assert rows.max() - rows.min() + 1 == 70


def test_patchgan_layer_norm_is_group_norm_with_one_group() -> None:
    d = PatchGANDiscriminator(2, 1, features=4, norm="layer")
    groups = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groups) == 3
    assert all(m.num_groups == 1 for m in groups)


def test_condition_latent() -> None:
    z = torch.randn(3, 5)
    y = torch.tensor([0, 2, 1])
    c = condition_latent(z, y, classes=3)
    assert c.shape == (3, 8)
    torch.testing.assert_close(c[:, :5], z)
    assert c[:, 5:].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize("dims", DIMS)
def test_condition_image(dims: int) -> None:
    x = torch.randn(2, 1, *(4,) * dims)
    c = condition_image(x, torch.tensor([1, 0]), classes=2)
    assert c.shape == (2, 3, *(4,) * dims)
    torch.testing.assert_close(c[:, :1], x)
    assert c[0, 1].eq(0).all() and c[0, 2].eq(1).all()
    assert c[1, 1].eq(1).all() and c[1, 2].eq(0).all()


def test_conditional_networks_take_the_extra_channels() -> None:
    g = DCGANGenerator(2, 4 + 3, 1, image_size=16, features=(8, 8))
    d = DCGANDiscriminator(2, 1 + 3, image_size=16, features=(8, 8))
    y = torch.tensor([0, 2])
    fake = g(condition_latent(torch.randn(2, 4), y, 3))
    assert d(condition_image(fake, y, 3)).shape == (2,)


def test_condition_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        condition_latent(torch.randn(2, 4), torch.tensor([0, 3]), 3)


def test_mlp_networks() -> None:
    g = MLPGenerator(latent_dim=3, out_features=2, hidden=16, layers=3)
    pts = g(torch.randn(5, 3))
    assert pts.shape == (5, 2)
    assert sum(isinstance(m, nn.Linear) for m in g.modules()) == 4
    for mbstd in (False, True):
        d = MLPDiscriminator(in_features=2, hidden=16, layers=2, minibatch_std=mbstd)
        assert d(pts).shape == (5,)
        assert d.feature_map(pts).shape == (5, 16)


def test_registries_build_by_name() -> None:
    assert set(GENERATORS) == {"dcgan", "unet", "mlp"}
    assert set(DISCRIMINATORS) == {"dcgan", "patch", "mlp"}
    g = build_generator(
        "dcgan", spatial_dims=2, latent_dim=4, out_channels=1, image_size=16, features=(8, 8)
    )
    assert isinstance(g, DCGANGenerator)
    assert isinstance(
        build_discriminator("patch", spatial_dims=2, in_channels=1), PatchGANDiscriminator
    )


def test_unknown_names_and_norms_list_the_choices() -> None:
    with pytest.raises(ValueError, match="generator 'gan' unknown; choose from dcgan, unet, mlp"):
        build_generator("gan")
    with pytest.raises(
        ValueError, match="discriminator 'x' unknown; choose from dcgan, patch, mlp"
    ):
        build_discriminator("x")
    choices = "choose from batch, instance, layer, none"
    with pytest.raises(ValueError, match=f"norm 'group' unknown; {choices}"):
        DCGANGenerator(2, 4, 1, 16, features=(8, 8), norm="group")
    with pytest.raises(ValueError, match=f"norm 'bn' unknown; {choices}"):
        DCGANDiscriminator(2, 1, 16, features=(8, 8), norm="bn")
    with pytest.raises(ValueError, match=choices):
        UNetGenerator(2, 1, 1, features=(8, 8), norm="bn")
    with pytest.raises(ValueError, match=choices):
        PatchGANDiscriminator(2, 1, norm="bn")
