"""ADDA: adapt a segmentor from one scanner domain to another without the target's labels.

Tzeng et al. 2017, *Adversarial discriminative domain adaptation*, for segmentation:

1. a source model, encoder M_s and decoder C, trained on labelled source cases
   (``adseg train --domains SOURCE``, scheme ce or hybrid);
2. the target encoder M_t starts as a copy of M_s; M_s and C stay frozen;
3. a domain discriminator D learns J_D = −E_s[log D(M_s(x_s))] − E_t[log(1 − D(M_t(x_t)))]
   (source real, target fake) and M_t learns the inverted-label loss
   J_M = −E_t[log D(M_t(x_t))] (the non-saturating generator loss);
4. the adapted model is C∘M_t, tested on the target domain.

Two variants of what D sees: ``feature`` (the encoder's bottleneck feature map, ADDA
proper) and ``output`` (C's softmax label maps of source and target images, the output-space
adaptation of Tsai et al. 2018, and the label-map analogue of Kohl's discriminator).

Target labels are never read: the target cases enter as dictionaries without a label, so
no transform can reach one (tests/adda/test_train.py changes every target label and gets the same
weights). The two updates are those of :mod:`adseg.training.steps`, shared with the adversarial
segmentation schemes and the GAN modules.

The adapted model is a complete model folder (``model.json``, ``checkpoint_final.pt``):
``adseg evaluate`` and ``adseg predict`` use it as any other. ``domain_auc.json`` beside it
holds the domain-shift diagnostic of :func:`domain_auc`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from adseg import __version__
from adseg.adda.adapter import Adapter
from adseg.adda.data import endless, image_items, image_loader
from adseg.adda.job import AddaJob
from adseg.adda.probe import diagnostic_images, domain_diagnostic
from adseg.config import without_result_neutral
from adseg.inference.modelfolder import FORMAT, FORMAT_VERSION
from adseg.inference.sliding import make_inferer
from adseg.io import read_json, write_json, write_text
from adseg.log import logger
from adseg.preprocessing import store
from adseg.training import engine
from adseg.training.engine import TrainingError, non_finite
from adseg.training.loader import case_items, validation_dataset
from adseg.training.segmentor import mean_dice

LOG_COLUMNS = (
    "epoch",
    "loss_d",
    "d_real",
    "d_fake",
    "loss_m",
    "grad_norm_m",
    "grad_norm_d",
    "val_dice_source",
    "seconds",
)


def fingerprint(job: AddaJob) -> str:
    """What a checkpoint must share with the run that resumes it: the variant, fold, cases,
    ADDA settings, the source model's weights and the images (never a label)."""
    t = job.config["train"]
    settings = {
        "variant": job.variant,
        "fold": job.fold,
        "cases": [job.source_train, job.target_train, job.source_val],
        "adda": without_result_neutral(job.config, "adda"),
        "seed": t["seed"],
        "batch": [t["batch_size"], t["samples_per_case"]],
    }
    files = [job.source_dir / "checkpoint_final.pt"]
    # the image arrays the study reads (adseg.preprocessing.store), never a label
    for case_id in job.source_train + job.target_train:
        files.append(store.check_arrays(job.preprocessed, case_id, "image")["image"])
    return engine.fingerprint(settings, files)


