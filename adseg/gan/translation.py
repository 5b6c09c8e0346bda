"""Paired image-to-image translation (pix2pix, Isola et al. 2017): one channel from another,
e.g. ADC from T2w, slice by slice.

G is a U-Net (MONAI ``UNet``, tanh output); D is a PatchGAN (MONAI ``PatchDiscriminator``)
that judges (source, target) pairs, so it is conditional on the source: real = (source, real
target), fake = (source, G(source)). G minimises ``adv_weight · L_G + l1_weight · L1`` (pix2pix:
1 and 100); ``adv_weight`` 0 trains on L1 alone, without D (the paper's ablation).

Training draws random slices of a fold's training patients, randomly cropped to
``patch_size``; the fully convolutional U-Net then translates whole slices of any size.
:func:`adseg.gan.inference.evaluate_translation` compares generated and real target channels of
the fold's held-out patients (MAE, PSNR, SSIM, with MONAI's metrics) on the generators'
[-1, 1] scale: the training patients' intensity range of the target channel mapped to
[-1, 1], the real target not clipped to it (so its tails count against the generator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import MAEMetric, PSNRMetric, SSIMMetric

from adseg import __version__
from adseg.gan.data import (
    channel_indices,
    intensity_ranges,
    load_volumes,
    pad_in_plane,
    paired_slices,
    scale,
    scaled,
    translation_loader,
)
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
from adseg.gan.pix2pix import PatchGANDiscriminator, UNetGenerator
from adseg.io import read_json, write_json
from adseg.log import logger
from adseg.preprocessing.case import Plan
from adseg.training import engine
from adseg.training.loader import slice_axis
from adseg.training.steps import discriminator_step, generator_step, grad_norm

LOG_COLUMNS = (
    "epoch",
    "loss_d",
    "loss_g",
    "loss_l1",
    "d_real",
    "d_fake",
    "grad_norm_d",
    "grad_norm_g",
    "std_ratio",
    "instance_noise",
    "val_mae",
    "val_psnr",
    "val_ssim",
    "seconds",
)
METRIC_COLUMNS = ("case_id", "patient_id", "domain", "fold", "model", "mae", "psnr", "ssim")
METRICS = ("mae", "psnr", "ssim")
EXAMPLES = 4  # held-out slices in the example figures
TARGET = slice(1, 2)  # D sees (source, target); instance noise goes on the target only


def held_out_pair(volume: np.ndarray, ranges) -> np.ndarray:
    """A held-out ``(source, target)`` volume scaled for evaluation: the source as G's input
    (clipped), the real target unclipped."""
    return scaled(volume, ranges, clip=[True, False])


def source_plan(plan: Plan, source: int) -> Plan:
    """The cohort's preprocessing restricted to the source channel: how a new scan's source
    channel is brought onto the grid the generator knows."""
    name = plan.channel_names[source]
    return Plan(
        channel_names=[name],
        labels=dict(plan.labels),
        reference_channel=0,
        orientation=plan.orientation,
        target_spacing=list(plan.target_spacing),
        normalization=[plan.normalization[source]],
        percentiles=list(plan.percentiles),
        crop_to_nonzero=plan.crop_to_nonzero,
        n4_channels=[c for c in plan.n4_channels if c == name],
    )


def translation_spec(job: GanJob) -> dict:
    """The model's description: channels, slice axis, patch, networks, the source's plan."""
    s, r = job.section, job.recipe
    source, target = channel_indices(job.preprocessed, [s["source"], s["target"]])
    plan = Plan.from_dict(read_json(job.preprocessed / "plans.json"))
    features = [r["g_width"] * 2**i for i in range(s["levels"])]
    disc = None
    if r["adv_weight"] > 0:
        disc = {"name": "patch", "features": r["d_width"], "layers": r["d_layers"]}
        disc["norm"] = r["d_norm"]
    return {
        "source": s["source"],
        "target": s["target"],
        "source_index": source,
        "target_index": target,
        "slice_axis": slice_axis(plan.target_spacing),
        "patch_size": list(s["patch_size"]),
        "generator": {"name": "unet", "features": features, "dropout": s["g_dropout"]},
        "discriminator": disc,
        "plan": source_plan(plan, source).to_dict(),
    }


def build_generator(spec: dict) -> UNetGenerator:
    g = spec["generator"]
    return UNetGenerator(2, 1, 1, g["features"], dropout=g["dropout"])


def build_discriminator(spec: dict) -> PatchGANDiscriminator | None:
    d = spec["discriminator"]
    if d is None:
        return None
    return PatchGANDiscriminator(2, 2, d["features"], d["layers"], norm=d["norm"])


@torch.inference_mode()
def translate(gens, source: np.ndarray, spec: dict, device, chunk: int = 32) -> np.ndarray:
    """The generators' mean translation of a scaled source volume ``(1, X, Y, Z)``.

    The U-Net is fully convolutional, so whole slices are translated at once (as pix2pix
    does at test time), in batches of ``chunk`` slices: each is padded at its end to a
    multiple of the U-Net's downsampling, with the source's scaled background, and the
    result cropped back.

    Returns:
        ``(1, X, Y, Z)`` in [-1, 1].
    """
    axis = spec["slice_axis"]
    background = float(scale(np.float32(0.0), *spec["intensity"][0]))
    factor = 2 ** (len(spec["generator"]["features"]) - 1)
    in_plane = [source.shape[a + 1] for a in range(3) if a != axis]
    padded = pad_in_plane(source, [-(-n // factor) * factor for n in in_plane], axis, background)
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(padded, axis + 1, 0)))
    out = torch.zeros_like(slices)
    for gen in gens:
        gen.eval()
        for i in range(0, len(slices), chunk):
            batch = slices[i : i + chunk].to(device)
            out[i : i + chunk] += gen(batch).float().cpu()
    out = np.moveaxis((out / len(gens)).numpy(), 0, axis + 1)
    return out[:, : source.shape[1], : source.shape[2], : source.shape[3]]


def image_metrics(fake: np.ndarray, real: np.ndarray, axis: int) -> dict[str, float]:
    """MAE, PSNR (peak 2: the [-1, 1] range) and mean 2-D SSIM over slices (MONAI metrics)."""
    f = torch.from_numpy(fake)[None].float()
    r = torch.from_numpy(real)[None].float()
    slices_f = f[0].movedim(axis + 1, 0)  # (S, 1, A, B)
    slices_r = r[0].movedim(axis + 1, 0)
    window = min(7, *slices_r.shape[2:])
    window -= 1 - window % 2  # odd
    ssim = SSIMMetric(spatial_dims=2, data_range=2.0, win_size=window)(slices_f, slices_r)
    return {
        "mae": float(MAEMetric()(f, r).mean()),
        "psnr": float(PSNRMetric(max_val=2.0)(f, r).mean()),
        "ssim": float(ssim.mean()),
    }


class TranslationTrainer(GanTrainer):
    """G, D (unless ``adv_weight`` is 0), their optimisers and one epoch of updates."""

    def __init__(self, job: GanJob, device: torch.device, validation: dict[str, np.ndarray]):
        self.job, self.device, self.spec = job, device, job.spec
        self.gen = build_generator(job.spec).to(device)
        disc = build_discriminator(job.spec)
        self.disc = disc.to(device) if disc is not None else None
        self.opt_g, self.opt_d = optimizers(job.recipe, self.gen, self.disc)
        self.autocast = engine.autocast(device, job.config["gan"]["amp"])
        # scaled (source, target) volumes of the held-out cases, for the epoch's check
        self.validation = validation

    def update(self, src, tgt, noise: float, g_turn: bool) -> dict[str, float]:
        """One D step on (source, real) vs (source, G(source)); on G's turn, one G step."""
        r = self.job.recipe
        stats: dict[str, float] = {}
        if self.disc is not None:
            with torch.no_grad(), self.autocast():
                fake = self.gen(src).float()
            stats |= discriminator_step(
                self.disc,
                self.opt_d,
                torch.cat([src, tgt], 1),
                torch.cat([src, fake], 1),
                r["loss"],
                r["real_label"],
                r["gp_weight"],
                r["clip"],
                self.autocast,
                noise,
                TARGET,
            )
        if g_turn:
            stats |= self.g_update(src, tgt, noise)
        return stats

    def g_update(self, src, tgt, noise: float) -> dict[str, float]:
        """G's step: adv_weight · L_G (through the frozen D) + l1_weight · L1."""
        r = self.job.recipe
        with self.autocast():
            fake = self.gen(src).float()
        l1 = F.l1_loss(fake, tgt)
        out = {"loss_l1": float(l1.detach())}
        out |= spread_ratio(fake, tgt)
        if self.disc is None:
            self.opt_g.zero_grad(set_to_none=True)
            (r["l1_weight"] * l1).backward()
            out["grad_norm_g"] = grad_norm(self.gen)
            self.opt_g.step()
            return out
        g = generator_step(
            self.gen,
            self.disc,
            self.opt_g,
            torch.cat([src, fake], 1),
            r["loss"],
            r["adv_weight"],
            supervised=r["l1_weight"] * l1,
            autocast=self.autocast,
            noise_std=noise,
            real=torch.cat([src, tgt], 1),
            noise_channels=TARGET,
        )
        return out | {"loss_g": g["loss_adv"], "grad_norm_g": g["grad_norm_g"]}

    def run_epoch(self, loader, epoch: int, noise: float) -> dict[str, float]:
        """Every batch updates D; every ``d_steps``-th (and the last) also G."""
        self.gen.train()
        if self.disc is not None:
            self.disc.train()
        rows, n, k = [], len(loader), self.job.recipe["d_steps"]
        for i, batch in enumerate(loader):
            src = batch["source"].to(self.device)
            tgt = batch["target"].to(self.device)
            g_turn = self.disc is None or (i + 1) % k == 0 or i + 1 == n
            rows.append(self.update(src, tgt, noise, g_turn))
        return mean_stats(rows)

    def end_of_epoch(self, epoch: int, row: dict) -> list[Path]:
        """Every ``sample_every`` epochs (and the last): held-out metrics and an example figure."""
        s = self.job.section
        if (epoch + 1) % s["sample_every"] and epoch + 1 != s["epochs"]:
            return []
        results = {}
        for case_id, volume in self.validation.items():
            fake = translate([self.gen], volume[:1], self.spec, self.device)
            results[case_id] = (volume, fake)
        scores = [image_metrics(f, v[1:], self.spec["slice_axis"]) for v, f in results.values()]
        row |= {f"val_{m}": float(np.mean([x[m] for x in scores])) for m in METRICS}
        path = self.job.out / "samples" / f"epoch_{epoch + 1:04d}.png"
        examples(
            results, self.spec, path, f"{self.job.name} fold {self.job.fold}, epoch {epoch + 1}"
        )
        self.gen.train()
        return [path]


