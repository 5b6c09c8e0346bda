"""Segmentor training with the schemes of Kohl et al. 2017, one cross-validation fold per call.

Schemes (``SCHEMES``):

- ``ce``: multi-class cross-entropy L_mce (optional class weights);
- ``dicece``: Dice + cross-entropy (MONAI ``DiceCELoss``), an extra baseline;
- ``adversarial``: the segmentor S minimises only L_S, the adversarial loss of fooling the
  discriminator D of label maps; D minimises L_D (expert one-hot maps real, S's softmax fake);
- ``hybrid``: S minimises λ·L_mce + L_S (λ = ``adversarial.hybrid_weight``, ½ as in Kohl).

Every epoch reseeds from (seed, epoch), so a run resumed from its last checkpoint repeats the
uninterrupted run exactly on CPU. A non-finite loss or a discriminator that has collapsed
stops training with :class:`TrainingError`; the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import get_track_meta, set_track_meta
from monai.losses import DiceCELoss
from monai.utils import set_determinism

from adseg import __version__
from adseg.evaluation.metrics import dice
from adseg.inference.modelfolder import FORMAT, FORMAT_VERSION, build_discriminator
from adseg.inference.sliding import (
    discriminator_score,
    make_inferer,
    one_hot,
    predict_probabilities,
)
from adseg.io import atomic_path, read_json, write_json, write_text, write_tsv
from adseg.log import logger, progress
from adseg.training.job import TrainJob, check_job
from adseg.training.loader import case_items, training_loader, validation_dataset
from adseg.training.losses import CRITIC_LOSSES, loss_floor
from adseg.training.networks import build_segmentor, discriminator_input
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


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss) or the discriminator collapsed."""


