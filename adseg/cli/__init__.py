"""The ``adseg`` command line: one subcommand per pipeline stage.

Each subcommand is what a Snakemake rule calls, and what a user calls by hand. Errors in the
user's input (config, data, splits) end with a message and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from adseg import __version__
from adseg.log import logger, setup_logging

EXAMPLES = {
    "synth-cohort": "adseg synth-cohort data/synthetic --n-patients 40 --seed 0",
    "validate": "adseg validate /data/Task05_Prostate --report validation.json",
    "preprocess": "adseg preprocess /data/Dataset001_Prostate -o results/default/preprocessed "
    "--config config/config.yaml",
    "splits": "adseg splits results/default/preprocessed -o results/default/splits.json --folds 4",
    "qc": "adseg qc results/default/preprocessed -o results/default/qc",
    "config": "adseg config --config config/config.yaml",
    "train": "adseg train --config config/config.yaml --scheme hybrid --fold 0 "
    "--preprocessed results/default/preprocessed --splits results/default/splits.json "
    "-o results/default/hybrid/fold_0",
    "evaluate": "adseg evaluate results/default/hybrid/fold_0 "
    "--preprocessed results/default/preprocessed -o results/default/hybrid/fold_0/metrics.tsv",
    "summarize": "adseg summarize results/default/*/fold_*/metrics.tsv -o results/default",
    "adda": "adseg adda --variant feature --fold 0 --config config/adda.yaml "
    "--preprocessed results/adda/preprocessed --splits results/adda/splits.json "
    "--source-model results/adda/adda/source-only/fold_0 -o results/adda/adda/adda-feature/fold_0",
    "adda-summary": "adseg adda-summary results/adda/adda/*/fold_*/metrics.tsv "
    "-o results/adda/adda --config config/adda.yaml",
    "predict": "adseg predict -i scans/ -o masks/ -m results/default/hybrid",
    "mlflow-sync": "adseg mlflow-sync results/default",
}


class UserError(Exception):
    """An error in what the user gave us; printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adseg",
        description="Adversarial segmentation of multi-parametric MRI.",
        epilog="Example: "
        + EXAMPLES["synth-cohort"]
        + "\nRun 'adseg COMMAND --help' for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"adseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_: str, func: Callable, config: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"Example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-v", "--verbose", action="store_true", help="debug-level log messages")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
        if config and name != "synth-cohort":
            p.add_argument("--config", type=Path, help="config YAML (default: built-in defaults)")
            p.add_argument(
                "--set",
                metavar="JSON",
                help='config settings as JSON, e.g. \'{"folds": {"n": 5}}\'',
            )
        return p

    p = command(
        "synth-cohort",
        "Write the built-in synthetic prostate mpMRI cohort (nnU-Net raw layout).",
        _synth,
    )
    p.add_argument("out", type=Path, help="output folder (replaced atomically)")
    p.add_argument("--n-patients", type=int, default=40, help="number of patients (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--labels", default="lesion", help="lesion (binary) or lesion+zones (default lesion)"
    )
    p.add_argument(
        "--two-visit-fraction", type=float, default=0.25, help="patients with a second visit"
    )
    p.add_argument(
        "--domain-b-fraction", type=float, default=0.5, help="patients scanned on scanner B"
    )
    p.add_argument(
        "--domain-shift",
        choices=["scanner", "protocol"],
        default="scanner",
        help="how B differs from A: another scanner (default), or also another protocol "
        "(low-b DWI, compressed T2w: the shift for the ADDA study)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")

    p = command(
        "validate", "Check every file of a cohort and report all problems at once.", _validate
    )
    p.add_argument("dataset", type=Path, help="nnU-Net raw or MSD task folder")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")

    p = command(
        "preprocess",
        "Validate, then reorient, resample, crop and normalise every case.",
        _preprocess,
    )
    p.add_argument("dataset", type=Path, help="nnU-Net raw or MSD task folder")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="preprocessed folder (replaced atomically)"
    )
    p.add_argument("--validation", type=Path, help="a report from 'adseg validate' of this cohort")
    p.add_argument("--workers", type=int, help="processes (default: preprocess.workers)")

    p = command(
        "splits", "Make (or check a given) patient-level cross-validation splits.json.", _splits
    )
    p.add_argument("preprocessed", type=Path, help="folder written by 'adseg preprocess'")
    p.add_argument("-o", "--out", type=Path, required=True, help="splits.json to write")
    p.add_argument("--folds", type=int, help="number of folds (overrides folds.n)")
    p.add_argument("--seed", type=int, help="seed (overrides folds.seed)")
    p.add_argument("--file", type=Path, help="a user-given splits file to validate and adopt")

    p = command("qc", "Draw the QC overview and one figure per preprocessed case.", _qc)
    p.add_argument("preprocessed", type=Path, help="folder written by 'adseg preprocess'")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the PNG files")

    p = command("train", "Train one scheme on one cross-validation fold.", _train)
    p.add_argument("--scheme", required=True, help="ce, dicece, adversarial or hybrid")
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

    p = command(
        "evaluate", "Evaluate a trained fold on its held-out patients (per-case TSV).", _evaluate
    )
    p.add_argument("model", type=Path, help="model fold folder (<scheme>/fold_<k>)")
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="metrics TSV to write")
    p.add_argument("--checkpoint", choices=["final", "best"], help="default: evaluate.checkpoint")

    p = command(
        "summarize", "Tabulate evaluated folds: Kohl-style table, tests, box plots.", _summarize
    )
    p.add_argument("metrics", type=Path, nargs="+", help="metrics TSVs from 'adseg evaluate'")
    p.add_argument("-o", "--out", type=Path, required=True, help="experiment folder")

    p = command(
        "adda",
        "Adapt a fold's source-only model to the target domain (ADDA), without target labels.",
        _adda,
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
    p.add_argument(
        "--resume",
        choices=["no", "yes", "auto"],
        default="no",
        help="continue from OUT/checkpoint_last.pt (auto: when it matches; default: no)",
    )

    p = command(
        "adda-summary",
        "Tabulate the ADDA study: source-only, ADDA variants and oracle on the target domain.",
        _adda_summary,
    )
    p.add_argument("metrics", type=Path, nargs="+", help="metrics TSVs of the ADDA models")
    p.add_argument("-o", "--out", type=Path, required=True, help="the study folder (<exp>/adda)")

    p = command(
        "predict",
        "Segment new scans with a trained model folder (all folds as an ensemble).",
        _predict,
        config=False,
    )
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        nargs="+",
        required=True,
        help="a folder of <case>_<channel:04d>.nii.gz files, or the channel files of one case "
        "in order (or one 4-D file)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("-m", "--model", type=Path, required=True, help="model folder (<scheme>/)")
    p.add_argument("--folds", type=int, nargs="+", help="folds to ensemble (default: all)")
    p.add_argument("--tta", action="store_true", help="average over mirrored inputs")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (float32, one volume per class)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--overwrite", action="store_true", help="redo cases already written")
    p.add_argument(
        "--quality-threshold",
        type=float,
        help="flag maps the discriminator scores below this (default: the model's, the 5th "
        "percentile of its scores of expert maps)",
    )

    p = command(
        "mlflow-sync",
        "Send MLflow events kept while the tracking server was unreachable.",
        _mlflow_sync,
        config=False,
    )
    p.add_argument("paths", type=Path, nargs="+", help="experiment, scheme or fold folders")
    p.add_argument(
        "--tracking-uri", help="send to this store instead of the one each run was made for"
    )

    p = command("config", "Print a config with every default filled in (validates it).", _config)

    from adseg.cli.gan import add_gan_commands

    add_gan_commands(sub)
    return parser


def _load(path: Path | None, overrides: dict | None = None, settings: str | None = None) -> dict:
    """Resolve a config from a YAML file, then JSON ``--set`` settings, then flag overrides."""
    from adseg.config import ConfigError, deep_merge, load_config

    try:
        merged = json.loads(settings) if settings else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--set: not valid JSON ({err})") from None
    if not isinstance(merged, dict):
        raise UserError(
            '--set: expected a JSON object of config sections, e.g. \'{"folds": {"n": 5}}\''
        )
    try:
        return load_config(path, deep_merge(merged, overrides or {}))
    except ConfigError as err:
        raise UserError(str(err)) from None


def _synth(args) -> None:
    from adseg.data.synthetic import generate_cohort

    dataset = generate_cohort(
        args.out,
        args.n_patients,
        args.seed,
        args.labels,
        args.two_visit_fraction,
        args.domain_b_fraction,
        args.workers,
        not args.no_progress,
        args.domain_shift,
    )
    logger.info(
        "wrote %d cases of %d patients to %s", dataset["numTraining"], args.n_patients, args.out
    )


def _validate(args) -> None:
    from adseg.data.validation import validate_with_config
    from adseg.io import write_json

    config = _load(args.config, settings=args.set)
    report = validate_with_config(args.dataset, config, args.workers, not args.no_progress)
    if args.report:
        write_json(args.report, report.to_dict())
    print(report.format())
    if not report.ok():
        raise UserError(f"{len(report.errors)} error(s) in {args.dataset}; fix them and run again")


def _preprocess(args) -> None:
    from adseg.data.validation import ValidationReport
    from adseg.io import read_json
    from adseg.preprocessing.cohort import prepare_cohort

    config = _load(args.config, settings=args.set)
    report = None
    if args.validation:
        try:
            report = ValidationReport.from_dict(read_json(args.validation))
        except (KeyError, TypeError, AttributeError):
            raise UserError(
                f"{args.validation}: not a report written by 'adseg validate'"
            ) from None
    workers = args.workers or config["preprocess"]["workers"]
    fingerprint = prepare_cohort(
        args.dataset, config, args.out, report, workers, not args.no_progress
    )
    logger.info(
        "preprocessed %d cases at %s mm into %s",
        fingerprint["n_cases"],
        fingerprint["target_spacing"],
        args.out,
    )


def _splits(args) -> None:
    from adseg.data.splits import (
        case_meta_from_dataset,
        describe_splits,
        make_splits,
        validate_splits,
    )
    from adseg.io import read_json, write_json

    overrides = {
        "folds": {k: v for k, v in (("n", args.folds), ("seed", args.seed)) if v is not None}
    }
    config = _load(args.config, overrides, args.set)
    cases = case_meta_from_dataset(read_json(args.preprocessed / "dataset.json"))
    user_file = args.file or (Path(config["folds"]["file"]) if config["folds"]["file"] else None)
    if user_file:
        splits = validate_splits(read_json(user_file), cases, str(user_file))
    else:
        folds = config["folds"]
        splits = make_splits(cases, folds["n"], folds["seed"], folds["stratify"])
    write_json(args.out, splits)
    print(describe_splits(splits, cases))


def _qc(args) -> None:
    from adseg.preprocessing.qc import qc_report

    written = qc_report(args.preprocessed, args.out, not args.no_progress)
    logger.info("wrote %d QC figures to %s", len(written), args.out)


def _train(args) -> None:
    from adseg import tracking
    from adseg.training.segmentation import train_fold

    overrides = {"train": {"threads": args.threads}} if args.threads else None
    config = _load(args.config, overrides, args.set)
    tracker = None
    if tracking.enabled(config):
        tracker = tracking.FoldRun(config)
    # a scheduler's SIGTERM (a job's time limit) ends training like Ctrl-C: the last
    # checkpoint stays for --resume, and the MLflow run is marked KILLED
    signal.signal(signal.SIGTERM, _terminated)
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


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _evaluate(args) -> None:
    from adseg import tracking
    from adseg.evaluation.cases import METRIC_COLUMNS, evaluate_fold
    from adseg.io import write_tsv
    from adseg.training.segmentation import pick_device

    config = _load(args.config, settings=args.set)
    ev = config["evaluate"]
    rows = evaluate_fold(
        args.model,
        args.preprocessed,
        args.checkpoint or ev["checkpoint"],
        ev["tta"],
        ev["min_overlap"],
        pick_device(config["train"]["device"]),
        not args.no_progress,
        overlays=args.model / "overlays",
    )
    write_tsv(args.out, rows, METRIC_COLUMNS)
    logger.info("wrote metrics of %d case-label pairs to %s", len(rows), args.out)
    if tracking.enabled(config):
        overlays = sorted((args.model / "overlays").glob("*.png"))
        tracking.log_evaluation(args.model, rows, [args.out, *overlays], ev)


def _summarize(args) -> None:
    from adseg import tracking
    from adseg.evaluation.summary import summarize

    config = _load(args.config, settings=args.set)
    path = summarize(
        args.metrics,
        args.out,
        f"{config['experiment']}: segmentation by training scheme",
        config["adversarial"]["hybrid_weight"],
    )
    print(path.read_text())
    logger.info("summary: %s", path)
    if tracking.enabled(config):
        tracking.log_summary(args.out, args.metrics, config)


def _adda(args) -> None:
    from adseg import tracking
    from adseg.adda.train import adapt_fold

    overrides = {"train": {"threads": args.threads}} if args.threads else None
    config = _load(args.config, overrides, args.set)
    tracker = tracking.FoldRun(config) if tracking.enabled(config) else None
    signal.signal(signal.SIGTERM, _terminated)
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


def _adda_summary(args) -> None:
    from adseg import tracking
    from adseg.adda.summary import summarize_adda

    config = _load(args.config, settings=args.set)
    a = config["adda"]
    aucs = [m.parent / "domain_auc.json" for m in args.metrics]
    path = summarize_adda(
        args.metrics,
        [f for f in aucs if f.is_file()],
        args.out,
        a["source"],
        a["target"],
        f"{config['experiment']}: ADDA from scanner {a['source']} to scanner {a['target']}",
    )
    print(path.read_text())
    logger.info("ADDA summary: %s", path)
    if tracking.enabled(config):
        tracking.log_summary(
            args.out,
            args.metrics,
            config,
            lambda model: tracking.adda_parent_metrics(args.out, model),
            ("summary.md", "summary.tsv", "tests.tsv", "domain_auc.tsv"),
        )


def _predict(args) -> None:
    from adseg.inference.predict import PredictOptions, predict

    opts = PredictOptions(
        folds=args.folds,
        tta=args.tta,
        save_probabilities=args.save_probabilities,
        device=args.device,
        overwrite=args.overwrite,
        checkpoint=args.checkpoint,
        quality_threshold=args.quality_threshold,
        show_progress=not args.no_progress,
    )
    summary = predict(args.input, args.out, args.model, opts)
    logger.info("masks in %s; per-case summary: %s", args.out, summary)


def _mlflow_sync(args) -> None:
    from adseg.tracking import sync

    for path in args.paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder")
    runs, sent, pending = sync(args.paths, args.tracking_uri)
    if not runs:
        where = ", ".join(map(str, args.paths))
        raise UserError(f"no MLflow journals (tracking/*/ref.json) under {where}")
    logger.info("sent %d events of %d runs; %d pending", sent, runs, pending)
    if pending:
        raise UserError(f"{pending} events could not be sent; the tracking store is unreachable")


def _config(args) -> None:
    print(yaml.safe_dump(_load(args.config, settings=args.set), sort_keys=False), end="")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adseg`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    from adseg.data.cohort import CohortError
    from adseg.inference.modelfolder import ModelError
    from adseg.inference.predict import PredictError
    from adseg.training.segmentation import TrainingError

    try:
        args.func(args)
    except UserError as err:
        print(f"adseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except TrainingError as err:
        print(f"adseg {args.command}: training stopped: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, CohortError, ModelError, PredictError) as err:
        # raised by the library for bad input (cohort, splits, plan); the message names the file
        print(f"adseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
