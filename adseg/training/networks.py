"""Segmentors (MONAI networks, by name) and the discriminator of label maps.

The discriminator follows Luc et al. 2016 (*Semantic segmentation using adversarial
networks*) as used by Kohl et al. 2017: it scores a label map as expert-made (real, one-hot)
or segmentor-made (fake, softmax). Its input is one of three variants, see
:func:`discriminator_input`; the expert maps can be made as soft as S's own, see
:func:`real_label_maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

from adseg.training.schemes import SPLITTABLE_NETWORKS
from adseg.training.threshold import ThresholdRule

DISCRIMINATOR_INPUTS = ("labels", "image+labels", "product")
REAL_MAPS = ("onehot", "scaling", "smoothing")
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
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if name == "ThresholdRule":  # the threshold scheme's model, never train.network's choice
        return ThresholdRule(spatial_dims, in_channels, out_channels, features)
    if name not in SEGMENTORS:
        raise ValueError(f"network {name!r} unknown; choose from {', '.join(SEGMENTORS)}")
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


def real_label_maps(
    mode: str, onehot: torch.Tensor, fake: torch.Tensor, tau: float = 0.9, epsilon: float = 0.1
) -> torch.Tensor:
    """The expert maps D is shown as real, made as soft as the segmentor's own maps.

    Against one-hot expert maps and softmax fakes, D can win on softness (entropy) alone and
    teach S no shape. Luc et al. 2016 (*Semantic segmentation using adversarial networks*,
    §3.2, "scaling") give the real map the segmentor's softness: at each pixel ``i`` with true
    class ``l`` and S's probabilities ``s``,

    ``ȳ_il = max(τ, s_il)``,  ``ȳ_ic = s_ic · (1 − ȳ_il) / (1 − s_il)`` for ``c ≠ l``,

    so real and fake maps differ only where S gives the true class less than ``τ``. Where
    ``1 − s_il`` is ~0 the other classes share ``1 − ȳ_il`` (then ~0) equally.

    Args:
        mode: ``onehot`` (the expert map unchanged), ``scaling`` (Luc et al. 2016) or
            ``smoothing`` (label smoothing, ``(1 − ε)·y + ε/K``).
        onehot: expert maps, one-hot ``(B, K, *spatial)``.
        fake: S's softmax for the same images, ``(B, K, *spatial)``; only read, never
            differentiated through.
        tau: Luc et al.'s τ (0.9 in the paper), ``0 < τ < 1``.
        epsilon: ε of label smoothing, ``0 ≤ ε < 1``.

    Returns:
        ``(B, K, *spatial)`` maps summing to 1 over classes, detached from S's graph.
    """
    if mode not in REAL_MAPS:
        raise ValueError(f"real maps {mode!r} unknown; choose from {', '.join(REAL_MAPS)}")
    y = onehot.detach().to(fake.dtype)
    if mode == "onehot":
        return y
    if mode == "smoothing":
        return (1 - epsilon) * y + epsilon / y.shape[1]
    s = fake.detach()
    true = torch.clamp((s * y).sum(dim=1, keepdim=True), min=tau)
    others = s * (1 - y)
    # their sum is 1 − s_il, taken from the classes themselves so the result sums to 1
    rest = others.sum(dim=1, keepdim=True)
    uniform = (1 - y) / max(y.shape[1] - 1, 1)
    share = torch.where(rest > 1e-6, others / rest.clamp(min=1e-6), uniform)
    return y * true + share * (1 - true)


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


# --- the encoder/decoder split (ADDA) ---------------------------------------------------------
# Written against each network's own forward pass, module by module: the encoder holds the
# network's encoding modules under the same attribute names, so its state dict is the
# network's state dict restricted to them, and a target encoder's weights drop back into a
# copy of the network with a plain dict update (see `with_encoder`).

SPLITTABLE = SPLITTABLE_NETWORKS


class SegResNetEncoder(nn.Module):
    """M of a MONAI SegResNet: ``convInit`` then the ``down_layers`` (``SegResNet.encode``).

    Returns the feature map of every level, shallow to deep; the last is the bottleneck.
    """

    def __init__(self, net: SegResNet) -> None:
        super().__init__()
        if net.dropout_prob is not None:
            raise ValueError("SegResNet with dropout: the encoder split does not cover it")
        self.convInit = net.convInit  # noqa: N815 - MONAI's attribute name, kept for the keys
        self.down_layers = net.down_layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.convInit(x)
        levels = []
        for down in self.down_layers:
            x = down(x)
            levels.append(x)
        return levels


class SegResNetDecoder(nn.Module):
    """C of a MONAI SegResNet: upsampling with additive skips, then the final convolution
    (``SegResNet.decode``)."""

    def __init__(self, net: SegResNet) -> None:
        super().__init__()
        self.up_samples = net.up_samples
        self.up_layers = net.up_layers
        self.conv_final = net.conv_final if net.use_conv_final else None

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        skips = levels[::-1]
        x = skips[0]
        for i, (up, layer) in enumerate(zip(self.up_samples, self.up_layers, strict=True)):
            x = layer(up(x) + skips[i + 1])
        return self.conv_final(x) if self.conv_final is not None else x


class BasicUNetEncoder(nn.Module):
    """M of a MONAI BasicUNet: ``conv_0`` and ``down_1`` … ``down_4`` (five levels)."""

    def __init__(self, net: BasicUNet) -> None:
        super().__init__()
        self.conv_0, self.down_1, self.down_2 = net.conv_0, net.down_1, net.down_2
        self.down_3, self.down_4 = net.down_3, net.down_4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return [x0, x1, x2, x3, self.down_4(x3)]


class BasicUNetDecoder(nn.Module):
    """C of a MONAI BasicUNet: ``upcat_4`` … ``upcat_1`` with the skips, then ``final_conv``."""

    def __init__(self, net: BasicUNet) -> None:
        super().__init__()
        self.upcat_4, self.upcat_3 = net.upcat_4, net.upcat_3
        self.upcat_2, self.upcat_1 = net.upcat_2, net.upcat_1
        self.final_conv = net.final_conv

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = levels
        u = self.upcat_4(x4, x3)
        u = self.upcat_3(u, x2)
        u = self.upcat_2(u, x1)
        return self.final_conv(self.upcat_1(u, x0))


def split_segmentor(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The encoder M and decoder C of a segmentor, sharing its modules (and parameters).

    ``decoder(encoder(x))`` equals ``net(x)``; the encoder returns the feature map of every
    level (the skips the decoder needs), the last being the bottleneck.

    Raises:
        ValueError: the network has no encoder/decoder split here (see :data:`SPLITTABLE`).
    """
    if isinstance(net, SegResNet):
        return SegResNetEncoder(net), SegResNetDecoder(net)
    if isinstance(net, BasicUNet):
        return BasicUNetEncoder(net), BasicUNetDecoder(net)
    raise ValueError(
        f"{type(net).__name__} has no explicit encoder/decoder split; use one of "
        f"{', '.join(SPLITTABLE)} (MONAI's UNet nests its levels recursively)"
    )


def with_encoder(network_state: dict, encoder_state: dict) -> dict:
    """A segmentor's state dict with its encoder's weights replaced (keys are shared)."""
    unknown = set(encoder_state) - set(network_state)
    if unknown:
        raise ValueError(f"encoder weights not in the network: {sorted(unknown)[:3]}")
    return {**network_state, **encoder_state}
