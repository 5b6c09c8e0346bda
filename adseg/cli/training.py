"""The training commands: ``train`` (one scheme on one fold) and ``adda`` (adapting a fold's
source-only model to the target domain).

Both end on SIGTERM as on Ctrl-C (:func:`adseg.cli.common.exit_on_sigterm`), leaving the last
checkpoint for ``--resume``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adseg.cli.common import (
    add_command,
    add_overwrite_option,
    add_resume_option,
    cohort_of,
    exit_on_sigterm,
    load_config_for_command,
    read_inputs,
)
from adseg.log import logger
from adseg.training.schemes import SCHEMES

EXAMPLES = {
    "train": "adseg train --config config/config.yaml --scheme hybrid --fold 0 "
    "--preprocessed results/default/preprocessed --splits results/default/splits.json "
    "-o results/default/hybrid/fold_0",
    "adda": "adseg adda --variant feature --fold 0 --config config/adda.yaml "
    "--preprocessed results/adda/preprocessed --splits results/adda/splits.json "
    "--source-model results/adda/adda/source-only/fold_0 -o results/adda/adda/adda-feature/fold_0",
}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", "Train one scheme on one cross-validation fold.", _train, EXAMPLES["train"]
    )
    p.add_argument("--scheme", required=True, help=f"one of {', '.join(SCHEMES)}")
    p.add_argument("--fold", type=int, required=True, help="fold number in splits.json")
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed folder")
    p.add_argument("--splits", type=Path, required=True, help="splits.json")
    p.add_argument("-o", "--out", type=Path, required=True, help="model folder of this fold")
    p.add_argument("--threads", type=int, help="CPU threads (overrides train.threads)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        default="no",
        choices=["no", "yes", "auto"],
        help="continue from OUT/checkpoint_last.pt; 'auto' resumes when a checkpoint of the "
        "same config exists, else starts afresh (default: no)",
    )
    p.add_argument(
        "--domains",
        nargs="+",
        metavar="DOMAIN",
        help="train and validate on the fold's cases of these scanner domains only "
        "(dataset.json 'domain'); evaluation still covers every held-out case",
    )
    p.add_argument("--name", help="the model's name in results and MLflow (default: the scheme)")
    add_overwrite_option(p)


def _train(args) -> None:
    from adseg import tracking
    from adseg.guard import writing
    from adseg.training.segmentation import train_fold

    overrides = {"train": {"threads": args.threads}} if args.threads else None
    config = load_config_for_command(args.config, overrides, args.set)
    inputs = read_inputs(args, args.preprocessed, args.splits, *cohort_of(args.preprocessed))
    with writing(args.out, "train", inputs, args.overwrite):
        tracker = None
        if tracking.enabled(config):
            tracker = tracking.FoldRun(config)
        exit_on_sigterm()
        spec = train_fold(
            config,
            args.scheme,
            args.fold,
            args.preprocessed,
            args.splits,
            args.out,
            args.resume,
            not args.no_progress,
            tracker,
            args.domains,
            args.name,
        )
    logger.info(
        "%s fold %d: %d epochs, final validation Dice %s; model in %s",
        args.name or args.scheme,
        args.fold,
        spec["epochs_trained"],
        "n/a" if spec["final_val_dice"] is None else f"{spec['final_val_dice']:.3f}",
        args.out,
    )


def _add_adda(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "adda",
        "Adapt a fold's source-only model to the target domain (ADDA), without target labels.",
        _adda,
        EXAMPLES["adda"],
    )
    p.add_argument("--variant", required=True, choices=["feature", "output"], help="what D sees")
    p.add_argument("--fold", type=int, required=True, help="fold number in splits.json")
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed folder")
    p.add_argument("--splits", type=Path, required=True, help="splits.json")
    p.add_argument(
        "--source-model",
        type=Path,
        required=True,
        help="the fold's source-only model (adseg train --domains SOURCE)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="adapted model folder")
    p.add_argument("--threads", type=int, help="CPU threads (overrides train.threads)")
    add_resume_option(p)
    add_overwrite_option(p)


def _adda(args) -> None:
    from adseg import tracking
    from adseg.adda.train import adapt_fold
    from adseg.guard import writing

    overrides = {"train": {"threads": args.threads}} if args.threads else None
    config = load_config_for_command(args.config, overrides, args.set)
    inputs = read_inputs(
        args, args.preprocessed, args.splits, args.source_model, *cohort_of(args.preprocessed)
    )
    with writing(args.out, "adda", inputs, args.overwrite):
        tracker = tracking.FoldRun(config) if tracking.enabled(config) else None
        exit_on_sigterm()
        spec = adapt_fold(
            config,
            args.variant,
            args.fold,
            args.preprocessed,
            args.splits,
            args.source_model,
            args.out,
            args.resume,
            not args.no_progress,
            tracker,
        )
    auc = json.loads((args.out / "domain_auc.json").read_text())
    logger.info(
        "%s fold %d: %d epochs; domain AUC %s before, %s after; model in %s",
        spec["name"],
        args.fold,
        spec["epochs_trained"],
        *("n/a" if auc[k] is None else f"{auc[k]:.3f}" for k in ("before", "after")),
        args.out,
    )


COMMANDS = {"train": _add_train, "adda": _add_adda}
