"""What the GAN tasks share: the job (a model, a fold), optimisers, instance-noise schedule,
divergence and collapse checks, and their part in the training engine's epoch loop.

A task's trainer (:class:`adseg.gan.synthesis.SynthesisTrainer`,
:class:`adseg.gan.translation.TranslationTrainer`) supplies one epoch of updates, its state
and its figures; :class:`GanTrainer` makes it a study of :mod:`adseg.training.engine`, which
runs the epochs as it does for the segmentation schemes and ADDA.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from adseg.config import without_result_neutral
from adseg.data.splits import case_meta_from_dataset, fold_cases
from adseg.gan.settings import TASKS, job_settings, model_name, recipe
from adseg.io import read_json, write_text
from adseg.preprocessing import store
from adseg.training import engine
from adseg.training.engine import TrainingError
from adseg.training.losses import CRITIC_LOSSES, loss_floor

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
    entry = fold_cases(read_json(splits), fold, case_meta_from_dataset(dataset), str(splits))
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": task,
        "name": model_name(task, model),
        "fold": fold,
        "recipe": r,
        # fitted on the inner training patients, followed per epoch on the inner validation
        # ones (GANs pick no checkpoint), measured on the held-out test patients
        "train_cases": list(entry["train"]),
        "val_cases": list(entry["val"]),
        "test_cases": list(entry["test"]),
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
    fold's cases and the preprocessed arrays they come from."""
    files = []  # the arrays its cases are read from (adseg.preprocessing.store)
    for case_id in sorted(job.spec["train_cases"] + job.spec["val_cases"] + job.spec["test_cases"]):
        files += store.case_files(job.preprocessed, case_id)
    settings = {"gan": job_settings(job.config, job.task, job.model)}
    return engine.fingerprint(
        {"settings": without_result_neutral(settings), "spec": job.spec}, files
    )


class GanTrainer:
    """What a task's trainer shares: G, D (None for L1-only translation) and their
    optimisers, saved and restored by name, and its part in the engine's epoch loop.

    A task's trainer adds ``run_epoch(loader, epoch, noise)`` (one epoch of updates, the
    means of the step statistics) and ``end_of_epoch(epoch, row)`` (figures and checks after
    it, their files); :func:`run` gives it ``loader`` and ``reseed`` (called with each epoch's
    seed: random transforms, samplers).
    """

    job: GanJob
    gen: nn.Module
    disc: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    loader: Any = None
    reseed: Callable[[int], Any] | None = None

    def train_epoch(self, epoch: int, seed: int) -> dict:
        self.reseed(seed)
        noise = noise_std(self.job.recipe, epoch, self.job.section["epochs"])
        row = self.run_epoch(self.loader, epoch, noise)
        if noise:
            row["instance_noise"] = noise
        return row

    def end_epoch(self, epoch: int, row: dict, epochs: int) -> list[Path]:
        return self.end_of_epoch(epoch, row)

    def check(self, history: list[dict]) -> None:
        check_epoch(history, self.job.recipe)

    def message(self, row: dict, epochs: int) -> str:
        return epoch_message(row, epochs)

    def tracked_row(self, row: dict) -> tuple[dict, None]:
        return row, None

    def checkpoint(self) -> dict:
        return {"trainer": self.state()}

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
    key = fingerprint(job)
    device, state = engine.begin(
        job.out, g["device"], "gan.device", threads or g["threads"], g["seed"], resume, key
    )
    # a fresh start: nothing of an earlier run may survive beside it
    always = ["model.json", "checkpoint_final.pt"]
    engine.clear(job.out, state is None, always, [*RESULTS, engine.CHECKPOINT, engine.LOG])
    if state is None:
        shutil.rmtree(job.out / "samples", ignore_errors=True)
    write_text(job.out / "config.yaml", yaml.safe_dump(job.config, sort_keys=False))
    return device, key, state


def run(
    job: GanJob,
    trainer: GanTrainer,
    loader,
    reseed: Callable[[int], Any],
    history: list[dict],
    key: str,
    columns: tuple[str, ...],
    show: bool,
    tracker=None,
    then: Callable[[], Any] | None = None,
) -> Any:
    """Train epoch by epoch from ``len(history)`` (:func:`adseg.training.engine.run_epochs`),
    then call ``then`` (an evaluation) and return what it returns.

    An error or interruption in either marks the tracker's run FAILED or KILLED first.

    Args:
        reseed: called with each epoch's seed before its updates (random transforms, samplers).
        columns: of ``training_log.tsv``.
        tracker: an :class:`adseg.tracking.FoldRun`, or None.
    """
    trainer.loader, trainer.reseed = loader, reseed
    loop = engine.Loop(
        f"{job.name} fold {job.fold}",
        job.section["epochs"],
        job.config["gan"]["seed"],
        job.out,
        key,
        columns,
    )
    with engine.tracked(tracker):
        engine.run_epochs(trainer, loop, history, show, tracker)
        return then() if then is not None else None


def epoch_message(row: dict, epochs: int) -> str:
    """One log line per epoch."""
    keys = ("loss_d", "loss_g", "loss_l1", "d_real", "d_fake", "std_ratio")
    keys += ("val_mae", "val_psnr", "val_ssim")
    return engine.epoch_line(f"epoch {row['epoch']}/{epochs}", row, [(k, k) for k in keys], ".4g")


def mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of per-step statistics (a key missing from some steps averages the others)."""
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}
