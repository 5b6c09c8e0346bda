"""Train one segmentation scheme on one cross-validation fold: the model folder it writes.

The schemes' updates are :class:`adseg.training.segmentor.SegmentorTrainer`; the epoch loop,
seeding, checkpoints and resume are :mod:`adseg.training.engine`'s. A non-finite loss or a
collapsed discriminator stops training with :class:`~adseg.training.engine.TrainingError`; the
last checkpoint on disk is then the last good one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adseg import __version__
from adseg.config import without_result_neutral
from adseg.inference.modelfolder import FORMAT, FORMAT_VERSION
from adseg.inference.sliding import discriminator_score, make_inferer, one_hot
from adseg.io import read_json, write_json, write_text
from adseg.log import logger
from adseg.training import engine
from adseg.training.job import TrainJob, check_job
from adseg.training.loader import case_items, training_loader, validation_dataset
from adseg.training.segmentor import LOG_COLUMNS, SegmentorTrainer


def fingerprint(job: TrainJob) -> str:
    """What a checkpoint must share with the run that resumes it: scheme, fold, cases, the
    settings that change what is trained (the epoch count among them: the learning-rate
    schedule depends on it), the preprocessing plan and the fold's preprocessed files."""
    spec = job.spec
    settings = {
        "scheme": job.scheme,
        "fold": job.fold,
        "train_cases": spec["train_cases"],
        "val_cases": spec["val_cases"],
        "train": without_result_neutral(job.config, "train"),
        "adversarial": job.config["adversarial"] if spec.get("discriminator") else None,
        "plan": job.plan.to_dict(),
    }
    files = []
    for item in case_items(job.preprocessed, spec["train_cases"] + spec["val_cases"]):
        files += [*item["image"], item["label"]]
    return engine.fingerprint(settings, files)


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
    t, spec = config["train"], job.spec
    # computed once: it hashes every preprocessed file of the fold
    key = fingerprint(job)
    device, state = engine.begin(
        job.out, t["device"], "train.device", t["threads"], t["seed"], resume, key
    )
    # the networks first: their initial weights draw from the run's seed
    trainer = SegmentorTrainer(job, device)
    history: list[dict] = []
    if state is not None:
        trainer.load_state(state["trainer"])
        history, trainer.best = state["history"], state["best"]
        logger.info("resuming %s fold %d after epoch %d", scheme, fold, len(history))
    _write_static(job, fresh=state is None)
    if tracker is not None:
        tracker.start(job, len(history) if state is not None else None, device, Path(splits))
    axis, dims = spec["slice_axis"], spec["network"]["spatial_dims"]
    train_items = case_items(job.preprocessed, spec["train_cases"])
    trainer.loader, trainer.randomize = training_loader(
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
    trainer.validation = (val_set, make_inferer(dims, spec["patch_size"], axis, t["batch_size"]))
    logger.info(
        "training %s fold %d on %s: %d cases, validating on %d; %s",
        scheme,
        fold,
        device,
        len(train_items),
        len(val_set),
        spec["network"]["name"],
    )
    loop = engine.Loop(
        f"{job.name} fold {job.fold}", t["epochs"], t["seed"], job.out, key, LOG_COLUMNS
    )
    with engine.tracked(tracker, plain_tensors=True):
        engine.run_epochs(trainer, loop, history, show_progress, tracker)
    spec = _finish(job, trainer, history)
    if tracker is not None:
        tracker.finish(spec)
    return spec


def _write_static(job: TrainJob, fresh: bool) -> None:
    """The parts of the model folder known before training: config and plans.

    A fresh start also removes what an earlier run left (best weights, log, checkpoint).
    """
    import yaml

    # a folder with model.json looks finished; it is not until this run writes it anew
    engine.clear(
        job.out,
        fresh,
        ["model.json", "checkpoint_final.pt"],
        ["checkpoint_best.pt", engine.CHECKPOINT, engine.LOG],
    )
    write_text(job.out / "config.yaml", yaml.safe_dump(job.config, sort_keys=False))
    write_json(job.out / "plans.json", job.plan.to_dict())


def quality_threshold(trainer: SegmentorTrainer, job: TrainJob) -> float:
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


def _finish(job: TrainJob, trainer: SegmentorTrainer, history: list[dict]) -> dict:
    from adseg.plots import learning_curves

    best = trainer.best
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
    engine.save_checkpoint(trainer.weights(), job.out / "checkpoint_final.pt")
    learning_curves(
        history,
        job.out / "learning_curves.png",
        f"{job.name} fold {job.fold}",
        job.scheme,
        job.config["adversarial"]["loss"],
    )
    # model.json last: its presence marks a complete folder
    write_json(job.out / "model.json", spec)
    return spec
