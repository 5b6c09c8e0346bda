"""Train one segmentation scheme on one cross-validation fold: the model folder it writes.

The schemes' updates are :class:`adseg.training.segmentor.SegmentorTrainer`; the epoch loop,
seeding, checkpoints and resume are :mod:`adseg.training.engine`'s. A non-finite loss or a
collapsed discriminator stops training with :class:`~adseg.training.engine.TrainingError`; the
last checkpoint on disk is then the last good one. A rule scheme (``threshold``) is fitted
in one pass instead (:func:`fit_rule_fold`) into the same kind of model folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adseg import __version__
from adseg.config import without_result_neutral
from adseg.inference.modelfolder import FORMAT, FORMAT_VERSION
from adseg.inference.sliding import discriminator_score, make_inferer, one_hot
from adseg.io import read_json, write_json, write_text, write_tsv
from adseg.log import logger
from adseg.preprocessing import store
from adseg.training import engine
from adseg.training.job import TrainJob, check_job
from adseg.training.loader import case_items, training_loader, validation_dataset
from adseg.training.schemes import SCHEMES
from adseg.training.segmentor import LOG_COLUMNS, SegmentorTrainer
from adseg.training.threshold import LOG_COLUMNS as RULE_LOG_COLUMNS
from adseg.training.threshold import RuleFit, fit_threshold_rule


def fingerprint(job: TrainJob) -> str:
    """What a checkpoint must share with the run that resumes it: scheme, fold, cases, the
    settings that change what is trained (the epoch count among them: the learning-rate
    schedule depends on it), the preprocessing plan and the fold's preprocessed arrays."""
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
    # the arrays the job reads (adseg.preprocessing.store), not the NIfTI files they mirror
    for case_id in spec["train_cases"] + spec["val_cases"]:
        files += store.check_arrays(job.preprocessed, case_id, "image", "label", "fg").values()
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
            A fitted rule (the threshold scheme) takes seconds and is always fitted afresh.
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
    if SCHEMES[scheme].fitted == "rule":
        return fit_rule_fold(job, Path(splits), tracker)
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


def fit_rule_fold(job: TrainJob, splits: Path, tracker=None) -> dict:
    """The threshold scheme's fold: fit the rule on the fold's training and validation cases
    (:func:`adseg.training.threshold.fit_threshold_rule`) and write the model folder a
    network's would be (config, plans, checkpoints, ``training_log.tsv``, ``model.json``
    last), so ``adseg evaluate`` and ``adseg predict`` use it unchanged.

    Raises:
        ValueError: the cohort has no lesion label, or the training cases no lesion voxel.
    """
    from adseg.evaluation.detection import detection_label

    spec = job.spec
    lesion = detection_label(spec["labels"])
    if lesion is None:
        raise ValueError(f"the threshold scheme finds lesions; no lesion in {list(spec['labels'])}")
    _write_static(job, fresh=True)
    if tracker is not None:
        tracker.start(job, None, "cpu", splits)
    with engine.tracked(tracker):
        fit = fit_threshold_rule(
            job.preprocessed,
            spec["train_cases"],
            spec["val_cases"],
            spec["labels"],
            lesion,
            job.config["train"]["seed"],
        )
        logger.info(
            "%s fold %d: rule fitted in %.1f s; least lesion %d voxels; val Dice %.3f",
            job.name,
            job.fold,
            fit.seconds,
            fit.min_component_voxels,
            fit.val_dice,
        )
        weights = {"segmentor": fit.rule.state_dict()}
        for name in ("checkpoint_best.pt", "checkpoint_final.pt"):
            engine.save_checkpoint(weights, job.out / name)
        spec = _rule_records(job, fit, lesion)
        if tracker is not None:
            tracker.metrics({"train/dice_pooled": fit.train_dice}, step=0)
            for size, value in fit.val_dice_pooled.items():
                tracker.metrics({"val/dice_pooled": value}, step=size)  # step: least size
            tracker.artifact(job.out / "threshold_fit.tsv", "training")
        # model.json last: its presence marks a complete folder
        write_json(job.out / "model.json", spec)
    if tracker is not None:
        tracker.finish(spec)
    return spec


def _rule_records(job: TrainJob, fit: RuleFit, lesion: str) -> dict:
    """Write the fit's record (``threshold_fit.tsv``: the rule per channel;
    ``training_log.tsv``: the search's moves and the least sizes tried); return the spec."""
    names = job.spec["channel_names"]
    rule = fit.summary(names)
    columns = ("channel", "direction", "threshold", "active")
    write_tsv(job.out / "threshold_fit.tsv", rule["channels"], columns)
    trace = [r | {"channel": names[r["channel"]]} if "channel" in r else r for r in fit.trace]
    write_tsv(job.out / engine.LOG, trace, RULE_LOG_COLUMNS)
    title = f"{job.name} fold {job.fold}: rule fitted"
    fit_figure(trace, fit.min_component_voxels, job.out / "learning_curves.png", title)
    return {
        **job.spec,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adseg_version": __version__,
        "epochs_trained": 0,
        "best_epoch": 0,
        "best_val_dice": fit.val_dice,
        "final_val_dice": fit.val_dice,
        "rule": rule,
        "postprocess": {"min_component_voxels": fit.min_component_voxels, "label": lesion},
    }


def fit_figure(trace: list[dict], chosen: int, path: Path, title: str) -> None:
    """``learning_curves.png`` of a rule (what a network's curves are to its training): the
    pooled training Dice after each accepted move of the search, and the inner-validation
    Dice of each least component size, the chosen one marked."""
    import matplotlib.pyplot as plt

    from adseg.plots import save

    moves = [r for r in trace if r["step"] != "min size"]
    sizes = [r for r in trace if r["step"] == "min size"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(range(len(moves)), [r["train_dice"] for r in moves], "o-", color="C0")
    left.set_xticks(
        range(len(moves)),
        [f"{r['step']}\n{r['channel']}" for r in moves],
        fontsize=7,
    )
    left.set(title="threshold search (training patients)", ylabel="pooled Dice")
    x = [r["min_component_voxels"] for r in sizes]
    right.plot(x, [r["val_dice"] for r in sizes], "o-", color="C1")
    if chosen in x:
        right.axvline(chosen, color="0.5", ls="--", lw=1, label=f"chosen: {chosen} voxels")
        right.legend(fontsize=8, frameon=False)
    right.set_xscale("symlog", linthresh=1)
    right.set(
        title="least lesion size (inner validation)",
        xlabel="least component (voxels)",
        ylabel="pooled Dice",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    save(fig, path)