class AdaptationStudy:
    """ADDA's part in :func:`adseg.training.engine.run_epochs`: ``steps_per_epoch`` updates
    of D and M_t on a source and a target batch each, then C∘M_t's Dice on the held-out
    *source* cases (a check that adaptation has not wrecked the decoder's input)."""

    def __init__(self, job: AddaJob, adapter: Adapter, loaders, validation) -> None:
        self.job, self.adapter, self.a = job, adapter, job.config["adda"]
        (self.src_loader, self.src_rand), (self.tgt_loader, self.tgt_rand) = loaders
        self.validation = validation
        self.net = copy.deepcopy(adapter.source)

    def train_epoch(self, epoch: int, seed: int) -> dict:
        self.src_rand.set_random_state(seed=seed % 2**32)
        self.tgt_rand.set_random_state(seed=(seed + 1) % 2**32)
        source, target = endless(self.src_loader), endless(self.tgt_loader)
        sums: dict[str, list[float]] = {}
        for i in range(self.a["steps_per_epoch"]):
            xs = next(source)["image"].to(self.adapter.device)
            xt = next(target)["image"].to(self.adapter.device)
            stats = self.adapter.step(xs, xt)
            bad = non_finite(stats)
            if bad:
                raise TrainingError(
                    f"non-finite {', '.join(bad)} at epoch {epoch + 1}, step {i + 1}; lower "
                    "adda.lr or adda.d_lr"
                )
            for k, v in stats.items():
                sums.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in sums.items()}

    def end_epoch(self, epoch: int, row: dict, epochs: int) -> list:
        if (epoch + 1) % self.a["val_every"] == 0 or epoch + 1 == epochs:
            self.net.load_state_dict(self.adapter.adapted_state())
            self.net.eval()
            dataset, inferer = self.validation
            row["val_dice_source"] = mean_dice(
                self.net, dataset, inferer, self.job.spec, self.adapter.amp
            )
        return []

    def check(self, history: list[dict]) -> None:
        """Non-finite losses stop the epoch itself; D's loss has no collapse check here."""

    def message(self, row: dict, epochs: int) -> str:
        fields = [
            ("loss_d", "J_D"),
            ("loss_m", "J_M"),
            ("d_real", "D(source)"),
            ("d_fake", "D(target)"),
            ("val_dice_source", "source val Dice"),
        ]
        return engine.epoch_line(f"epoch {row['epoch']}/{epochs}", row, fields)

    def tracked_row(self, row: dict) -> tuple[dict, float]:
        """The row under the metric names FoldRun logs (M_t plays the segmentor's part)."""
        names = {"loss_m": "loss_adv", "grad_norm_m": "grad_norm_s", "val_dice_source": "val_dice"}
        return {names.get(k, k): v for k, v in row.items()}, self.a["d_lr"]

    def checkpoint(self) -> dict:
        return {"trainer": self.adapter.state()}


def adapt_fold(
    config: dict,
    variant: str,
    fold: int,
    preprocessed: str | Path,
    splits: str | Path,
    source_model: str | Path,
    out: str | Path,
    resume: str = "auto",
    show_progress: bool = True,
    tracker=None,
) -> dict:
    """Adapt fold ``fold``'s source model to the target domain; write the model folder ``out``.

    Args:
        config: a resolved config (``adda`` and ``train`` sections used).
        variant: ``feature`` or ``output`` (what the domain discriminator sees).
        source_model: the fold's source-only model folder (``adseg train --domains SOURCE``).
        resume: ``no``, ``yes`` or ``auto``, as for :func:`adseg.training.segmentation.train_fold`.
        tracker: an :class:`adseg.tracking.FoldRun`, or None.

    Returns:
        The adapted model's spec (``model.json``).

    Raises:
        ValueError: bad settings or inputs, found before any training.
        TrainingError: a non-finite loss.
    """
    job = AddaJob(config, variant, fold, preprocessed, splits, source_model, out)
    a, t = config["adda"], config["train"]
    key = fingerprint(job)
    device, state = engine.begin(
        job.out, t["device"], "train.device", t["threads"], t["seed"], resume, key
    )
    adapter = Adapter(job.source.segmentor("final"), variant, config, device)
    history: list[dict] = []
    if state is not None:
        adapter.load_state(state["trainer"])
        history = state["history"]
        logger.info("resuming %s fold %d after epoch %d", job.name, fold, len(history))
    engine.clear(
        job.out,
        state is None,
        ["model.json", "checkpoint_final.pt", "domain_auc.json"],
        [engine.CHECKPOINT, engine.LOG],
    )
    _write_static(job)
    spec = job.spec
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    loaders = [
        image_loader(
            image_items(job.preprocessed, cases),
            spec["patch_size"],
            dims,
            axis,
            t["batch_size"],
            t["samples_per_case"],
        )
        for cases in (job.source_train, job.target_train)
    ]
    val_set = validation_dataset(case_items(job.preprocessed, job.source_val))
    images = diagnostic_images(job)
    inferer = make_inferer(dims, spec["patch_size"], axis, t["batch_size"])
    if tracker is not None:
        tracker.start(
            TrackedJob(job), len(history) if state is not None else None, device, job.splits_path
        )
    logger.info(
        "ADDA %s fold %d on %s: %s -> %s, %d source and %d unlabelled target cases",
        variant,
        fold,
        device,
        a["source"],
        a["target"],
        len(job.source_train),
        len(job.target_train),
    )
    study = AdaptationStudy(job, adapter, loaders, (val_set, inferer))
    loop = engine.Loop(
        f"{job.name} fold {job.fold}", a["epochs"], t["seed"], job.out, key, LOG_COLUMNS
    )
    with engine.tracked(tracker, plain_tensors=True):
        engine.run_epochs(study, loop, history, show_progress, tracker)
        diagnostic = domain_diagnostic(job, adapter, images, device)
    spec = _finish(job, adapter, history, diagnostic)
    if tracker is not None:
        tracker.metrics(auc_metrics(diagnostic), step=len(history))
        tracker.finish(spec)
    return spec


