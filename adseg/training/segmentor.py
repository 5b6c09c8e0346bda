"""The segmentor S (and discriminator D) of one training job and the schemes' updates.

What S minimises comes from the scheme's entry in :data:`adseg.training.schemes.SCHEMES`:

- a supervised scheme (``ce``, ``wce``, ``dicece``): the multi-class cross-entropy L_mce
  (optional class weights), L_mce weighted by the training patients' label frequencies
  (:func:`adseg.training.job.frequency_weights`), or MONAI's Dice + CE;
- ``adversarial``: only L_S, the adversarial loss of fooling the discriminator D of label maps;
  D minimises L_D (expert maps real, made as soft as S's by ``adversarial.real_maps``; S's
  softmax fake);
- ``hybrid``: λ·L_mce + L_S (λ = ``adversarial.hybrid_weight``, ½ as in Kohl et al. 2017);
- ``hybrid-frozen``: hybrid against a D that keeps its random initial weights (its losses are
  logged, never stepped): the control that shows whether hybrid's effect needs a D that learns.

:class:`SegmentorTrainer` is the segmentation study of :mod:`adseg.training.engine`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from adseg.checkpoint import save_checkpoint
from adseg.evaluation.metrics import dice
from adseg.inference.modelfolder import build_discriminator
from adseg.inference.sliding import predict_probabilities
from adseg.training.engine import (
    TrainingError,
    amp_enabled,
    autocast,
    epoch_line,
    non_finite,
)
from adseg.training.job import TrainJob
from adseg.training.losses import CRITIC_LOSSES, loss_floor
from adseg.training.networks import build_segmentor, discriminator_input, real_label_maps
from adseg.training.schemes import SCHEMES
from adseg.training.steps import discriminator_step, generator_step, grad_norm

LOG_COLUMNS = (
    "epoch",
    "phase",
    "loss_s",
    "loss_ce",
    "loss_adv",
    "loss_d",
    "d_real",
    "d_fake",
    "grad_norm_s",
    "grad_norm_d",
    "lr_s",
    "val_dice",
    "seconds",
)


def dice_per_class(truth: np.ndarray, pred: np.ndarray, classes: int) -> list[float]:
    """Dice of each foreground class; 1 where both masks are empty."""
    return [dice(truth == k, pred == k) for k in range(1, classes)]


@torch.inference_mode()
def mean_dice(net, dataset, inferer, spec: dict, amp: bool = False) -> float:
    """Mean Dice of ``net`` over labelled whole cases and foreground classes, on the
    preprocessed grid (``spec``: a model spec, for dimensions, slice axis and classes)."""
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    classes = spec["network"]["out_channels"]
    scores = []
    for item in dataset:
        probs = predict_probabilities([net], item["image"], inferer, dims, axis, amp=amp)
        pred = probs.argmax(0).numpy()
        scores += dice_per_class(item["label"][0].numpy().astype(int), pred, classes)
    return float(np.mean(scores)) if scores else math.nan


def poly_lr(base: float, epoch: int, epochs: int) -> float:
    """nnU-Net's polynomial decay: base · (1 − epoch/epochs)^0.9."""
    return base * (1.0 - epoch / epochs) ** 0.9


