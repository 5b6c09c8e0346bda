"""ADDA's networks: the frozen source model (M_s, C), the target encoder M_t and the domain
discriminator D, with the two updates of :mod:`adseg.training.steps`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from adseg.training.engine import amp_enabled, autocast
from adseg.training.networks import LabelMapDiscriminator, split_segmentor, with_encoder
from adseg.training.steps import discriminator_step, generator_step


class Adapter:
    """M_s, C (frozen), the trained M_t and the domain discriminator D of one job."""

    def __init__(self, source_net: nn.Module, variant: str, config: dict, device) -> None:
        a = config["adda"]
        self.variant, self.a, self.device = variant, a, device
        self.source = source_net.to(device).eval().requires_grad_(False)
        self.enc_s, self.dec = split_segmentor(self.source)
        # M_t := M_s; its copy of C is never used (C∘M_t uses the source's C)
        self.target = copy.deepcopy(self.source)
        self.enc_t, _ = split_segmentor(self.target)
        self.enc_t.requires_grad_(True).train()
        self.opt_t = torch.optim.Adam(self.enc_t.parameters(), lr=a["lr"], betas=(0.5, 0.999))
        dims = config["train"]["network"]["spatial_dims"]
        channels = self._channels(config["train"]["patch_size"], device)
        norm = a["d_norm"]
        if norm == "auto":
            norm = "none" if a["loss"] == "wgan-gp" else "instance"
        features = a["feature_d_features"] if variant == "feature" else a["output_d_features"]
        self.disc = LabelMapDiscriminator(dims, channels, features, norm, "global").to(device)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=a["d_lr"], betas=(0.5, 0.999))
        self.amp = amp_enabled(device, config["train"]["amp"])
        self.autocast = autocast(device, config["train"]["amp"])

    def _channels(self, patch: list[int], device) -> int:
        with torch.no_grad():
            probe = torch.zeros(1, self._in_channels(), *patch, device=device)
            return int(self.represent(self.enc_s, probe).shape[1])

    def _in_channels(self) -> int:
        first = next(p for p in self.enc_s.parameters() if p.dim() > 2)
        return int(first.shape[1])

    def represent(self, encoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """What D sees of an image batch: the bottleneck (feature) or C's softmax (output)."""
        levels = encoder(image)
        if self.variant == "feature":
            return levels[-1].float()
        return torch.softmax(self.dec(levels).float(), dim=1)

    def step(self, source_image: torch.Tensor, target_image: torch.Tensor) -> dict[str, float]:
        """k steps of D (source real, target fake), then one step of M_t through frozen D."""
        a = self.a
        with torch.no_grad(), self.autocast():
            real = self.represent(self.enc_s, source_image)
        with self.autocast():
            fake = self.represent(self.enc_t, target_image)
        for _ in range(a["d_steps"]):
            d = discriminator_step(
                self.disc,
                self.opt_d,
                real,
                fake,
                a["loss"],
                a["real_label"],
                a["gp_weight"],
                a["clip"],
                self.autocast,
            )
        m = generator_step(
            self.enc_t, self.disc, self.opt_t, fake, a["loss"], autocast=self.autocast
        )
        return {
            "loss_d": d["loss_d"],
            "d_real": d["d_real"],
            "d_fake": d["d_fake"],
            "grad_norm_d": d["grad_norm_d"],
            "loss_m": m["loss_adv"],
            "grad_norm_m": m["grad_norm_g"],
        }

    def adapted_state(self) -> dict:
        """C∘M_t as the segmentor's state dict: the source network with M_t's weights."""
        return with_encoder(self.source.state_dict(), self.enc_t.state_dict())

    def state(self) -> dict:
        return {
            "encoder": self.enc_t.state_dict(),
            "opt_t": self.opt_t.state_dict(),
            "discriminator": self.disc.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.enc_t.load_state_dict(state["encoder"])
        self.opt_t.load_state_dict(state["opt_t"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["opt_d"])
