"""The evaluation commands: ``evaluate`` (a trained fold on its held-out patients),
``summarize`` (the training schemes' table), ``learning-curve`` (the small-data study's) and
``adda-summary`` (the ADDA study's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from adseg.cli.common import (
    UserError,
    add_command,
    add_overwrite_option,
    check_study,
    cohort_of,
    load_config_for_command,
    model_files,
    read_inputs,
)
from adseg.log import logger

EXAMPLES = {
    "evaluate": "adseg evaluate results/default/hybrid/fold_0 "
    "--preprocessed results/default/preprocessed -o results/default/hybrid/fold_0/metrics.tsv",
    "summarize": "adseg summarize results/default/*/fold_*/metrics.tsv -o results/default",
    "learning-curve": "adseg learning-curve results/default --fractions 0.25 0.5",
    "adda-summary": "adseg adda-summary results/adda/adda/*/fold_*/metrics.tsv "
    "-o results/adda/adda --config config/adda.yaml",
}


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "evaluate",
        "Evaluate a trained fold on its held-out patients (per-case TSV).",
        _evaluate,
        EXAMPLES["evaluate"],
    )
    p.add_argument("model", type=Path, help="model fold folder (<scheme>/fold_<k>)")
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed folder")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="metrics TSV to write; reliability.tsv beside it",
    )
    p.add_argument("--checkpoint", choices=["final", "best"], help="default: evaluate.checkpoint")


def _evaluate(args) -> None:
    from adseg import tracking
    from adseg.evaluation.calibration import FILE as RELIABILITY
    from adseg.evaluation.cases import METRIC_COLUMNS, evaluate_fold
    from adseg.guard import check_file
    from adseg.io import write_tsv
    from adseg.training.engine import pick_device

    config = load_config_for_command(args.config, settings=args.set)
    # the TSV may go into the model folder (adseg's), never onto a file of the model, into
    # the preprocessed folder or into the cohort
    inputs = [args.preprocessed, *cohort_of(args.preprocessed), *model_files(args.model)]
    check_file(args.out, read_inputs(args, *inputs))
    # each case's probability bins (the reliability diagram's) go beside the metrics
    reliability = check_file(args.out.parent / RELIABILITY, read_inputs(args, *inputs))
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
        # each case's lesion probabilities and expert mask: the PI-CAI metrics' input
        detection=args.model / "detection",
        reliability=reliability,
    )
    write_tsv(args.out, rows, METRIC_COLUMNS)
    (args.model / "overlays").mkdir(exist_ok=True)  # a workflow output, even when none is drawn
    logger.info("wrote metrics of %d case-label pairs to %s", len(rows), args.out)
    logger.info("wrote their probability bins to %s", reliability)
    if tracking.enabled(config):
        overlays = sorted((args.model / "overlays").glob("*.png"))
        tracking.log_evaluation(args.model, rows, [args.out, reliability, *overlays], ev)


def _add_summarize(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "summarize",
        "Tabulate evaluated folds: Kohl-style table, tests, box plots.",
        _summarize,
        EXAMPLES["summarize"],
    )
    p.add_argument("metrics", type=Path, nargs="+", help="metrics TSVs from 'adseg evaluate'")
    p.add_argument("-o", "--out", type=Path, required=True, help="experiment folder")
    add_overwrite_option(p)


def _summarize(args) -> None:
    from adseg import tracking
    from adseg.evaluation.summary import summarize

    config = load_config_for_command(args.config, settings=args.set)
    writes = ("summary.md", "summary.html", "summary.tsv", "tests.tsv", "training.tsv")
    writes += ("reliability.tsv",)
    with check_study(args.out, "summarize", args.metrics, writes, args):
        ev = config["evaluate"]
        path = summarize(
            args.metrics,
            args.out,
            f"{config['experiment']}: segmentation by training scheme",
            config["adversarial"]["hybrid_weight"],
            ev["primary"],
            ev["bootstrap_draws"],
        )
    print(path.read_text())
    logger.info("summary: %s", path)
    if tracking.enabled(config):
        tracking.log_summary(args.out, args.metrics, config, files=writes)


def _add_adda_summary(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "adda-summary",
        "Tabulate the ADDA study: source-only, ADDA variants and oracle on the target domain.",
        _adda_summary,
        EXAMPLES["adda-summary"],
    )
    p.add_argument("metrics", type=Path, nargs="+", help="metrics TSVs of the ADDA models")
    p.add_argument("-o", "--out", type=Path, required=True, help="the study folder (<exp>/adda)")
    add_overwrite_option(p)


def _adda_summary(args) -> None:
    from adseg import tracking
    from adseg.adda.summary import summarize_adda

    config = load_config_for_command(args.config, settings=args.set)
    a = config["adda"]
    aucs = [m.parent / "domain_auc.json" for m in args.metrics]
    aucs = [f for f in aucs if f.is_file()]
    writes = ("summary.md", "summary.html", "summary.tsv", "tests.tsv", "domain_auc.tsv")
    with check_study(args.out, "adda-summary", [*args.metrics, *aucs], writes, args):
        path = summarize_adda(
            args.metrics,
            aucs,
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
            writes,
        )


def _add_learning_curve(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "learning-curve",
        "Tabulate the small-data study: the primary endpoint against training patients.",
        _learning_curve,
        EXAMPLES["learning-curve"],
    )
    p.add_argument(
        "experiment",
        type=Path,
        help="experiment folder: its summary.tsv (all training patients) and "
        "learning_curve/frac_<percent>/summary.tsv of each share",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        help="the shares below 1 (default: learning_curve.fractions of the config)",
    )
    add_overwrite_option(p)


def _learning_curve(args) -> None:
    from adseg.evaluation.learning_curve import FOLDER, share_summary, write_learning_curve

    config = load_config_for_command(args.config, settings=args.set)
    fractions = args.fractions or config["learning_curve"]["fractions"]
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise UserError(
            f"--fractions {fractions}: give the shares of training patients, each in (0, 1), "
            "or set learning_curve.fractions"
        )
    exp = args.experiment
    # the shares' summaries lie in the study's folder, which makes it adseg's
    summaries = [share_summary(exp, f) / "summary.tsv" for f in fractions]
    writes = (
        "learning_curve.md",
        "learning_curve.html",
        "learning_curve.tsv",
        "learning_curve_tests.tsv",
    )
    with check_study(exp / FOLDER, "learning-curve", summaries, writes, args):
        path = write_learning_curve(
            exp,
            fractions,
            config["evaluate"]["primary"],
            f"{config['experiment']}: the primary endpoint against training patients",
        )
    print(path.read_text())
    logger.info("learning curve: %s", path)


COMMANDS = {
    "evaluate": _add_evaluate,
    "summarize": _add_summarize,
    "learning-curve": _add_learning_curve,
    "adda-summary": _add_adda_summary,
}
