"""``adseg gan ...``: the GAN tasks' commands (train, evaluate, summary, sample, translate,
modes).

Registered on the main parser through :data:`COMMANDS`; errors end as the other commands'
do (a message naming the file, exit status 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adseg.cli.common import (
    add_command,
    add_overwrite_option,
    add_resume_option,
    check_study,
    cohort_of,
    exit_on_sigterm,
    load_config_for_command,
    model_files,
    read_inputs,
)
from adseg.log import logger

EXAMPLES = {
    "train": "adseg gan train --task translation --model pix2pix --fold 0 --config config/gan.yaml"
    " --preprocessed results/gan/preprocessed --splits results/gan/splits.json"
    " -o results/gan/gan/translation-pix2pix/fold_0",
    "evaluate": "adseg gan evaluate results/gan/gan/translation-pix2pix/fold_0"
    " --preprocessed results/gan/preprocessed -o results/gan/gan/translation-pix2pix/fold_0/"
    "metrics.tsv",
    "summary": "adseg gan summary --synthesis results/gan/gan/synthesis-*/fold_*/model.json"
    " --translation results/gan/gan/translation-*/fold_*/metrics.tsv -o results/gan/gan",
    "sample": "adseg gan sample -m results/gan/gan/synthesis-wgan-gp -n 64 -o samples/",
    "translate": "adseg gan translate -m results/gan/gan/translation-pix2pix -i scans/ -o adc/",
    "modes": "adseg gan modes --losses wgan-gp nonsaturating --seeds 0 1 -o modes/",
}


def _add_gan(sub: argparse._SubParsersAction) -> None:
    """Add ``gan`` and its sub-commands to the ``adseg`` parser's sub-commands ``sub``."""
    gan = sub.add_parser(
        "gan",
        help="GAN modules: slice synthesis (DCGAN, WGAN-GP, ...) and translation (pix2pix).",
        description="Train, evaluate and use GANs for image synthesis and translation.",
    )
    tasks = gan.add_subparsers(dest="gan_command", required=True, metavar="GAN_COMMAND")
    for add in (_add_train, _add_evaluate, _add_summary, _add_sample, _add_translate, _add_modes):
        add(tasks)


def _command(
    tasks: argparse._SubParsersAction, name: str, help_: str, func, config: bool = True
) -> argparse.ArgumentParser:
    """``adseg gan NAME``, with the options every command has; errors name it ``gan NAME``."""
    p = add_command(tasks, name, help_, func, EXAMPLES[name], config, "config settings as JSON")
    p.set_defaults(command=f"gan {name}")
    return p


def _add_train(tasks: argparse._SubParsersAction) -> None:
    p = _command(
        tasks, "train", "Train one GAN model (a recipe of gan.<task>.models) on one fold.", _train
    )
    p.add_argument("--task", required=True, choices=["synthesis", "translation"])
    p.add_argument("--model", required=True, help="a recipe name in gan.<task>.models")
    p.add_argument("--fold", type=int, required=True, help="fold number in splits.json")
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed folder")
    p.add_argument("--splits", type=Path, required=True, help="splits.json")
    p.add_argument("-o", "--out", type=Path, required=True, help="model folder of this fold")
    p.add_argument("--threads", type=int, help="CPU threads (overrides gan.threads)")
    add_resume_option(p)
    add_overwrite_option(p)


def _train(args) -> None:
    from adseg import tracking
    from adseg.gan.synthesis import train_synthesis
    from adseg.gan.translation import train_translation
    from adseg.guard import writing

    config = load_config_for_command(args.config, settings=args.set)
    inputs = read_inputs(args, args.preprocessed, args.splits, *cohort_of(args.preprocessed))
    with writing(args.out, "gan train", inputs, args.overwrite):
        tracker = tracking.FoldRun(config) if tracking.enabled(config) else None
        exit_on_sigterm()
        train = train_synthesis if args.task == "synthesis" else train_translation
        spec = train(
            config,
            args.model,
            args.fold,
            args.preprocessed,
            args.splits,
            args.out,
            args.resume,
            not args.no_progress,
            tracker,
            args.threads,
        )
    logger.info(
        "%s fold %d: %d epochs; model in %s",
        spec["name"],
        args.fold,
        spec["epochs_trained"],
        args.out,
    )