def examples(results: dict, spec: dict, path: Path, title: str) -> None:
    """A figure of the middle slice of up to :data:`EXAMPLES` cases: source, real, generated."""
    from adseg.gan.plots import translation_examples

    axis = spec["slice_axis"]
    rows = []
    for case_id, (volume, fake) in list(results.items())[:EXAMPLES]:
        k = volume.shape[axis + 1] // 2
        pick = [np.take(v[0], k, axis=axis) for v in (volume[:1], volume[1:], fake)]
        rows.append((f"{case_id}, slice {k}", *pick))
    translation_examples(rows, path, title, (spec["source"], spec["target"]))


def train_translation(
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
    """Train the translation recipe ``model`` on fold ``fold``; write its model folder ``out``.

    Arguments and errors as :func:`adseg.gan.synthesis.train_synthesis`.
    """
    job = make_job(config, "translation", model, fold, preprocessed, splits, out)
    job.spec |= translation_spec(job)
    device, key, state = start(job, resume, threads)
    spec, s = job.spec, job.section
    channels = [spec["source_index"], spec["target_index"]]
    train = load_volumes(job.preprocessed, spec["train_cases"], channels)
    ranges = intensity_ranges(list(train.values()), config["gan"]["intensity_percentiles"])
    spec["intensity"] = ranges
    # followed per epoch on the inner validation patients; `adseg gan evaluate` tests on the
    # fold's held-out ones
    held_out_cases = load_volumes(job.preprocessed, spec["val_cases"], channels)
    validation = {c: held_out_pair(v, ranges) for c, v in held_out_cases.items()}
    items = paired_slices(train, ranges, spec["slice_axis"], spec["patch_size"])
    draws = s["slices_per_case"] * len(train)
    loader, randomize, sampler_rng = translation_loader(
        items, spec["patch_size"], s["batch_size"], draws
    )
    trainer = TranslationTrainer(job, device, validation)
    history: list[dict] = []
    if state is not None:
        trainer.load_state(state["trainer"])
        history = state["history"]
        logger.info("resuming %s fold %d after epoch %d", job.name, fold, len(history))
    write_json(job.out / "plans.json", spec["plan"])

    def reseed(seed: int) -> None:
        sampler_rng.manual_seed(seed)
        randomize.set_random_state(seed=seed % 2**32)

    logger.info(
        "training %s fold %d on %s: %s -> %s, %d slices of %d cases a epoch, %d validated",
        job.name,
        fold,
        device,
        s["source"],
        s["target"],
        draws,
        len(train),
        len(held_out_cases),
    )
    if tracker is not None:
        tracker.start(job, len(history) if state is not None else None, device, job.splits)

    def finish() -> dict:
        spec = _finish(job, trainer, history)
        if tracker is not None:
            tracker.finish(spec)
        return spec

    return run(
        job, trainer, loader, reseed, history, key, LOG_COLUMNS, show_progress, tracker, finish
    )


def _finish(job: GanJob, trainer: TranslationTrainer, history: list[dict]) -> dict:
    from adseg.gan.plots import gan_curves

    last = history[-1] if history else {}
    spec = {
        **job.spec,
        "adseg_version": __version__,
        "epochs_trained": len(history),
        "best_epoch": 0,
        "best_val_dice": None,
        "final_val": {m: last.get(f"val_{m}") for m in METRICS},
    }
    engine.save_checkpoint(trainer.weights(), job.out / "checkpoint_final.pt")
    title = f"{job.name} fold {job.fold}"
    gan_curves(history, job.out / "learning_curves.png", title, job.recipe["loss"])
    write_json(job.out / "model.json", spec)
    return spec
