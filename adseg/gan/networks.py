"""Generators and discriminators for image synthesis GANs, by name.

Recipes:

- **DCGAN** (Radford et al. 2016, *Unsupervised representation learning with deep
  convolutional GANs*): the generator maps a latent vector through transposed convolutions
  (kernel 4, stride 2) with batch norm and ReLU to a tanh image; the discriminator mirrors
  it with strided convolutions and LeakyReLU(0.2), no norm on its first layer, and weights
  drawn from N(0, 0.02) (:func:`~adseg.gan.blocks.dcgan_init`). The discriminator returns raw
  scores (logits): the losses apply the sigmoid. A WGAN critic (Arjovsky et al. 2017) is the
  same network; for WGAN-GP (Gulrajani et al. 2017) use ``norm="layer"`` or ``"none"``, since
  the gradient penalty is per sample and batch norm couples the samples of a batch.
- **Feature matching** (Salimans et al. 2016, *Improved techniques for training GANs*): every
  discriminator has ``feature_map(x)``, its last hidden activation, for the generator to match.
- **Toy MLPs** for the 2-D ring of Gaussians (Metz et al. 2017, *Unrolled GANs*), where mode
  collapse is visible at a glance.

The pix2pix U-Net generator and PatchGAN are in :mod:`adseg.gan.pix2pix`, registered here too;
minibatch standard deviation, initialisation, norms and conditional inputs are in
:mod:`adseg.gan.blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from adseg.gan.blocks import LEAKY, MinibatchStdDev, dcgan_init, monai_norm
from adseg.gan.pix2pix import PatchGANDiscriminator, UNetGenerator


def _check_dcgan_size(image_size: int, features: Sequence[int]) -> None:
    """DCGAN nets halve (or double) 4×4 once per feature: ``image_size == 4 * 2**len(features)``."""
    n = len(features)
    if n == 0:
        raise ValueError("features must name at least one channel count")
    if image_size == 4 * 2**n:
        return
    k = math.log2(image_size / 4) if image_size > 4 else 0
    hint = (
        f"image_size {image_size} needs {int(k)} features"
        if k >= 1 and k.is_integer()
        else "image_size must be 4·2**n for n features (8, 16, 32, 64, ...)"
    )
    raise ValueError(
        f"{n} features {tuple(features)} give image_size {4 * 2**n}, not {image_size}; {hint}"
    )


class DCGANGenerator(nn.Module):
    """DCGAN generator: latent ``(B, latent_dim)`` to image ``(B, out_channels, *S)`` in [-1, 1].

    ``S`` is ``image_size`` in each of ``spatial_dims`` dimensions (square or cubic images).
    A transposed convolution (kernel 4, stride 1, no padding) makes the 1×1 latent a 4×4 map
    with ``features[0]`` channels; each further feature doubles the size (kernel 4, stride 2,
    padding 1) with norm and ReLU; a last such layer goes to ``out_channels`` and tanh.

    Args:
        spatial_dims: 2 or 3.
        latent_dim: length of z (plus K for a conditional generator).
        out_channels: image channels.
        image_size: side of the output, ``4 * 2**len(features)`` voxels.
        features: channels per layer, from the 4×4 map upwards.
        norm: one of :data:`~adseg.gan.blocks.NORMS`.
    """

    def __init__(
        self,
        spatial_dims: int,
        latent_dim: int,
        out_channels: int,
        image_size: int,
        features: Sequence[int] = (256, 128, 64, 32),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        _check_dcgan_size(image_size, features)
        mnorm = monai_norm(norm)
        self.spatial_dims = spatial_dims
        channels = [latent_dim, *features]
        layers = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            layers.append(
                Convolution(
                    spatial_dims,
                    cin,
                    cout,
                    strides=1 if i == 0 else 2,
                    kernel_size=4,
                    padding=0 if i == 0 else 1,
                    output_padding=0,
                    is_transposed=True,
                    act="relu",
                    norm=mnorm,
                    # a norm's shift makes the bias redundant (DCGAN has none)
                    bias=mnorm is None,
                )
            )
        layers.append(
            Convolution(
                spatial_dims,
                features[-1],
                out_channels,
                strides=2,
                kernel_size=4,
                padding=1,
                output_padding=0,
                is_transposed=True,
                act="tanh",
                norm=None,
            )
        )
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim)`` to ``(B, out_channels, *S)``."""
        return self.net(z.view(*z.shape, *(1,) * self.spatial_dims))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: image ``(B, in_channels, *S)`` to raw scores ``(B,)``.

    Strided convolutions (kernel 4, stride 2, padding 1) with LeakyReLU(0.2), norm on all but
    the first, halve the image ``len(features)`` times to 4×4[×4]; then optionally the
    minibatch standard deviation; then a kernel-4 convolution to one score per sample. Scores
    are logits (or critic values): no sigmoid.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (plus K for a conditional discriminator).
        image_size: side of the input, ``4 * 2**len(features)`` voxels.
        features: channels per layer, from the input downwards.
        norm: one of :data:`~adseg.gan.blocks.NORMS`; ``layer`` or ``none`` for a WGAN-GP critic.
        minibatch_std: append :class:`MinibatchStdDev` before the last layer. It makes each
            score depend on the other samples of the group, by design.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        image_size: int,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: str = "batch",
        minibatch_std: bool = False,
    ) -> None:
        super().__init__()
        _check_dcgan_size(image_size, features)
        mnorm = monai_norm(norm)
        self.spatial_dims = spatial_dims
        self.image_size = image_size
        channels = [in_channels, *features]
        layers = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            # the first layer sees the raw image: DCGAN leaves it unnormalised
            layer_norm = None if i == 0 else mnorm
            layers.append(
                Convolution(
                    spatial_dims,
                    cin,
                    cout,
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    act=LEAKY,
                    norm=layer_norm,
                    bias=layer_norm is None,
                )
            )
        self.features = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev() if minibatch_std else nn.Identity()
        cin = features[-1] + int(minibatch_std)
        self.score = Convolution(
            spatial_dims, cin, 1, kernel_size=4, padding=0, conv_only=True, bias=True
        )
        self.apply(dcgan_init)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden activation ``(B, features[-1], 4, 4[, 4])``, before minibatch std."""
        expected = (self.image_size,) * self.spatial_dims
        if tuple(x.shape[2:]) != expected:
            raise ValueError(f"input of spatial size {tuple(x.shape[2:])}; expected {expected}")
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` to raw scores ``(B,)``."""
        return self.score(self.mbstd(self.feature_map(x))).flatten()


