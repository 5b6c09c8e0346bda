"""The data commands: ``synth-cohort``, ``validate``, ``preprocess``, ``splits``, ``qc`` and
``config``."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from adseg.cli.common import (
    UserError,
    add_command,
    cohort_of,
    load_config_for_command,
    read_inputs,
)
from adseg.log import logger

EXAMPLES = {
    "synth-cohort": "adseg synth-cohort data/synthetic --n-patients 40 --seed 0",
    "validate": "adseg validate /data/Task05_Prostate --report validation.json",
    "preprocess": "adseg preprocess /data/Dataset001_Prostate -o results/default/preprocessed "
    "--config config/config.yaml",
    "splits": "adseg splits results/default/preprocessed -o results/default/splits.json --folds 4",
    "qc": "adseg qc results/default/preprocessed -o results/default/qc",
    "config": "adseg config --config config/config.yaml",
}


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "synth-cohort",
        "Write the built-in synthetic prostate mpMRI cohort (nnU-Net raw layout).",
        _synth,
        EXAMPLES["synth-cohort"],
        config=False,
    )
    p.add_argument(
        "out",
        type=Path,
        help="output folder (replaced atomically; it must be new, empty or written by adseg)",
    )
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


def _synth(args) -> None:
    # generate_cohort checks OUT (adseg.guard) before it renders anything
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


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "validate",
        "Check every file of a cohort and report all problems at once.",
        _validate,
        EXAMPLES["validate"],
    )
    p.add_argument("dataset", type=Path, help="nnU-Net raw or MSD task folder")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")


def _validate(args) -> None:
    from adseg.data.validation import validate_with_config
    from adseg.guard import check_file
    from adseg.io import write_json

    config = load_config_for_command(args.config, settings=args.set)
    if args.report:
        check_file(args.report, read_inputs(args, args.dataset))
    report = validate_with_config(args.dataset, config, args.workers, not args.no_progress)
    if args.report:
        write_json(args.report, report.to_dict())
    print(report.format())
    if not report.ok():
        raise UserError(f"{len(report.errors)} error(s) in {args.dataset}; fix them and run again")


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "preprocess",
        "Validate, then reorient, resample, crop and normalise every case.",
        _preprocess,
        EXAMPLES["preprocess"],
    )
    p.add_argument("dataset", type=Path, help="nnU-Net raw or MSD task folder")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="preprocessed folder (replaced atomically; it must be new, empty or written by "
        "adseg, and apart from the cohort)",
    )
    p.add_argument("--validation", type=Path, help="a report from 'adseg validate' of this cohort")
    p.add_argument("--workers", type=int, help="processes (default: preprocess.workers)")


def _preprocess(args) -> None:
    from adseg.data.validation import ValidationReport
    from adseg.guard import check_output
    from adseg.io import read_json
    from adseg.preprocessing.cohort import prepare_cohort

    config = load_config_for_command(args.config, settings=args.set)
    check_output(args.out, read_inputs(args, args.dataset, args.validation), replaces=True)
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


def _add_splits(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "splits",
        "Make (or check a given) patient-level cross-validation splits.json.",
        _splits,
        EXAMPLES["splits"],
    )
    p.add_argument("preprocessed", type=Path, help="folder written by 'adseg preprocess'")
    p.add_argument("-o", "--out", type=Path, required=True, help="splits.json to write")
    p.add_argument("--folds", type=int, help="number of folds (overrides folds.n)")
    p.add_argument("--seed", type=int, help="seed (overrides folds.seed)")
    p.add_argument("--file", type=Path, help="a user-given splits file to validate and adopt")


def _splits(args) -> None:
    from adseg.data.splits import (
        add_inner_splits,
        case_meta_from_dataset,
        describe_splits,
        make_splits,
        validate_splits,
    )
    from adseg.guard import check_file
    from adseg.io import read_json, write_json

    overrides = {
        "folds": {k: v for k, v in (("n", args.folds), ("seed", args.seed)) if v is not None}
    }
    config = load_config_for_command(args.config, overrides, args.set)
    user_file = args.file or (Path(config["folds"]["file"]) if config["folds"]["file"] else None)
    inputs = [args.preprocessed, user_file, *cohort_of(args.preprocessed)]
    check_file(args.out, read_inputs(args, *inputs))
    cases = case_meta_from_dataset(read_json(args.preprocessed / "dataset.json"))
    folds = config["folds"]
    if user_file:
        splits = validate_splits(read_json(user_file), cases, str(user_file))
        if not all("inner_val" in f for f in splits["folds"]):
            # the user's outer folds as given; model selection gets its own patients
            splits = add_inner_splits(
                splits, cases, folds["inner_val_fraction"], folds["seed"], folds["stratify"]
            )
    else:
        splits = make_splits(
            cases, folds["n"], folds["seed"], folds["stratify"], folds["inner_val_fraction"]
        )
    write_json(args.out, splits)
    print(describe_splits(splits, cases))


def _add_qc(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "qc",
        "Draw the QC overview and one figure per preprocessed case.",
        _qc,
        EXAMPLES["qc"],
    )
    p.add_argument("preprocessed", type=Path, help="folder written by 'adseg preprocess'")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="folder for the PNG files (replaced atomically; it must be new, empty or written "
        "by adseg)",
    )


def _qc(args) -> None:
    from adseg.guard import check_output
    from adseg.preprocessing.qc import qc_report

    check_output(args.out, read_inputs(args, args.preprocessed), replaces=True)

    written = qc_report(args.preprocessed, args.out, not args.no_progress)
    logger.info("wrote %d QC figures to %s", len(written), args.out)


def _add_config(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "config",
        "Print the resolved config: yours laid over config/config.yaml, schema defaults filling "
        "the rest (validates it).",
        _config,
        EXAMPLES["config"],
    )


def _config(args) -> None:
    config = load_config_for_command(args.config, settings=args.set)
    print(yaml.safe_dump(config, sort_keys=False), end="")


COMMANDS = {
    "synth-cohort": _add_synth,
    "validate": _add_validate,
    "preprocess": _add_preprocess,
    "splits": _add_splits,
    "qc": _add_qc,
    "config": _add_config,
}
