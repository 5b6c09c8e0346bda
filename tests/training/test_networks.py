"""Segmentor registry and the label-map discriminator: shapes and input variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adseg.training.networks import (
    SEGMENTORS,
    LabelMapDiscriminator,
    build_segmentor,
    discriminator_channels,
    discriminator_input,
)

FEATURES = {"BasicUNet": (4, 4, 8, 8, 16, 4)}


@pytest.mark.parametrize("name", list(SEGMENTORS))
@pytest.mark.parametrize("dims", [2, 3])
def test_segmentors_map_images_to_class_logits(name, dims):
    net = build_segmentor(
        name, dims, in_channels=3, out_channels=2, features=FEATURES.get(name, (4, 8, 16))
    )
    shape = (2, 3) + (32,) * dims
    out = net.eval()(torch.randn(shape))
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.shape == (2, 2) + (32,) * dims


def test_bad_segmentor_choices():
    with pytest.raises(
        ValueError, match="network 'VNet2' unknown; choose from UNet, BasicUNet, DynUNet, SegResNet"
    ):
        build_segmentor("VNet2", 2, 3, 2, (4, 8))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        build_segmentor("UNet", 4, 3, 2, (4, 8))
    with pytest.raises(ValueError, match="BasicUNet needs 6 feature sizes"):
        build_segmentor("BasicUNet", 2, 3, 2, (4, 8))


def test_discriminator_input_variants():
    image = torch.randn(2, 3, 8, 8)
    labels = torch.softmax(torch.randn(2, 2, 8, 8), dim=1)
    assert discriminator_input("labels", image, labels).shape == (2, 2, 8, 8)
    assert discriminator_input("image+labels", image, labels).shape == (2, 5, 8, 8)
    product = discriminator_input("product", image, labels)
    assert product.shape == (2, 6, 8, 8)
    # channel c·K + k is image channel c times class k
    torch.testing.assert_close(product[:, 1 * 2 + 1], image[:, 1] * labels[:, 1])
    for mode, n in (("labels", 2), ("image+labels", 5), ("product", 6)):
        assert discriminator_channels(mode, 3, 2) == n
    with pytest.raises(ValueError, match="choose from labels, image\\+labels, product"):
        discriminator_input("concat", image, labels)


@pytest.mark.parametrize("dims", [2, 3])
def test_discriminator_scores_each_sample(dims):
    d = LabelMapDiscriminator(dims, in_channels=5, features=(8, 16))
    assert d(torch.randn((3, 5) + (16,) * dims)).shape == (3,)


@pytest.mark.parametrize("dims", [2, 3])
def test_patch_discriminator_scores_each_region(dims):
    d = LabelMapDiscriminator(dims, in_channels=5, features=(8, 16), output="patch")
    # two stride-2 layers: 16 voxels per side become 4
    assert d(torch.randn((3, 5) + (16,) * dims)).shape == (3, 4**dims)
    # without instance norm (whose statistics span the whole map) a region's score depends
    # on its own neighbourhood only
    d = LabelMapDiscriminator(dims, in_channels=5, features=(8, 16), norm="none", output="patch")
    x = torch.randn((1, 5) + (16,) * dims)
    y = x.clone()
    y[(0, slice(None)) + (slice(12, 16),) * dims] += 5.0
    changed = (d(x) != d(y))[0]
    assert changed.any() and not changed.all()
    with pytest.raises(ValueError, match="choose from patch, global"):
        LabelMapDiscriminator(dims, 5, output="pixel")


def test_critic_without_normalisation_has_no_norm_layers():
    critic = LabelMapDiscriminator(2, 2, features=(8, 16, 32), norm="none")
    norms = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)
    assert not [m for m in critic.modules() if isinstance(m, norms)]
    with_bn = LabelMapDiscriminator(2, 2, features=(8, 16, 32), norm="batch")
    assert [m for m in with_bn.modules() if isinstance(m, nn.BatchNorm2d)]
    with pytest.raises(ValueError, match="choose from batch, instance, none"):
        LabelMapDiscriminator(2, 2, norm="spectral")
