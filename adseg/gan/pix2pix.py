"""pix2pix networks (Isola et al. 2017, *Image-to-image translation with conditional
adversarial networks*): a U-Net generator with tanh output and a PatchGAN discriminator that
scores overlapping 70×70 patches (MONAI ``UNet`` and ``PatchDiscriminator``).

Both are also in the registries of :mod:`adseg.gan.networks` (``unet`` and ``patch``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

from adseg.gan.blocks import LEAKY, dcgan_init, monai_norm


class UNetGenerator(nn.Module):
    """pix2pix generator: a MONAI U-Net with tanh, ``(B, in, *S)`` to ``(B, out, *S)`` in [-1, 1].

    One convolution per level (``num_res_units=0``), as in pix2pix's U-Net, with LeakyReLU(0.2)
    and skip connections; each level halves the size, so every side of ``S`` must be a multiple
    of ``2**(len(features) - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the source image (plus K if conditional).
        out_channels: channels of the target image.
        features: channels per level (at least 2).
        dropout: dropout probability in every block (pix2pix uses 0.5 as its noise source).
        norm: one of :data:`~adseg.gan.blocks.NORMS`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"UNetGenerator needs at least 2 levels, got features {features}")
        self.multiple = 2 ** (len(features) - 1)
        self.unet = UNet(
            spatial_dims,
            in_channels,
            out_channels,
            channels=tuple(features),
            strides=(2,) * (len(features) - 1),
            num_res_units=0,
            act=LEAKY,
            norm=monai_norm(norm),
            dropout=dropout,
        )
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # odd sizes do not fail inside MONAI's UNet: the output just comes back larger
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(
                f"input of spatial size {tuple(x.shape[2:])}: every side must be a multiple of "
                f"{self.multiple} (2**(levels - 1))"
            )
        return torch.tanh(self.unet(x))


class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix): image ``(B, in_channels, *S)`` to patch scores ``(B, N)``.

    Wraps MONAI's ``PatchDiscriminator``: a stride-2 convolution without norm, ``layers - 1``
    more stride-2 and one stride-1 convolution with norm (channels ``features·2**i``), then a
    convolution to one score per patch; kernel 4, LeakyReLU(0.2). ``layers=3, features=64`` is
    the 70×70 PatchGAN. Each side of ``S`` must be at least ``3 * 2**layers`` (24 for
    ``layers=3``): ``layers`` halvings leave ``side // 2**layers``, which the two stride-1
    kernel-4 convolutions shrink by 2 and must leave at least 1.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (source + target for pix2pix, plus K if conditional).
        features: channels of the first layer.
        layers: strided layers after the first (``num_layers_d`` in MONAI).
        norm: one of :data:`~adseg.gan.blocks.NORMS`, on every layer but the first.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: int = 64,
        layers: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        mnorm = monai_norm(norm)
        self.min_size = 3 * 2**layers
        self.net = PatchDiscriminator(
            spatial_dims,
            channels=features,
            in_channels=in_channels,
            num_layers_d=layers,
            kernel_size=4,
            activation=LEAKY,
            norm=mnorm,
            # MONAI drops the bias only because a norm follows
            bias=mnorm is None,
        )
        # MONAI's normal_init (run by PatchDiscriminator) leaves GroupNorm at its default
        self.apply(dcgan_init)

    def _outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"input of spatial size {tuple(x.shape[2:])} too small: with "
                f"layers={self.net.num_layers_d} every side must be at least {self.min_size}"
            )
        return self.net(x)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Activation before the last layer ``(B, features·2**layers, *S')``."""
        return self._outputs(x)[-2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` to raw patch scores ``(B, N)``."""
        return self._outputs(x)[-1].flatten(1)