def pick_device(choice: str, setting: str = "train.device") -> torch.device:
    """``auto`` takes CUDA when available; ``cuda`` without a GPU is an error naming
    ``setting`` (the option or config key the choice came from)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} is cuda, but PyTorch sees no CUDA device")
    auto = choice == "auto"
    if auto:
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if auto and choice == "cpu" and visible and visible != "-1":
        # a scheduler (Slurm's --gpus, gres) gave this job GPUs that torch cannot use
        logger.warning(
            "running on cpu although CUDA_VISIBLE_DEVICES=%s: %s",
            visible,
            "torch is a CPU build"
            if torch.version.cuda is None
            else "torch sees no CUDA device (driver?)",
        )
    return torch.device(choice)


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


class Trainer:
    """The segmentor (and discriminator) of one job, their optimisers and one epoch's steps."""

    def __init__(self, job: TrainJob, device: torch.device) -> None:
        self.job, self.device = job, device
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
        self.ce_weight = torch.tensor(weights, device=device) if weights else None
        self.dicece = DiceCELoss(to_onehot_y=True, softmax=True, weight=self.ce_weight)
        self.adversarial = job.spec.get("discriminator") is not None
        self.disc = self.opt_d = None
        if self.adversarial:
            self.disc = build_discriminator(job.spec).to(device)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=a["d_lr"], betas=(0.5, 0.999))
        amp = t["amp"] and device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = functools.partial(
            torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp
        )
        self.amp = amp

    def ce(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """L_mce (or Dice + CE for ``dicece``) of logits ``(B, K, ...)``, labels ``(B, 1, ...)``."""
        if self.job.scheme == "dicece":
            return self.dicece(logits.float(), label)
        return F.cross_entropy(logits.float(), label[:, 0].long(), weight=self.ce_weight)

    def supervised_step(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        """One step of S on the supervised loss alone (``ce``, ``dicece``, warm-up)."""
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
        d_real = discriminator_input(a["d_input"], image, real)
        d_fake = discriminator_input(a["d_input"], image, fake)
        for _ in range(a["d_steps"]):
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
            )
        ce = self.ce(logits, label)
        hybrid = self.job.scheme == "hybrid"
        g_stats = generator_step(
            self.segmentor,
            self.disc,
            self.opt_s,
            d_fake,
            a["loss"],
            supervised=a["hybrid_weight"] * ce if hybrid else None,
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
            bad = [k for k, v in stats.items() if not math.isfinite(v)]
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
        """Mean Dice over the held-out cases and foreground classes (preprocessed grid)."""
        return mean_dice(self.segmentor, dataset, inferer, self.job.spec, self.amp)

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


def data_hash(job: TrainJob) -> str:
    """SHA-256 of the fold's preprocessed image and label files (a changed case changes it)."""
    digest = hashlib.sha256()
    for item in case_items(job.preprocessed, job.spec["train_cases"] + job.spec["val_cases"]):
        for path in [*item["image"], item["label"]]:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def fingerprint(job: TrainJob) -> str:
    """What a checkpoint must share with the run that resumes it.

    The data (file contents), the settings and the epoch count (the learning-rate schedule
    depends on it); validation frequency, threads, workers and device may change.
    """
    train = {
        k: v
        for k, v in job.config["train"].items()
        if k not in ("val_every", "threads", "workers", "device", "amp")
    }
    key = {
        "scheme": job.scheme,
        "fold": job.fold,
        "train_cases": job.spec["train_cases"],
        "val_cases": job.spec["val_cases"],
        "train": train,
        "adversarial": job.config["adversarial"] if job.spec.get("discriminator") else None,
        "plan": job.plan.to_dict(),
        "data": data_hash(job),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _lr(base: float, epoch: int, epochs: int) -> float:
    """nnU-Net's polynomial decay: base · (1 − epoch/epochs)^0.9."""
    return base * (1.0 - epoch / epochs) ** 0.9


def _collapsed(history: list[dict], job: TrainJob) -> bool:
    """D's loss has stayed within ``collapse_loss`` of its floor for ``collapse_epochs`` epochs."""
    a = job.config["adversarial"]
    if a["loss"] in CRITIC_LOSSES:
        return False  # a critic's loss has no floor; NaN checks still apply
    floor = loss_floor(a["loss"], a["real_label"])
    recent = [h for h in history if h["phase"] == "adversarial"][-a["collapse_epochs"] :]
    return len(recent) == a["collapse_epochs"] and all(
        h["loss_d"] - floor < a["collapse_loss"] for h in recent
    )


def _resume_state(job: TrainJob, mode: str, key: str) -> dict | None:
    """The checkpoint to resume from, per ``mode`` (no, auto, yes); see :func:`train_fold`.

    ``key`` is this run's :func:`fingerprint`; the checkpoint must carry the same.
    """
    path = job.out / "checkpoint_last.pt"
    if mode == "no":
        return None
    if not path.is_file():
        if mode == "yes":
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != key:
        message = (
            f"{path}: checkpoint from another config (scheme, fold, splits, preprocessing or "
            "training settings differ)"
        )
        if mode == "yes":
            raise ValueError(message + "; remove the folder or train without --resume")
        logger.warning("%s; starting afresh", message)
        return None
    return state


def write_log(path: Path, history: list[dict]) -> None:
    """The per-epoch training log as TSV (empty cells where a value does not apply)."""
    write_tsv(path, history, LOG_COLUMNS)


def _epoch_message(h: dict, epochs: int) -> str:
    parts = [f"epoch {h['epoch']}/{epochs} [{h['phase']}]", f"loss_s {h['loss_s']:.4f}"]
    for key, label in (
        ("loss_d", "loss_d"),
        ("d_real", "D(real)"),
        ("d_fake", "D(fake)"),
        ("grad_norm_s", "|g_s|"),
        ("grad_norm_d", "|g_d|"),
        ("val_dice", "val Dice"),
    ):
        if h.get(key) is not None:
            parts.append(f"{label} {h[key]:.3f}")
    parts.append(f"{h['seconds']:.1f} s")
    return ", ".join(parts)


def train_fold(
    config: dict,
    scheme: str,
    fold: int,
    preprocessed: str | Path,
    splits: str | Path,
    out: str | Path,
    resume: str = "auto",
    show_progress: bool = True,
    tracker=None,
    domains: list[str] | None = None,
    name: str | None = None,
) -> dict:
    """Train one scheme on one fold and write its model folder ``out``.

    Args:
        config: a resolved config (train, adversarial sections used).
        resume: ``no`` starts afresh; ``yes`` continues from ``out/checkpoint_last.pt`` and
            fails if there is none or it is from another config; ``auto`` resumes when a
            matching checkpoint exists and starts afresh otherwise (what the workflow uses).
        tracker: an :class:`adseg.tracking.FoldRun` to log the run to MLflow, or None.
        domains: train and validate on the fold's cases of these scanner domains only (ADDA's
            source-only model and target oracle); None takes every case.
        name: what results and MLflow call the model (default: the scheme).

    Returns:
        The model spec written to ``model.json``.

    Raises:
        ValueError: bad settings, found before any training.
        TrainingError: divergence or discriminator collapse.
    """
    job = check_job(
        config, scheme, fold, Path(preprocessed), read_json(splits), Path(out), domains, name
    )
    t = config["train"]
    device = pick_device(t["device"])
    if device.type == "cpu":
        torch.set_num_threads(t["threads"])
    # computed once: it hashes every preprocessed file of the fold
    key = fingerprint(job)
    state = _resume_state(job, resume, key)
    set_determinism(t["seed"])
    trainer = Trainer(job, device)
    history: list[dict] = []
    best = {"dice": -math.inf, "epoch": 0}
    if state is not None:
        trainer.load_state(state["trainer"])
        history, best = state["history"], state["best"]
        logger.info("resuming %s fold %d after epoch %d", scheme, fold, len(history))
    _write_static(job, fresh=state is None)
    if tracker is not None:
        tracker.start(job, len(history) if state is not None else None, device, Path(splits))
    spec = job.spec
    axis, dims = spec["slice_axis"], spec["network"]["spatial_dims"]
    train_items = case_items(job.preprocessed, spec["train_cases"])
    loader, randomize = training_loader(
        train_items,
        spec["patch_size"],
        dims,
        axis,
        t["batch_size"],
        t["samples_per_case"],
        t["pos_fraction"],
        t["workers"],
        background=device.type == "cuda",
    )
    val_set = validation_dataset(case_items(job.preprocessed, spec["val_cases"]))
    inferer = make_inferer(dims, spec["patch_size"], axis, t["batch_size"])
    logger.info(
        "training %s fold %d on %s: %d cases, validating on %d; %s",
        scheme,
        fold,
        device,
        len(train_items),
        len(val_set),
        spec["network"]["name"],
    )
    # Cases are cached with their metadata; the per-epoch random transforms and the networks
    # need none of it, and a MetaTensor sends every torch call through Python (3.5x the
    # loading time of plain tensors, bench/run.py --only data)
    tracked = get_track_meta()
    set_track_meta(False)
    try:
        _train_epochs(
            job,
            trainer,
            loader,
            randomize,
            val_set,
            inferer,
            history,
            best,
            key,
            show_progress,
            tracker,
        )
    except BaseException as err:  # diverged, failed, interrupted or terminated
        if tracker is not None:
            tracker.fail(err)
        raise
    finally:
        set_track_meta(tracked)
    spec = _finish(job, trainer, history, best)
    if tracker is not None:
        tracker.finish(spec)
    return spec


def _train_epochs(
    job, trainer, loader, randomize, val_set, inferer, history, best, key, show, tracker
) -> None:
    t, a = job.config["train"], job.config["adversarial"]
    epochs = t["epochs"]
    for epoch in progress(
        range(len(history), epochs),
        f"{job.name} fold {job.fold}",
        total=epochs - len(history),
        enabled=show,
    ):
        t0 = time.perf_counter()
        # reseed per epoch: a resumed run draws the same patches as an uninterrupted one
        set_determinism(t["seed"] * 100_003 + epoch)
        randomize.set_random_state(seed=(t["seed"] * 100_003 + epoch) % 2**32)
        lr = _lr(t["lr"], epoch, epochs)
        for group in trainer.opt_s.param_groups:
            group["lr"] = lr
        warmup = trainer.adversarial and epoch < a["warmup_epochs"]
        stats = trainer.run_epoch(loader, epoch, warmup)
        row = {
            "epoch": epoch + 1,
            "phase": "adversarial" if trainer.adversarial and not warmup else "supervised",
            "lr_s": lr,
            **stats,
        }
        if (epoch + 1) % t["val_every"] == 0 or epoch + 1 == epochs:
            row["val_dice"] = trainer.validate(val_set, inferer)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        logger.info(_epoch_message(row, epochs))
        if tracker is not None:
            tracker.epoch(row, a["d_lr"] if trainer.adversarial else None)
        if _collapsed(history, job):
            write_log(job.out / "training_log.tsv", history)
            last = job.out / "checkpoint_last.pt"
            kept = (
                f"checkpoint before this epoch: {last}" if last.is_file() else "no checkpoint kept"
            )
            raise TrainingError(
                f"discriminator collapsed: L_D within {a['collapse_loss']:g} of its floor for "
                f"{a['collapse_epochs']} epochs (last D(real) {row['d_real']:.3g}, D(fake) "
                f"{row['d_fake']:.3g}); S gets no useful gradient. Try a lower adversarial.d_lr, "
                f"real_label 0.9, or loss wgan-gp (a new config starts afresh); {kept}"
            )
        if row.get("val_dice") is not None and row["val_dice"] > best["dice"]:
            best.update(dice=row["val_dice"], epoch=epoch + 1)
            _save(trainer.weights(), job.out / "checkpoint_best.pt")
        write_log(job.out / "training_log.tsv", history)
        _save(
            {
                "trainer": trainer.state(),
                "history": history,
                "best": best,
                "fingerprint": key,
                "adseg_version": __version__,
            },
            job.out / "checkpoint_last.pt",
        )


def _write_static(job: TrainJob, fresh: bool) -> None:
    """The parts of the model folder known before training: config and plans.

    A fresh start also removes what an earlier run left (best weights, log, checkpoint).
    """
    import yaml

    job.out.mkdir(parents=True, exist_ok=True)
    # a folder with model.json looks finished; it is not until this run writes it anew
    stale = ["model.json", "checkpoint_final.pt"]
    if fresh:
        stale += ["checkpoint_best.pt", "checkpoint_last.pt", "training_log.tsv"]
    for name in stale:
        (job.out / name).unlink(missing_ok=True)
    write_text(job.out / "config.yaml", yaml.safe_dump(job.config, sort_keys=False))
    write_json(job.out / "plans.json", job.plan.to_dict())


def quality_threshold(trainer: Trainer, job: TrainJob) -> float:
    """The 5th percentile of D's scores of the expert maps of the training cases.

    ``adseg predict`` flags a predicted map that D scores below this: it looks less like an
    expert annotation than 95 % of the expert annotations D was trained on.
    """
    spec = job.spec
    scores = []
    for item in validation_dataset(case_items(job.preprocessed, spec["train_cases"])):
        expert = one_hot(item["label"][0], trainer.classes)
        scores.append(
            discriminator_score(
                trainer.disc,
                spec["discriminator"]["input"],
                spec["network"]["spatial_dims"],
                spec["slice_axis"],
                item["image"],
                expert,
            )
        )
    return float(np.percentile(scores, 5))


def _finish(job: TrainJob, trainer: Trainer, history: list[dict], best: dict) -> dict:
    from adseg.plots import learning_curves

    spec = {
        **job.spec,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adseg_version": __version__,
        "epochs_trained": len(history),
        "best_epoch": best["epoch"],
        "best_val_dice": best["dice"] if best["epoch"] else None,
        "final_val_dice": history[-1].get("val_dice") if history else None,
    }
    if trainer.disc is not None:
        spec["quality_threshold"] = quality_threshold(trainer, job)
    _save(trainer.weights(), job.out / "checkpoint_final.pt")
    learning_curves(history, job.out / "learning_curves.png", f"{job.name} fold {job.fold}")
    # model.json last: its presence marks a complete folder
    write_json(job.out / "model.json", spec)
    return spec
