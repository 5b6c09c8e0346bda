"""Synthesis of 2-D slices of a cohort channel: DCGAN, WGAN, WGAN-GP and the other losses, or
a conditional GAN on the scanner domain (Mirza and Osindero 2014).

One model is trained on one fold's training patients (:func:`train_synthesis`). Each epoch,
D takes every batch of real slices; G is updated after every ``d_steps`` of them (Goodfellow
et al. 2014, Algorithm 1), through :func:`adseg.training.steps.discriminator_step` and
:func:`adseg.training.steps.generator_step`. A grid of samples from fixed noise is drawn every
``sample_every`` epochs. At the end the model is measured against the fold's held-out
patients (:func:`adseg.gan.sampling.evaluate_samples`): the sliced Wasserstein distance of its
samples to their slices, beside the distance of the training slices to them (what a perfect
generator of the training distribution would score), and the spread of its samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from adseg import __version__
from adseg.gan.blocks import condition_image, condition_latent, dcgan_init
from adseg.gan.data import channel_indices, intensity_ranges, load_volumes, synthesis_slices
from adseg.gan.job import (
    GanJob,
    GanTrainer,
    make_job,
    mean_stats,
    optimizers,
    run,
    spread_ratio,
    start,
)
from adseg.gan.networks import DCGANDiscriminator, DCGANGenerator
from adseg.gan.sampling import evaluate_samples, generate
from adseg.io import copy_file, read_json, write_json
from adseg.log import logger
from adseg.preprocessing.case import Plan
from adseg.training import engine
from adseg.training.loader import slice_axis
from adseg.training.steps import discriminator_step, generator_step

LOG_COLUMNS = (
    "epoch",
    "loss_d",
    "loss_g",
    "d_real",
    "d_fake",
    "grad_norm_d",
    "grad_norm_g",
    "std_ratio",
    "instance_noise",
    "seconds",
)
GRID = 64  # samples in a figure (8 x 8)
IMAGE = slice(0, 1)  # D's input channels that are the image (the rest: class maps)


def widths(width: int, image_size: int) -> tuple[list[int], list[int]]:
    """DCGAN channel counts for ``image_size``: G coarse to fine, D fine to coarse.

    One level per doubling from 4 voxels: ``width`` channels at the finest, doubling per level
    (DCGAN's 64 x 64 nets with width 64: G 512-256-128-64, D 64-128-256-512).
    """
    levels = int(round(math.log2(image_size / 4)))
    fine_to_coarse = [width * 2**i for i in range(levels)]
    return fine_to_coarse[::-1], fine_to_coarse


def synthesis_spec(job: GanJob) -> dict:
    """The model's description: channel, image size, classes, intensity range, networks."""
    s, r = job.section, job.recipe
    channel = channel_indices(job.preprocessed, [s["channel"]])[0]
    plan = Plan.from_dict(read_json(job.preprocessed / "plans.json"))
    axis = slice_axis(plan.target_spacing)
    classes = None
    if s["condition"] == "domain":
        cases = read_json(job.preprocessed / "dataset.json")["cases"]
        classes = sorted({cases[c]["domain"] for c in job.spec["train_cases"]})
    g_features = widths(r["g_width"], s["image_size"])[0]
    d_features = widths(r["d_width"], s["image_size"])[1]
    props = read_json(job.preprocessed / "properties" / f"{job.spec['train_cases'][0]}.json")
    return {
        "channel": s["channel"],
        "channel_index": channel,
        "image_size": s["image_size"],
        "slice_axis": axis,
        "latent_dim": s["latent_dim"],
        "condition": s["condition"],
        "classes": classes,
        # where samples lie in space when written as NIfTI: the preprocessed voxel grid
        "grid": {k: props["final_grid"][k] for k in ("spacing", "direction")},
        "generator": {"name": "dcgan", "features": g_features, "norm": "batch"},
        "discriminator": {
            "name": "dcgan",
            "features": d_features,
            "norm": r["d_norm"],
            "minibatch_std": r["minibatch_std"],
        },
    }


def build_generator(spec: dict) -> DCGANGenerator:
    """G of a synthesis spec: noise (plus one-hot class) to a slice in [-1, 1]."""
    k = len(spec["classes"] or [])
    g = spec["generator"]
    return DCGANGenerator(
        2, spec["latent_dim"] + k, 1, spec["image_size"], g["features"], norm=g["norm"]
    )


def build_discriminator(spec: dict) -> DCGANDiscriminator:
    """D (or the critic) of a synthesis spec: a slice (plus class maps) to a raw score."""
    k = len(spec["classes"] or [])
    d = spec["discriminator"]
    return DCGANDiscriminator(
        2,
        1 + k,
        spec["image_size"],
        d["features"],
        norm=d["norm"],
        minibatch_std=d["minibatch_std"],
    )


class SynthesisTrainer(GanTrainer):
    """G, D, their optimisers and one epoch of updates."""

    def __init__(self, job: GanJob, device: torch.device) -> None:
        self.job, self.device, self.spec = job, device, job.spec
        self.gen = build_generator(job.spec).to(device)
        self.disc = build_discriminator(job.spec).to(device)
        self.gen.apply(dcgan_init)
        self.disc.apply(dcgan_init)
        self.opt_g, self.opt_d = optimizers(job.recipe, self.gen, self.disc)
        self.autocast = engine.autocast(device, job.config["gan"]["amp"])
        self.classes = len(job.spec["classes"] or [])
        # the same noise every time: the sample grids show one model changing, not new draws
        rng = torch.Generator().manual_seed(job.config["gan"]["seed"])
        self.fixed_z = torch.randn(GRID, job.spec["latent_dim"], generator=rng)
        self.fixed_y = torch.arange(GRID) % max(self.classes, 1)

    def latent(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return condition_latent(z, y, self.classes) if self.classes else z

    def image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return condition_image(x, y, self.classes) if self.classes else x

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.spec["latent_dim"], device=self.device)

    def d_update(self, real: torch.Tensor, y: torch.Tensor, noise: float) -> dict[str, float]:
        """One step of D on a real batch and a fresh generated one (classes as the real's)."""
        r = self.job.recipe
        with torch.no_grad(), self.autocast():
            fake = self.gen(self.latent(self.noise(len(real)), y)).float()
        return discriminator_step(
            self.disc,
            self.opt_d,
            self.image(real, y),
            self.image(fake, y),
            r["loss"],
            r["real_label"],
            r["gp_weight"],
            r["clip"],
            self.autocast,
            noise,
            IMAGE,
        )

    def g_update(self, real: torch.Tensor, y: torch.Tensor, noise: float) -> dict[str, float]:
        """One step of G through the frozen D; also the spread of its batch against the real."""
        with self.autocast():
            fake = self.gen(self.latent(self.noise(len(real)), y)).float()
        stats = generator_step(
            self.gen,
            self.disc,
            self.opt_g,
            self.image(fake, y),
            self.job.recipe["loss"],
            autocast=self.autocast,
            noise_std=noise,
            real=self.image(real, y),
            noise_channels=IMAGE,
        )
        return {
            "loss_g": stats["loss_adv"],
            "grad_norm_g": stats["grad_norm_g"],
            **spread_ratio(fake, real),
        }

    def run_epoch(self, loader, epoch: int, noise: float) -> dict[str, float]:
        """Every real batch updates D; every ``d_steps``-th (and the last) also G."""
        self.gen.train()
        self.disc.train()
        rows, n = [], len(loader)
        for i, (real, y) in enumerate(loader):
            real, y = real.to(self.device), y.to(self.device)
            row = self.d_update(real, y, noise)
            if (i + 1) % self.job.recipe["d_steps"] == 0 or i + 1 == n:
                row |= self.g_update(real, y, noise)
            rows.append(row)
        return mean_stats(rows)

    def sample(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """G's slices ``(N, 1, S, S)`` in [-1, 1] for noise ``z`` and classes ``y`` (eval mode)."""
        self.gen.eval()
        out = generate(self.gen, z, y, self.classes, self.device, self.autocast)
        self.gen.train()
        return out

    def end_of_epoch(self, epoch: int, row: dict) -> list[Path]:
        s = self.job.section
        if (epoch + 1) % s["sample_every"] and epoch + 1 != s["epochs"]:
            return []
        from adseg.gan.plots import image_grid

        path = self.job.out / "samples" / f"epoch_{epoch + 1:04d}.png"
        image_grid(
            self.sample(self.fixed_z, self.fixed_y)[:, 0],
            path,
            f"{self.job.name} fold {self.job.fold}, epoch {epoch + 1}",
            self._captions(),
        )
        return [path]

    def _captions(self) -> list[str] | None:
        classes = self.spec["classes"]
        return [f"{classes[int(k)]}" for k in self.fixed_y] if classes else None


def train_synthesis(
    config: dict,
    model: str,
    fold: int,
    preprocessed: str | Path,
    splits: str | Path,
    out: str | Path,
    resume: str = "auto",
    show_progress: bool = True,
    tracker=None,
    threads: int | None = None,
) -> dict:
    """Train the synthesis recipe ``model`` on fold ``fold``; write its model folder ``out``.

    Args:
        config: a resolved config (its ``gan`` section).
        model: a name in ``gan.synthesis.models``.
        resume: ``no``, ``yes`` or ``auto``, as for :func:`adseg.training.segmentation.train_fold`.
        tracker: an :class:`adseg.tracking.FoldRun`, or None.

    Returns:
        The spec written to ``model.json``.

    Raises:
        ValueError: bad settings, found before any training.
        GanError: divergence, a discriminator that won outright, a collapsed generator.
    """
    job = make_job(config, "synthesis", model, fold, preprocessed, splits, out)
    job.spec |= synthesis_spec(job)
    device, key, state = start(job, resume, threads)
    train_set, test_set, ranges = _slices(job)
    job.spec["intensity"] = ranges
    trainer = SynthesisTrainer(job, device)
    history: list[dict] = []
    if state is not None:
        trainer.load_state(state["trainer"])
        history = state["history"]
        logger.info("resuming %s fold %d after epoch %d", job.name, fold, len(history))
    write_json(job.out / "plans.json", read_json(job.preprocessed / "plans.json"))
    s = job.section
    sampler_rng = torch.Generator()
    loader = DataLoader(
        train_set,
        batch_size=s["batch_size"],
        shuffle=True,
        drop_last=len(train_set) > s["batch_size"],
        generator=sampler_rng,
    )
    logger.info(
        "training %s fold %d on %s: %d slices of %s from %d cases, %d held-out slices",
        job.name,
        fold,
        device,
        len(train_set),
        s["channel"],
        len(job.spec["train_cases"]),
        len(test_set),
    )
    if tracker is not None:
        tracker.start(job, len(history) if state is not None else None, device, job.splits)

    def finish() -> dict:
        evaluation = evaluate_samples(trainer, train_set, test_set)
        spec = _finish(job, trainer, history, evaluation)
        if tracker is not None:
            tracker.metrics({f"test/{k}": float(v) for k, v in evaluation.items()}, len(history))
            for name in ("evaluation.json", "samples.png"):
                tracker.artifact(job.out / name, "evaluation")
            tracker.finish(spec)
        return spec

    return run(
        job,
        trainer,
        loader,
        sampler_rng.manual_seed,
        history,
        key,
        LOG_COLUMNS,
        show_progress,
        tracker,
        then=finish,
    )


def _slices(job: GanJob) -> tuple[TensorDataset, TensorDataset, list[list[float]]]:
    """Training and held-out slices, scaled by the training patients' intensity range."""
    spec, s = job.spec, job.section
    channel = [spec["channel_index"]]
    train = load_volumes(job.preprocessed, spec["train_cases"], channel)
    test = load_volumes(job.preprocessed, spec["test_cases"], channel)
    ranges = intensity_ranges(list(train.values()), job.config["gan"]["intensity_percentiles"])
    classes = None
    if spec["classes"]:
        cases = read_json(job.preprocessed / "dataset.json")["cases"]
        index = {name: i for i, name in enumerate(spec["classes"])}
        unknown = sorted({cases[c]["domain"] for c in spec["test_cases"]} - set(index))
        if unknown:
            logger.warning("held-out domains %s were not trained; they are left out", unknown)
        classes = {c: index.get(cases[c]["domain"], -1) for c in [*train, *test]}
    sets = []
    for volumes in (train, test):
        x, y = synthesis_slices(volumes, ranges, spec["slice_axis"], s["image_size"], classes)
        keep = y >= 0
        sets.append(TensorDataset(x[keep], y[keep]))
    return sets[0], sets[1], ranges


def _finish(job: GanJob, trainer: SynthesisTrainer, history: list[dict], evaluation: dict):
    from adseg.gan.plots import gan_curves

    spec = {
        **job.spec,
        "adseg_version": __version__,
        "epochs_trained": len(history),
        "best_epoch": 0,
        "best_val_dice": None,
        "evaluation": evaluation,
    }
    engine.save_checkpoint(trainer.weights(), job.out / "checkpoint_final.pt")
    write_json(job.out / "evaluation.json", evaluation)
    # the last epoch always draws its grid
    last = job.out / "samples" / f"epoch_{len(history):04d}.png"
    copy_file(last, job.out / "samples.png")
    title = f"{job.name} fold {job.fold}"
    gan_curves(history, job.out / "learning_curves.png", title, job.recipe["loss"])
    # model.json last: its presence marks a complete folder
    write_json(job.out / "model.json", spec)
    logger.info(
        "%s fold %d: SWD to held-out slices %.4g (training slices: %.4g), spread ratio %s",
        job.name,
        job.fold,
        evaluation["swd"],
        evaluation["swd_train"],
        f"{evaluation['std_ratio']:.3g}" if "std_ratio" in evaluation else "n/a",
    )
    return spec
