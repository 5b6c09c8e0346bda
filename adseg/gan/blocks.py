"""What the GAN networks share: norms, DCGAN initialisation, minibatch standard deviation
and conditional inputs.

- **Minibatch standard deviation** (Karras et al. 2018, *Progressive growing of GANs*): the
  discriminator sees how varied a group of samples is, which penalises mode collapse.
- **Conditional GAN** (Mirza & Osindero 2014): the class is fed as a one-hot vector appended
  to the latent (:func:`condition_latent`) and as constant one-hot maps appended to the image
  channels (:func:`condition_image`); conditional networks are the same classes built with
  ``latent_dim + K`` / ``in_channels + K`` inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "layer", "none")
LEAKY = ("leakyrelu", {"negative_slope": 0.2})


def monai_norm(norm: str) -> str | tuple | None:
    """MONAI's norm argument for one of :data:`NORMS`.

    ``layer`` is GroupNorm with one group: it normalises each sample over channels and
    positions on its own, so it keeps samples independent as a WGAN-GP critic needs.
    """
    choices = {"batch": "batch", "instance": "instance", "layer": ("group", {"num_groups": 1})}
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} unknown; choose from {', '.join(NORMS)}")
    return choices.get(norm)


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