class SegmentorTrainer:
    """S (and D), their optimisers, one epoch's steps and the per-epoch checks of one job.

    Args:
        job: the checked job.
        device: where the networks run.

    Attributes set by the caller before :meth:`train_epoch` (not needed by the steps alone):
        loader, randomize: the training patches and their random transforms (reseeded per
            epoch).
        validation: ``(dataset, inferer)`` of the validation cases.
    """

    def __init__(self, job: TrainJob, device: torch.device) -> None:
        self.job, self.device = job, device
        self.scheme = SCHEMES[job.scheme]
        self.loader = self.randomize = self.validation = None
        t, a = job.config["train"], job.config["adversarial"]
        net = job.spec["network"]
        self.classes = net["out_channels"]
        self.segmentor = build_segmentor(
            net["name"], net["spatial_dims"], net["in_channels"], self.classes, net["features"]
        ).to(device)
        self.opt_s = torch.optim.Adam(
            self.segmentor.parameters(), lr=t["lr"], weight_decay=t["weight_decay"]
        )
        weights = t["class_weights"]
        if self.scheme.supervised == "wce":
            weights = job.spec["class_weights"]
        self.ce_weight = torch.tensor(weights, device=device) if weights else None
        self.dicece = DiceCELoss(to_onehot_y=True, softmax=True, weight=self.ce_weight)
        self.adversarial = job.spec.get("discriminator") is not None
        self.disc = self.opt_d = None
        if self.adversarial:
            self.disc = build_discriminator(job.spec).to(device)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=a["d_lr"], betas=(0.5, 0.999))
        self.autocast = autocast(device, t["amp"])
        self.amp = amp_enabled(device, t["amp"])
        self.best = {"dice": -math.inf, "epoch": 0}

    # --- the updates ------------------------------------------------------------------------

    def ce(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The scheme's supervised loss of logits ``(B, K, ...)``, labels ``(B, 1, ...)``."""
        if self.scheme.supervised == "dicece":
            return self.dicece(logits.float(), label)
        # ce, wce (self.ce_weight holds the frequency weights)
        return F.cross_entropy(logits.float(), label[:, 0].long(), weight=self.ce_weight)

    def supervised_step(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        """One step of S on the supervised loss alone (supervised schemes, warm-up)."""
        self.opt_s.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.ce(self.segmentor(image), label)
        loss.backward()
        norm = grad_norm(self.segmentor)
        self.opt_s.step()
        value = float(loss.detach())
        return {"loss_s": value, "loss_ce": value, "grad_norm_s": norm}

    def adversarial_step(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        """k steps of D on (expert, S) label maps, then one step of S through the frozen D."""
        a = self.job.config["adversarial"]
        with self.autocast():
            logits = self.segmentor(image)
        fake = torch.softmax(logits.float(), dim=1)
        real = F.one_hot(label[:, 0].long(), self.classes).movedim(-1, 1).float()
        # as soft as S's own maps (Luc et al.'s scaling by default), so D cannot win on softness
        real = real_label_maps(
            a["real_maps"], real, fake.detach(), a["real_tau"], a["real_epsilon"]
        )
        d_real = discriminator_input(a["d_input"], image, real)
        d_fake = discriminator_input(a["d_input"], image, fake)
        frozen = self.scheme.frozen_discriminator
        for _ in range(1 if frozen else a["d_steps"]):
            d_stats = discriminator_step(
                self.disc,
                self.opt_d,
                d_real,
                d_fake,
                a["loss"],
                a["real_label"],
                a["gp_weight"],
                a["clip"],
                self.autocast,
                update=not frozen,
            )
        ce = self.ce(logits, label)
        g_stats = generator_step(
            self.segmentor,
            self.disc,
            self.opt_s,
            d_fake,
            a["loss"],
            supervised=a["hybrid_weight"] * ce if self.scheme.hybrid else None,
            autocast=self.autocast,
        )
        return {
            "loss_s": g_stats["loss_g"],
            "loss_ce": float(ce.detach()),
            "loss_adv": g_stats["loss_adv"],
            "grad_norm_s": g_stats["grad_norm_g"],
            **d_stats,
        }

    def run_epoch(self, loader, epoch: int, warmup: bool) -> dict[str, float]:
        """One pass over the training patches; means of the step statistics."""
        self.segmentor.train()
        if self.disc is not None:
            self.disc.train()
        sums: dict[str, list[float]] = {}
        for i, batch in enumerate(loader):
            image = batch["image"].to(self.device, non_blocking=True)
            label = batch["label"].to(self.device, non_blocking=True)
            if self.adversarial and not warmup:
                stats = self.adversarial_step(image, label)
            else:
                stats = self.supervised_step(image, label)
            bad = non_finite(stats)
            if bad:
                raise TrainingError(
                    f"non-finite {', '.join(bad)} at epoch {epoch + 1}, iteration {i + 1} "
                    f"({', '.join(f'{k}={stats[k]}' for k in bad)}); lower train.lr or "
                    "adversarial.d_lr"
                )
            for k, v in stats.items():
                sums.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in sums.items()}

    def validate(self, dataset, inferer) -> float:
        """Mean Dice over the validation cases and foreground classes (preprocessed grid)."""
        return mean_dice(self.segmentor, dataset, inferer, self.job.spec, self.amp)

    # --- the engine's study -----------------------------------------------------------------

    def warmup(self, epoch: int) -> bool:
        """Epoch ``epoch`` (0-based) trains S alone before the adversarial game starts."""
        return self.adversarial and epoch < self.job.config["adversarial"]["warmup_epochs"]

    def train_epoch(self, epoch: int, seed: int) -> dict:
        t = self.job.config["train"]
        self.randomize.set_random_state(seed=seed % 2**32)
        lr = poly_lr(t["lr"], epoch, t["epochs"])
        for group in self.opt_s.param_groups:
            group["lr"] = lr
        warmup = self.warmup(epoch)
        stats = self.run_epoch(self.loader, epoch, warmup)
        phase = "adversarial" if self.adversarial and not warmup else "supervised"
        return {"phase": phase, "lr_s": lr, **stats}

    def end_epoch(self, epoch: int, row: dict, epochs: int) -> list:
        if (epoch + 1) % self.job.config["train"]["val_every"] == 0 or epoch + 1 == epochs:
            row["val_dice"] = self.validate(*self.validation)
        return []

    def check(self, history: list[dict]) -> None:
        """Stop a run whose D has collapsed; otherwise keep the best weights so far."""
        a, row = self.job.config["adversarial"], history[-1]
        if not self.scheme.frozen_discriminator and self.collapsed(history):
            last = self.job.out / "checkpoint_last.pt"
            kept = (
                f"checkpoint before this epoch: {last}" if last.is_file() else "no checkpoint kept"
            )
            raise TrainingError(
                f"discriminator collapsed: L_D within {a['collapse_loss']:g} of its floor for "
                f"{a['collapse_epochs']} epochs (last D(real) {row['d_real']:.3g}, D(fake) "
                f"{row['d_fake']:.3g}); S gets no useful gradient. Try a lower adversarial.d_lr, "
                f"real_label 0.9, or loss wgan-gp (a new config starts afresh); {kept}"
            )
        if row.get("val_dice") is not None and row["val_dice"] > self.best["dice"]:
            self.best.update(dice=row["val_dice"], epoch=row["epoch"])
            save_checkpoint(self.weights(), self.job.out / "checkpoint_best.pt")

    def collapsed(self, history: list[dict]) -> bool:
        """D's loss has stayed within ``collapse_loss`` of its floor for ``collapse_epochs``
        adversarial epochs (a critic's loss has no floor: never)."""
        a = self.job.config["adversarial"]
        if a["loss"] in CRITIC_LOSSES:
            return False
        floor = loss_floor(a["loss"], a["real_label"])
        recent = [h for h in history if h["phase"] == "adversarial"][-a["collapse_epochs"] :]
        return len(recent) == a["collapse_epochs"] and all(
            h["loss_d"] - floor < a["collapse_loss"] for h in recent
        )

    def message(self, row: dict, epochs: int) -> str:
        head = f"epoch {row['epoch']}/{epochs} [{row['phase']}], loss_s {row['loss_s']:.4f}"
        fields = [
            ("loss_d", "loss_d"),
            ("d_real", "D(real)"),
            ("d_fake", "D(fake)"),
            ("grad_norm_s", "|g_s|"),
            ("grad_norm_d", "|g_d|"),
            ("val_dice", "val Dice"),
        ]
        return epoch_line(head, row, fields)

    def tracked_row(self, row: dict) -> tuple[dict, float | None]:
        return row, self.job.config["adversarial"]["d_lr"] if self.adversarial else None

    def checkpoint(self) -> dict:
        return {"trainer": self.state(), "best": dict(self.best)}

    # --- states -----------------------------------------------------------------------------

    def state(self) -> dict:
        """Weights and optimiser states (what ``checkpoint_last.pt`` holds besides history)."""
        state = {"segmentor": self.segmentor.state_dict(), "opt_s": self.opt_s.state_dict()}
        if self.disc is not None:
            state |= {"discriminator": self.disc.state_dict(), "opt_d": self.opt_d.state_dict()}
        return state

    def load_state(self, state: dict) -> None:
        """Inverse of :meth:`state`."""
        self.segmentor.load_state_dict(state["segmentor"])
        self.opt_s.load_state_dict(state["opt_s"])
        if self.disc is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["opt_d"])

    def weights(self) -> dict:
        """Weights only (``checkpoint_final.pt`` / ``checkpoint_best.pt``)."""
        out = {"segmentor": self.segmentor.state_dict()}
        if self.disc is not None:
            out["discriminator"] = self.disc.state_dict()
        return out