def auc_metrics(diagnostic: dict) -> dict:
    """The diagnostic's AUCs under their MLflow names."""
    return {
        f"adda/domain_auc_{k}": diagnostic[k]
        for k in ("before", "after")
        if diagnostic[k] is not None
    }


class TrackedJob:
    """What :class:`adseg.tracking.FoldRun` reads of a job."""

    def __init__(self, job: AddaJob) -> None:
        self.name = self.scheme = job.name
        self.fold, self.out, self.preprocessed = job.fold, job.out, job.preprocessed
        self.config = job.config
        self.spec = {
            "train_cases": job.source_train + job.target_train,
            "val_cases": job.source_val + job.target_val,
            "test_cases": job.test_cases,
        }


def _write_static(job: AddaJob) -> None:
    import yaml

    write_text(job.out / "config.yaml", yaml.safe_dump(job.config, sort_keys=False))
    write_json(job.out / "plans.json", read_json(job.source_dir / "plans.json"))


def _finish(job: AddaJob, adapter: Adapter, history: list[dict], diagnostic: dict) -> dict:
    from adseg.plots import adda_curves

    a = job.config["adda"]
    source = {k: v for k, v in job.spec.items() if k != "quality_threshold"}
    spec = {
        **source,
        "scheme": "adda",
        "name": job.name,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adseg_version": __version__,
        "train_cases": job.source_train,
        "target_cases": job.target_train,
        "val_cases": job.source_val,
        "target_val_cases": job.target_val,
        "test_cases": job.test_cases,
        # D judged domains, not label maps: no quality check at predict time
        "discriminator": None,
        "adda": {
            "variant": job.variant,
            "source_domain": a["source"],
            "target_domain": a["target"],
            "source_model": str(job.source_dir.resolve()),
            "source_scheme": job.spec["scheme"],
            "loss": a["loss"],
        },
        "epochs_trained": len(history),
        "best_epoch": 0,
        "best_val_dice": None,
        "final_val_dice": history[-1].get("val_dice_source") if history else None,
    }
    spec.pop("domains", None)
    engine.save_checkpoint({"segmentor": adapter.adapted_state()}, job.out / "checkpoint_final.pt")
    write_json(job.out / "domain_auc.json", diagnostic)
    adda_curves(history, job.out / "learning_curves.png", f"{job.name} fold {job.fold}", a["loss"])
    write_json(job.out / "model.json", spec)
    return spec
