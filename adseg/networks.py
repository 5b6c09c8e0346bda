"""Segmentors (MONAI networks, by name) and the discriminator of label maps.

The discriminator follows Luc et al. 2016 (*Semantic segmentation using adversarial
networks*) as used by Kohl et al. 2017: it scores a label map as expert-made (real, one-hot)
or segmentor-made (fake, softmax). Its input is one of three variants, see
:func:`discriminator_input`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

DISCRIMINATOR_INPUTS = ("labels", "image+labels", "product")
NORMS = ("batch", "instance", "none")


def _unet(dims: int, cin: int, cout: int, features: Sequence[int]) -> nn.Module:
    return UNet(
        dims,
        cin,
        cout,
        channels=tuple(features),
        strides=(2,) * (len(features) - 1),
        num_res_units=2,
        norm="batch",
    )


def _basic_unet(dims: int, cin: int, cout: int, features: Sequence[int]) -> nn.Module:
    if len(features) != 6:
        raise ValueError(f"BasicUNet needs 6 feature sizes, got {len(features)}: {list(features)}")
    return BasicUNet(dims, cin, cout, features=tuple(features))


def _dynunet(dims: int, cin: int, cout: int, features: Sequence[int]) -> nn.Module:
    n = len(features)
    return DynUNet(
        dims,
        cin,
        cout,
        kernel_size=[3] * n,
        strides=[1] + [2] * (n - 1),
        upsample_kernel_size=[2] * (n - 1),
        filters=list(features),
        res_block=True,
    )


def _segresnet(dims: int, cin: int, cout: int, features: Sequence[int]) -> nn.Module:
    blocks = tuple(range(1, len(features) + 1))
    return SegResNet(
        dims,
        init_filters=features[0],
        in_channels=cin,
        out_channels=cout,
        blocks_down=blocks,
        blocks_up=(1,) * (len(features) - 1),
        # group norm (MONAI's default) needs channels divisible by 8; small CPU nets are not
        norm="instance",
    )


SEGMENTORS: dict[str, Callable[..., nn.Module]] = {
    "UNet": _unet,
    "BasicUNet": _basic_unet,
    "DynUNet": _dynunet,
    "SegResNet": _segresnet,
}


def build_segmentor(
    name: str, spatial_dims: int, in_channels: int, out_channels: int, features: Sequence[int]
) -> nn.Module:
    """A MONAI segmentor: ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

    Args:
        name: one of :data:`SEGMENTORS`.
        spatial_dims: 2 (slice-wise) or 3.
        features: channels per resolution level (BasicUNet: exactly 6).
    """
    if name not in SEGMENTORS:
        raise ValueError(f"network {name!r} unknown; choose from {', '.join(SEGMENTORS)}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return SEGMENTORS[name](spatial_dims, in_channels, out_channels, features)


def discriminator_input(mode: str, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the discriminator sees of an (image, label map) pair.

    Args:
        mode: ``labels`` (the label map alone), ``image+labels`` (concatenated along channels)
            or ``product`` (each image channel multiplied by each class channel).
        image: ``(B, C, *spatial)``.
        labels: one-hot or softmax maps ``(B, K, *spatial)``.

    Returns:
        ``(B, K)``, ``(B, C + K)`` or ``(B, C·K, *spatial)`` channels respectively.
    """
    if mode == "labels":
        return labels
    if mode == "image+labels":
        return torch.cat([image, labels], dim=1)
    if mode == "product":
        return (image.unsqueeze(2) * labels.unsqueeze(1)).flatten(1, 2)
    raise ValueError(
        f"discriminator input {mode!r} unknown; choose from {', '.join(DISCRIMINATOR_INPUTS)}"
    )


def discriminator_channels(mode: str, image_channels: int, classes: int) -> int:
    """Input channels of the discriminator for a given input variant."""
    sizes = {
        "labels": classes,
        "image+labels": image_channels + classes,
        "product": image_channels * classes,
    }
    if mode not in sizes:
        raise ValueError(
            f"discriminator input {mode!r} unknown; choose from {', '.join(DISCRIMINATOR_INPUTS)}"
        )
    return sizes[mode]


OUTPUTS = ("patch", "global")


class LabelMapDiscriminator(nn.Module):
    """A fully convolutional discriminator: strided convolutions, LeakyReLU(0.2), raw scores.

    ``output="global"`` gives one score per sample, ``(B,)``: features averaged over space,
    then a linear layer. ``output="patch"`` gives one score per location of the last feature
    map, ``(B, N)`` (PatchGAN, Isola et al. 2017): each region of the label map is judged on
    its own, so the segmentor gets a gradient from every region, not only through one global
    verdict. Scores are logits, or critic values for WGAN losses; losses average over all
    of them. With ``norm="none"`` there is no normalisation layer at all, as a WGAN-GP critic
    needs (the gradient penalty is per sample; batch norm couples the samples).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int] = (32, 64, 128),
        norm: str = "instance",
        output: str = "global",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"discriminator norm {norm!r} unknown; choose from {', '.join(NORMS)}")
        if output not in OUTPUTS:
            raise ValueError(
                f"discriminator output {output!r} unknown; choose from {', '.join(OUTPUTS)}"
            )
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(features):
            layers.append(
                Convolution(
                    spatial_dims,
                    cin,
                    cout,
                    strides=2,
                    kernel_size=3,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    # the first block sees the raw input: DCGAN leaves it unnormalised
                    norm=None if (norm == "none" or i == 0) else norm,
                )
            )
            cin = cout
        self.features = nn.Sequential(*layers)
        self.output = output
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.score = nn.Linear(cin, 1) if output == "global" else conv(cin, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.output == "patch":
            return self.score(h).flatten(1)
        return self.score(h.flatten(2).mean(dim=2)).squeeze(1)