def _mlp(cin: int, hidden: int, layers: int, act: nn.Module) -> nn.Sequential:
    if layers < 1:
        raise ValueError(f"an MLP needs at least 1 hidden layer, got {layers}")
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(cin if i == 0 else hidden, hidden), act]
    return nn.Sequential(*blocks)


class MLPGenerator(nn.Module):
    """Toy generator: ``(B, latent_dim)`` to points ``(B, out_features)`` (ReLU, linear output)."""

    def __init__(
        self, latent_dim: int = 2, out_features: int = 2, hidden: int = 128, layers: int = 2
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _mlp(latent_dim, hidden, layers, nn.ReLU()), nn.Linear(hidden, out_features)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """Toy discriminator: points ``(B, in_features)`` to raw scores ``(B,)`` (LeakyReLU 0.2)."""

    def __init__(
        self, in_features: int = 2, hidden: int = 128, layers: int = 2, minibatch_std: bool = False
    ) -> None:
        super().__init__()
        self.hidden = _mlp(in_features, hidden, layers, nn.LeakyReLU(0.2))
        self.mbstd = MinibatchStdDev() if minibatch_std else nn.Identity()
        self.score = nn.Linear(hidden + int(minibatch_std), 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden activation ``(B, hidden)``."""
        return self.hidden(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.mbstd(self.feature_map(x))).squeeze(1)


GENERATORS: dict[str, type[nn.Module]] = {
    "dcgan": DCGANGenerator,
    "unet": UNetGenerator,
    "mlp": MLPGenerator,
}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "dcgan": DCGANDiscriminator,
    "patch": PatchGANDiscriminator,
    "mlp": MLPDiscriminator,
}


def build_generator(name: str, **kwargs) -> nn.Module:
    """A generator of :data:`GENERATORS` built with its own keyword arguments."""
    if name not in GENERATORS:
        raise ValueError(f"generator {name!r} unknown; choose from {', '.join(GENERATORS)}")
    return GENERATORS[name](**kwargs)


def build_discriminator(name: str, **kwargs) -> nn.Module:
    """A discriminator of :data:`DISCRIMINATORS` built with its own keyword arguments."""
    if name not in DISCRIMINATORS:
        raise ValueError(f"discriminator {name!r} unknown; choose from {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[name](**kwargs)