def _add_evaluate(tasks: argparse._SubParsersAction) -> None:
    p = _command(
        tasks,
        "evaluate",
        "Translation fold against its held-out patients (per-case TSV).",
        _evaluate,
    )
    p.add_argument("model", type=Path, help="translation fold folder")
    p.add_argument("--preprocessed", type=Path, required=True, help="preprocessed folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="metrics TSV to write")


def _evaluate(args) -> None:
    from adseg import tracking
    from adseg.gan.inference import evaluate_translation
    from adseg.gan.translation import METRIC_COLUMNS
    from adseg.guard import check_file
    from adseg.io import write_tsv

    config = load_config_for_command(args.config, settings=args.set)
    inputs = [args.preprocessed, *cohort_of(args.preprocessed), *model_files(args.model)]
    check_file(args.out, read_inputs(args, *inputs))
    rows = evaluate_translation(
        args.model, args.preprocessed, config["gan"]["device"], not args.no_progress
    )
    write_tsv(args.out, rows, METRIC_COLUMNS)
    logger.info("wrote metrics of %d held-out cases to %s", len(rows), args.out)
    if tracking.enabled(config):
        means = {
            f"test/{m}": sum(float(r[m]) for r in rows) / len(rows) for m in ("mae", "psnr", "ssim")
        }
        tracking.log_fold_results(args.model, means, [args.out, args.model / "examples.png"])


def _add_summary(tasks: argparse._SubParsersAction) -> None:
    p = _command(tasks, "summary", "Tabulate the GAN models: synthesis and translation.", _summary)
    p.add_argument("--synthesis", type=Path, nargs="*", default=[], help="synthesis model.json")
    p.add_argument("--translation", type=Path, nargs="*", default=[], help="translation TSVs")
    p.add_argument("-o", "--out", type=Path, required=True, help="the GAN folder (<exp>/gan)")
    add_overwrite_option(p)


def _summary(args) -> None:
    from adseg import tracking
    from adseg.gan.summary import parent_metrics, summarize_gan

    config = load_config_for_command(args.config, settings=args.set)
    title = f"{config['experiment']}: GAN synthesis and translation"
    results = [*args.synthesis, *args.translation]
    writes = ("summary.md", "summary.html", "summary.tsv", "tests.tsv", "synthesis.tsv")
    with check_study(args.out, "gan summary", results, writes, args):
        path = summarize_gan(args.synthesis, args.translation, args.out, title)
    print(path.read_text())
    logger.info("GAN summary: %s", path)
    if tracking.enabled(config):
        tracking.log_summary(
            args.out,
            [*args.synthesis, *args.translation],
            config,
            lambda model: parent_metrics(args.out, model),
            ("summary.md", "summary.tsv", "tests.tsv", "synthesis.tsv"),
        )


def _add_sample(tasks: argparse._SubParsersAction) -> None:
    p = _command(
        tasks, "sample", "Draw slices from a synthesis model (NIfTI and PNG).", _sample, False
    )
    p.add_argument("-m", "--model", type=Path, required=True, help="synthesis model folder")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--class", dest="label", help="the class to draw (conditional models)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--fold", type=int, help="which fold's generator (default: the first)")
    p.add_argument("--format", choices=["nifti", "png", "both"], default="both")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_overwrite_option(p)


# what `gan sample` writes: a folder holding only these is an earlier draw's, to replace
SAMPLE_FILES = ("sample_*.nii.gz", "samples.png")


def _sample(args) -> None:
    from adseg.gan.inference import write_samples
    from adseg.guard import check_output, only_names

    formats = ("nifti", "png") if args.format == "both" else (args.format,)
    if args.n < 1:
        raise ValueError(f"-n {args.n}: draw at least one sample")
    # no marker here: the folder holds the samples alone (an earlier draw's sample files
    # are replaced, so one into a folder of anyone else's needs --overwrite)
    earlier = args.out.is_dir() and only_names(args.out, SAMPLE_FILES)
    check_output(args.out, [args.model], args.overwrite or earlier)
    written = write_samples(
        args.model, args.n, args.out, args.seed, args.label, args.fold, args.device, formats
    )
    logger.info("wrote %d files to %s", len(written), args.out)


def _add_translate(tasks: argparse._SubParsersAction) -> None:
    p = _command(
        tasks,
        "translate",
        "Synthesise a channel of new scans with a translation model (all folds averaged).",
        _translate,
        False,
    )
    p.add_argument("-m", "--model", type=Path, required=True, help="translation model folder")
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        nargs="+",
        required=True,
        help="a folder of <case>_<channel:04d>.nii.gz files (the model's source channel is "
        "read), or source-channel files",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--folds", type=int, nargs="+", help="folds to average (default: all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo cases already written; also write into OUT when it holds files adseg did "
        "not write (they are left alone)",
    )


def _translate(args) -> None:
    from adseg.gan.inference import translate_scans
    from adseg.guard import writing
    from adseg.inference.inputs import check_exists

    check_exists(args.input, args.model)  # a wrong path named as such, before anything else
    with writing(args.out, "gan translate", [args.model, *args.input], args.overwrite):
        summary = translate_scans(
            args.input,
            args.out,
            args.model,
            args.folds,
            args.device,
            args.overwrite,
            not args.no_progress,
        )
    logger.info("translations in %s; per-case summary: %s", args.out, summary)


def _add_modes(tasks: argparse._SubParsersAction) -> None:
    p = _command(
        tasks,
        "modes",
        "Mode coverage of GAN losses on the ring of 8 Gaussians (gan.modes), with a table.",
        _modes,
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--losses", nargs="+", help="losses to train (default: gan.modes.losses)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: gan.modes.seeds)")
    p.add_argument("--steps", type=int, help="generator steps (default: gan.modes.steps)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: gan.modes.threads)")
    summary = p.add_mutually_exclusive_group()
    summary.add_argument(
        "--no-summary",
        action="store_true",
        help="train only; leave the table to a later 'adseg gan modes --summary-only'",
    )
    summary.add_argument(
        "--summary-only",
        action="store_true",
        help="only gather the losses already in OUT (or --losses) into modes.md",
    )
    add_overwrite_option(p)


def _modes(args) -> None:
    from adseg import tracking
    from adseg.gan.modes import run_modes_job, summarize_modes
    from adseg.guard import writing

    flags = ("losses", "seeds", "steps", "threads")
    given = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    # the flags are checked by the schema as the config's own values are
    config = load_config_for_command(args.config, {"gan": {"modes": given}}, args.set)
    losses = config["gan"]["modes"]["losses"]
    with writing(args.out, "gan modes", read_inputs(args), args.overwrite):
        if not args.summary_only:
            track = tracking.enabled(config)
            for loss in losses:
                run_modes_job(config, loss, args.out, not args.no_progress, track)
        if not args.no_summary:
            path = summarize_modes(args.out, args.losses)
            print(path.read_text())
            logger.info("mode coverage table: %s", path)


COMMANDS = {"gan": _add_gan}
