"""What the GAN tasks share: the job (a model, a fold), optimisers, instance-noise schedule,
divergence and collapse checks, and the epoch loop with checkpoints, resume and tracking.

A task's trainer (:class:`adseg.gan.synthesis.SynthesisTrainer`,
:class:`adseg.gan.translation.TranslationTrainer`) supplies one epoch of updates, its state
and its figures; :func:`run_epochs` does the rest the same way for both, as
:func:`adseg.training.segmentation.train_fold` does for the segmentation schemes (every
epoch reseeded from (seed, epoch), so a resumed CPU run repeats an uninterrupted one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from monai.utils import set_determinism
from torch import nn

from adseg import __version__
from adseg.data.splits import case_meta_from_dataset, validate_splits
from adseg.gan.settings import TASKS, job_settings, model_name, recipe
from adseg.io import read_json, write_text, write_tsv
from adseg.log import logger, progress
from adseg.training.losses import CRITIC_LOSSES, loss_floor
from adseg.training.segmentation import TrainingError, _resume_state, _save, pick_device

FORMAT = "adseg-gan"
# what a finished fold folder holds beside its checkpoints, removed when training starts afresh
RESULTS = (
    "evaluation.json",
    "samples.png",
    "examples.png",
    "metrics.tsv",
    "learning_curves.png",
)
FORMAT_VERSION = 1


class GanError(TrainingError):
    """A GAN diverged (non-finite loss), its D won outright, or its generator collapsed."""


@dataclass
class GanJob:
    """One GAN model trained on one fold's training patients, checked."""

    config: dict
    task: str
    model: str  # the recipe's name in gan.<task>.models
    fold: int
    preprocessed: Path
    splits: Path
    out: Path
    recipe: dict
    spec: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What results, the workflow and MLflow call the model (``synthesis-dcgan``)."""
        return model_name(self.task, self.model)

    @property
    def scheme(self) -> str:
        return self.name

    @property
    def section(self) -> dict:
        return self.config["gan"][self.task]


def make_job(
    config: dict,
    task: str,
    model: str,
    fold: int,
    preprocessed: str | Path,
    splits: str | Path,
    out: str | Path,
) -> GanJob:
    """Check a (task, model, fold) job against the config, cohort and splits.

    The spec starts with what every GAN model folder holds; the task adds its networks.

    Raises:
        ValueError: unknown task or model, a fold outside the splits.
        FileNotFoundError: the preprocessed folder lacks dataset.json or plans.json.
    """
    if task not in TASKS:
        raise ValueError(f"GAN task {task!r} unknown; choose from {', '.join(TASKS)}")
    preprocessed = Path(preprocessed)
    for required in ("dataset.json", "plans.json"):
        if not (preprocessed / required).is_file():
            raise FileNotFoundError(
                f"{preprocessed / required}: missing; run 'adseg preprocess' first"
            )
    r = recipe(config, task, model)
    dataset = read_json(preprocessed / "dataset.json")
    folds = validate_splits(read_json(splits), case_meta_from_dataset(dataset), str(splits))
    folds = folds["folds"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} is outside the splits: they have folds 0-{len(folds) - 1}")
    entry = folds[fold]
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": task,
        "name": model_name(task, model),
        "fold": fold,
        "recipe": r,
        # the held-out patients double as validation: GANs pick no checkpoint by them
        "train_cases": list(entry["train"]),
        "val_cases": list(entry["val"]),
    }
    return GanJob(config, task, model, fold, preprocessed, Path(splits), Path(out), r, spec)


def optimizers(r: dict, gen: nn.Module, disc: nn.Module | None):
    """G's and D's optimisers from a recipe: Adam with its betas, or RMSprop (WGAN);
    separate learning rates (TTUR)."""

    def make(params, lr):
        if r["optimizer"] == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        return torch.optim.Adam(params, lr=lr, betas=tuple(r["betas"]))

    opt_d = make(disc.parameters(), r["d_lr"]) if disc is not None else None
    return make(gen.parameters(), r["g_lr"]), opt_d


def noise_std(r: dict, epoch: int, epochs: int) -> float:
    """Instance noise for ``epoch`` (0-based): linear from ``instance_noise`` to 0 over
    ``noise_epochs`` (default: the whole run)."""
    span = r["noise_epochs"] or epochs
    return r["instance_noise"] * max(0.0, 1.0 - epoch / span)


def make_autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on CUDA when asked for and supported; a no-op elsewhere."""
    enabled = amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=enabled)


