"""``adseg predict``: masks for new scans from a trained model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from adseg.cli.common import add_command
from adseg.log import logger

EXAMPLE = (
    "adseg predict -i scans/ -o masks/ -m results/default/hybrid\n"
    "  adseg predict -i scans/ -o masks/ -m models:/adseg-default-hybrid@champion"
)
DESCRIPTION = """\
Segment new scans with a trained model folder (all folds as an ensemble).

Channels: the model takes the channels listed, in order, under "channel_names" in its
model.json (<model>/fold_<k>/model.json, e.g. ["T2w", "ADC", "DWI"]); predict logs
them and the label names at the start, e.g.
  <model> (fold(s) 0, 1) expects 3 channel(s), in this order: 0000 = T2w,
  0001 = ADC, 0002 = DWI (model.json channel_names); labels: 0 = background, ...
Files are matched to channels by their names and their order only, never by content:
  a folder   <case>_0000.nii.gz is channel 0000 (T2w above), <case>_0001.nii.gz
             channel 0001 (ADC), ... (nnU-Net naming; .nii too), or one 4-D
             <case>_0000.nii.gz holding every channel as a volume, in that order;
  files      the channel files of one case, the first file channel 0000, the next
             0001, ... (files named <case>_<k:04d> must be listed 0000, 0001, ...),
             or one 4-D file, volume k channel k.
A missing, extra or repeated channel is refused with the order above; a swap (an ADC
file named _0000) cannot be seen and gives a wrong mask, so check the names against
the start-up line. Scans are checked before anything is written: readable and
complete, not empty or constant, and each channel in world register with the
reference channel.

Outputs, per case, in the geometry (shape, affine, qform/sform) of its reference channel's
file (plans.json reference_channel, usually 0000):
  <case>.nii.gz                the mask (uint8 labels);
  <case>_probabilities.nii.gz  with --save-probabilities: float32, one volume per class;
  <case>_entropy.nii.gz        with --uncertainty: float32, the entropy of the ensemble's
                               mean class probabilities (over folds and --tta mirrorings)
                               divided by log(number of classes): 0 certain .. 1 all
                               classes equally likely;
  <case>_disagreement.nii.gz   with --uncertainty: float32, the fraction of the folds whose
                               own mask differs from the ensemble's at the voxel (0 = all
                               agree; always 0 with one fold).
predictions.csv has a row per case: per label its volume (<label>_ml) and lesion count
(<label>_count); with --uncertainty also each lesion's mean entropy
(<label>_mean_entropy, one value per lesion, "; "-separated) and the mean entropy over
all predicted foreground (mean_entropy); empty without it.

The output folder is never an input, inside one or holding one. predictions.csv records
per case the fingerprints of the model and of the input files; a rerun skips a finished
case made from the same ones (a rerun with --uncertainty redoes those without maps), and
refuses one made from another model or other files unless --overwrite."""


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "predict",
        "Segment new scans with a trained model folder (all folds as an ensemble).",
        _predict,
        EXAMPLE,
        config=False,
    )
    p.description = DESCRIPTION
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        nargs="+",
        required=True,
        help="a folder of <case>_<k:04d>.nii.gz files (k: the channel's place in model.json "
        "channel_names), or the channel files of one case in that order, or one 4-D file "
        "with the channels as volumes in that order",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="output folder (not an input, nor inside or around one)",
    )
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="model folder: <scheme>/ (all its fold_<k>/) or one fold_<k>/; or a registered "
        "model, models:/adseg-<experiment>-<scheme>@champion or models:/<name>/<version> "
        "(downloaded once into $ADSEG_CACHE, default ~/.cache/adseg)",
    )
    p.add_argument(
        "--tracking-uri",
        help="the MLflow store of a models:/ model (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///results/mlflow.db)",
    )
    p.add_argument("--folds", type=int, nargs="+", help="folds to ensemble (default: all)")
    p.add_argument("--tta", action="store_true", help="average over mirrored inputs")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (float32, one volume per class)",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write <case>_entropy.nii.gz (voxel entropy of the ensemble's mean "
        "probabilities, normalised to [0, 1]) and <case>_disagreement.nii.gz (fraction of "
        "folds whose mask differs from the ensemble's; all 0 with one fold), float32 in the "
        "scan's geometry, and each lesion's mean entropy in predictions.csv",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo cases already written, also those made from another model or other files",
    )
    p.add_argument(
        "--quality-threshold",
        type=float,
        help="flag maps the discriminator scores below this (default: the model's, the 5th "
        "percentile of its scores of expert maps)",
    )


def _predict(args) -> None:
    from adseg.guard import check_output
    from adseg.inference.inputs import check_exists

    if args.model.startswith("models:/"):  # a registered version: its cached download
        from adseg.tracking.fetch import fetch_model

        args.model = fetch_model(args.model, args.tracking_uri)
    args.model = Path(args.model)
    # paths and the guard first: they need no torch, so a wrong -m, -i or -o is refused at once
    check_exists(args.input, args.model)
    check_output(args.out, [*args.input, args.model], overwrite=args.overwrite)
    from adseg.inference.predict import PredictOptions, predict

    opts = PredictOptions(
        folds=args.folds,
        tta=args.tta,
        save_probabilities=args.save_probabilities,
        uncertainty=args.uncertainty,
        device=args.device,
        overwrite=args.overwrite,
        checkpoint=args.checkpoint,
        quality_threshold=args.quality_threshold,
        show_progress=not args.no_progress,
    )
    summary = predict(args.input, args.out, args.model, opts)
    logger.info("masks in %s; per-case summary: %s", args.out, summary)


COMMANDS = {"predict": _add_predict}
