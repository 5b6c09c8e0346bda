"""Generators and discriminators for image synthesis GANs, by name.

Recipes:

- **DCGAN** (Radford et al. 2016, *Unsupervised representation learning with deep
  convolutional GANs*): the generator maps a latent vector through transposed convolutions
  (kernel 4, stride 2) with batch norm and ReLU to a tanh image; the discriminator mirrors
  it with strided convolutions and LeakyReLU(0.2), no norm on its first layer, and weights
  drawn from N(0, 0.02) (:func:`dcgan_init`). The discriminator returns raw scores (logits):
  the losses apply the sigmoid. A WGAN critic (Arjovsky et al. 2017) is the same network; for
  WGAN-GP (Gulrajani et al. 2017) use ``norm="layer"`` or ``"none"``, since the gradient
  penalty is per sample and batch norm couples the samples of a batch.
- **Minibatch standard deviation** (Karras et al. 2018, *Progressive growing of GANs*): the
  discriminator sees how varied a group of samples is, which penalises mode collapse.
- **Feature matching** (Salimans et al. 2016, *Improved techniques for training GANs*): every
  discriminator has ``feature_map(x)``, its last hidden activation, for the generator to match.
- **pix2pix** (Isola et al. 2017, *Image-to-image translation with conditional adversarial
  networks*): a U-Net generator with tanh output and a PatchGAN discriminator that scores
  overlapping 70×70 patches (MONAI ``UNet`` and ``PatchDiscriminator``).
- **Conditional GAN** (Mirza & Osindero 2014): the class is fed as a one-hot vector appended
  to the latent (:func:`condition_latent`) and as constant one-hot maps appended to the image
  channels (:func:`condition_image`); conditional networks are the same classes built with
  ``latent_dim + K`` / ``in_channels + K`` inputs.
- **Toy MLPs** for the 2-D ring of Gaussians (Metz et al. 2017, *Unrolled GANs*), where mode
  collapse is visible at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

NORMS = ("batch", "instance", "layer", "none")
LEAKY = ("leakyrelu", {"negative_slope": 0.2})


def _monai_norm(norm: str) -> str | tuple | None:
    """MONAI's norm argument for one of :data:`NORMS`.

    ``layer`` is GroupNorm with one group: it normalises each sample over channels and
    positions on its own, so it keeps samples independent as a WGAN-GP critic needs.
    """
    choices = {"batch": "batch", "instance": "instance", "layer": ("group", {"num_groups": 1})}
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} unknown; choose from {', '.join(NORMS)}")
    return choices.get(norm)


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
        norm: one of :data:`NORMS`.
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
        mnorm = _monai_norm(norm)
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


class MinibatchStdDev(nn.Module):
    """Appends the spread of a group of samples as one more channel (Karras et al. 2018).

    The batch is split into groups of ``group_size`` samples (the largest divisor of the batch
    size not above it, so any batch works; a batch of 1 gets 0). For each group the standard
    deviation across its samples is averaged over channels and positions, and that number
    fills the new channel of each of the group's samples: ``(B, C, *S)`` to ``(B, C + 1, *S)``.
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        g = max(d for d in range(1, min(self.group_size, b) + 1) if b % d == 0)
        # sample i = a·(b/g) + m sits in group m, as in ProGAN's reshape
        y = x.reshape(g, b // g, *x.shape[1:])
        var = y.var(dim=0, correction=0)
        # eps keeps the gradient of sqrt finite where samples coincide; taking sqrt(eps) off
        # again makes identical samples (and a batch of 1) give exactly 0
        std = (var + self.eps).sqrt() - math.sqrt(self.eps)
        per_group = std.flatten(1).mean(dim=1).repeat(g)
        stat = per_group.view(b, 1, *(1,) * (x.dim() - 2)).expand(b, 1, *x.shape[2:])
        return torch.cat([x, stat.to(x.dtype)], dim=1)


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
        norm: one of :data:`NORMS`; ``layer`` or ``none`` for a WGAN-GP critic.
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
        mnorm = _monai_norm(norm)
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


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_WEIGHTED += (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)
_NORM_LAYERS += (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation, for ``net.apply(dcgan_init)``.

    Convolution, transposed convolution and linear weights ~ N(0, 0.02); affine weights of
    batch, group and instance norms ~ N(1, 0.02); all their biases 0. MONAI's ``normal_init``
    does the same but skips group and instance norm (and fails on a non-affine batch norm).
    """
    if isinstance(module, _WEIGHTED):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, _NORM_LAYERS) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


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
        norm: one of :data:`NORMS`.
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
            norm=_monai_norm(norm),
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
        norm: one of :data:`NORMS`, on every layer but the first.
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
        mnorm = _monai_norm(norm)
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


def _one_hot(y: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    if y.dim() != 1:
        raise ValueError(f"class labels must be (B,), got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"class labels must lie in [0, {classes}), got {y.tolist()}")
    return F.one_hot(y.long(), classes).to(dtype)


def condition_latent(z: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Conditional-GAN latent: ``z (B, L)`` and labels ``y (B,)`` to ``(B, L + classes)``."""
    return torch.cat([z, _one_hot(y, classes, z.dtype)], dim=1)


def condition_image(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Conditional-GAN image: ``x (B, C, *S)`` with one constant one-hot map per class appended,
    ``(B, C + classes, *S)``."""
    onehot = _one_hot(y, classes, x.dtype)
    maps = onehot.view(*onehot.shape, *(1,) * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
    return torch.cat([x, maps], dim=1)


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