def check_epoch(history: list[dict], r: dict) -> None:
    """Stop a GAN that has diverged, whose D wins outright, or whose generator collapsed.

    Raises:
        GanError: naming what happened, the epoch and what to change.
    """
    row = history[-1]
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise GanError(
            f"non-finite {', '.join(bad)} at epoch {row['epoch']}; lower the learning rates "
            "(g_lr, d_lr) or use loss wgan-gp"
        )
    recent = history[-r["collapse_epochs"] :]
    if len(recent) < r["collapse_epochs"]:
        return
    if "loss_d" in row and r["loss"] not in CRITIC_LOSSES:
        floor = loss_floor(r["loss"], r["real_label"])
        if all(h["loss_d"] - floor < r["collapse_loss"] for h in recent):
            raise GanError(
                f"discriminator won outright: L_D within {r['collapse_loss']:g} of its floor "
                f"for {r['collapse_epochs']} epochs (D(real) {row['d_real']:.3g}, D(fake) "
                f"{row['d_fake']:.3g}); G gets no useful gradient. Try real_label 0.9, "
                "instance_noise, a lower d_lr or loss wgan-gp"
            )
    # no std_ratio (batches of one have no spread): no verdict
    if all(h.get("std_ratio") is not None and h["std_ratio"] < r["collapse_std"] for h in recent):
        raise GanError(
            f"generator collapsed: the spread of its outputs over a batch was below "
            f"{r['collapse_std']:g} of the real data's for {r['collapse_epochs']} epochs "
            f"(last {row['std_ratio']:.3g}). Try minibatch_std, a lower g_lr or loss wgan-gp"
        )


def spread(x: torch.Tensor) -> float | None:
    """Per-voxel standard deviation across a batch ``(B, ...)``, averaged over voxels; None
    for a batch of one, which has no spread."""
    return float(x.detach().float().std(dim=0).mean()) if x.shape[0] > 1 else None


def spread_ratio(fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """``{"std_ratio": spread(fake) / spread(real)}``, or nothing for batches of one."""
    f, r = spread(fake), spread(real)
    return {} if f is None or r is None else {"std_ratio": f / max(r, 1e-8)}


def fingerprint(job: GanJob) -> str:
    """What a checkpoint must share with the run that resumes it: the model's settings, the
    fold's cases and the preprocessed files they come from."""
    digest = hashlib.sha256()
    for case_id in sorted(job.spec["train_cases"] + job.spec["val_cases"]):
        for path in sorted((job.preprocessed / "imagesTr").glob(f"{case_id}_*.nii.gz")):
            digest.update(path.read_bytes())
    settings = job_settings(job.config, job.task, job.model)
    settings[job.task].pop("sample_every", None)  # figures only
    for key in ("device", "amp"):
        settings.pop(key, None)
    key = {"settings": settings, "spec": job.spec, "data": digest.hexdigest()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class Trainer(Protocol):
    """What :func:`run_epochs` needs of a task's trainer."""

    def run_epoch(self, loader, epoch: int, noise: float) -> dict[str, float]: ...
    def end_of_epoch(self, epoch: int, row: dict) -> list[Path]: ...
    def state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...


class GanTrainer:
    """The state a task's trainer keeps: G, D (None for L1-only translation) and their
    optimisers, saved and restored by name."""

    gen: nn.Module
    disc: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None

    def parts(self) -> dict:
        return {
            "generator": self.gen,
            "discriminator": self.disc,
            "opt_g": self.opt_g,
            "opt_d": self.opt_d,
        }

    def state(self) -> dict:
        """Weights and optimiser states, for ``checkpoint_last.pt``."""
        parts = self.parts().items()
        return {name: part.state_dict() for name, part in parts if part is not None}

    def load_state(self, state: dict) -> None:
        """Inverse of :meth:`state`."""
        for name, part in self.parts().items():
            if part is not None:
                part.load_state_dict(state[name])

    def weights(self) -> dict:
        """The networks' weights, for ``checkpoint_final.pt``."""
        state = self.state()
        return {k: state[k] for k in ("generator", "discriminator") if k in state}


def start(job: GanJob, resume: str, threads: int | None) -> tuple[torch.device, str, dict | None]:
    """Device, fingerprint and the checkpoint to resume from (``resume``: no, yes, auto)."""
    g = job.config["gan"]
    device = pick_device(g["device"], "gan.device")
    if device.type == "cpu":
        torch.set_num_threads(threads or g["threads"])
    key = fingerprint(job)
    state = _resume_state(job, resume, key)
    set_determinism(g["seed"])
    job.out.mkdir(parents=True, exist_ok=True)
    stale = ["model.json", "checkpoint_final.pt"]
    if state is None:  # a fresh start: nothing of an earlier run may survive beside it
        stale += [*RESULTS, "checkpoint_last.pt", "training_log.tsv"]
        shutil.rmtree(job.out / "samples", ignore_errors=True)
    for name in stale:
        (job.out / name).unlink(missing_ok=True)
    write_text(job.out / "config.yaml", yaml.safe_dump(job.config, sort_keys=False))
    return device, key, state


def run_epochs(
    job: GanJob,
    trainer: Trainer,
    loader,
    reseed,
    history: list[dict],
    key: str,
    columns: tuple[str, ...],
    show: bool,
    tracker=None,
    then: Callable[[], Any] | None = None,
) -> Any:
    """Train epoch by epoch from ``len(history)``, checking, logging and checkpointing each;
    then call ``then`` (an evaluation) and return what it returns.

    An error or interruption in either marks the tracker's run FAILED or KILLED first.

    Args:
        reseed: called with each epoch's seed before its updates (random transforms, samplers).
        columns: of ``training_log.tsv``.
        tracker: an :class:`adseg.tracking.FoldRun`, or None.
    """
    try:
        _epochs(job, trainer, loader, reseed, history, key, columns, show, tracker)
        return then() if then is not None else None
    except BaseException as err:
        if tracker is not None:
            tracker.fail(err)
        raise


def _epochs(job, trainer, loader, reseed, history, key, columns, show, tracker) -> None:
    s, seed = job.section, job.config["gan"]["seed"]
    for epoch in progress(
        range(len(history), s["epochs"]),
        f"{job.name} fold {job.fold}",
        total=s["epochs"] - len(history),
        enabled=show,
    ):
        t0 = time.perf_counter()
        epoch_seed = seed * 100_003 + epoch
        set_determinism(epoch_seed)
        reseed(epoch_seed)
        noise = noise_std(job.recipe, epoch, s["epochs"])
        stats = trainer.run_epoch(loader, epoch, noise)
        row = {"epoch": epoch + 1, **stats}
        if noise:
            row["instance_noise"] = noise
        figures = trainer.end_of_epoch(epoch, row)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        logger.info(epoch_message(row, s["epochs"]))
        if tracker is not None:
            tracker.epoch(row, None)
            for path in figures:
                tracker.artifact(path, "samples")
        write_tsv(job.out / "training_log.tsv", history, columns)
        check_epoch(history, job.recipe)
        _save(
            {
                "trainer": trainer.state(),
                "history": history,
                "fingerprint": key,
                "adseg_version": __version__,
            },
            job.out / "checkpoint_last.pt",
        )


def epoch_message(row: dict, epochs: int) -> str:
    """One log line per epoch."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for k in ("loss_d", "loss_g", "loss_l1", "d_real", "d_fake", "std_ratio"):
        if row.get(k) is not None:
            parts.append(f"{k} {row[k]:.4g}")
    for k in ("val_mae", "val_psnr", "val_ssim"):
        if row.get(k) is not None:
            parts.append(f"{k} {row[k]:.4g}")
    parts.append(f"{row['seconds']:.1f} s")
    return ", ".join(parts)


def mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of per-step statistics (a key missing from some steps averages the others)."""
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}
