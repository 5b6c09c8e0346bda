"""Per-case evaluation of a trained fold on its held-out patients, in the original label space.

Each held-out case is predicted on its preprocessed grid, the class probabilities are resampled
onto the grid of the case's *original* label file and the argmax is compared with that file,
so the metrics (and distances in mm) are those of the scan as acquired, not of the resampled
copy. Metric definitions and empty-mask conventions: :mod:`adseg.evaluation.metrics`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from adseg.data.cohort import read_channel, read_label
from adseg.evaluation.calibration import BIN_COLUMNS, write_bins
from adseg.evaluation.detection import detection_label, save_detection_inputs
from adseg.evaluation.metrics import METRICS, calibration_bins, case_metrics, gland_mask
from adseg.geometry import Grid
from adseg.inference.modelfolder import read_fold
from adseg.inference.sliding import (
    make_inferer,
    predict_probabilities,
    remove_small_components,
    to_grid,
)
from adseg.io import atomic_dir, read_json
from adseg.log import logger, progress
from adseg.preprocessing.cohort import original_cases
from adseg.training.loader import case_items, validation_dataset

ID_COLUMNS = ("scheme", "fold", "seed", "case_id", "patient_id", "domain", "label")


def evaluate_fold(
    fold_dir: str | Path,
    preprocessed: str | Path,
    checkpoint: str = "final",
    tta: bool = False,
    min_overlap: float = 0.1,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    overlays: str | Path | None = None,
    detection: str | Path | None = None,
    reliability: str | Path | None = None,
) -> list[dict]:
    """Metrics of every held-out case of one trained fold, one row per (case, foreground label).

    Args:
        fold_dir: a model fold folder (``<scheme>/fold_<k>``).
        preprocessed: the preprocessed folder the model was trained on.
        checkpoint: ``final`` (unbiased) or ``best`` (chosen on these same cases).
        overlays: a folder for PNGs of the best, median and worst case by Dice (scan slice
            with expert and predicted contours), or None.
        detection: a folder for each case's lesion probabilities and expert mask on its
            original grid (:func:`adseg.evaluation.detection.save_detection_inputs`), the
            input of the cohort's PI-CAI detection metrics, or None. Written as a whole: it
            replaces the folder of an earlier evaluation once every case is in it.
        reliability: a TSV of each case's probability bins per foreground label, those its
            ECE is computed from (:func:`adseg.evaluation.metrics.calibration_bins`; columns
            :data:`RELIABILITY_COLUMNS`), or None.
    """
    preprocessed = Path(preprocessed)
    model = read_fold(fold_dir)
    spec = model.spec
    dataset = read_json(preprocessed / "dataset.json")
    originals = original_cases(preprocessed)
    net = model.segmentor(checkpoint, device)
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    inferer = make_inferer(dims, spec["patch_size"], axis)
    # older model folders have no test_cases: they were tested on their validation cases
    cases = validation_dataset(case_items(preprocessed, spec.get("test_cases", spec["val_cases"])))
    name = spec.get("name", spec["scheme"])
    lesion = detection_label(spec["labels"]) if detection is not None else None
    if detection is not None and lesion is None:
        logger.warning("no lesion label in %s: no detection inputs written", list(spec["labels"]))
    rows, bins = [], []
    masks = {}
    keep = atomic_dir(detection) if lesion is not None else contextlib.nullcontext()
    with keep as detection_dir:
        for item in progress(cases, f"evaluate {name} fold {spec['fold']}", enabled=show_progress):
            t0 = time.perf_counter()
            case_id = item["case_id"]
            props = read_json(preprocessed / "properties" / f"{case_id}.json")
            probs = predict_probabilities([net], item["image"], inferer, dims, axis, tta)
            probs = remove_small_components(probs, spec)
            truth_img = read_label(originals[case_id].label)
            pred, prob = to_grid(probs, Grid.from_dict(props["final_grid"]), Grid.of(truth_img))
            truth = sitk.GetArrayFromImage(truth_img)
            if overlays is not None:
                masks[case_id] = pred.astype("uint8")
            meta = dataset["cases"][case_id]
            ids = {
                "scheme": name,
                "fold": spec["fold"],
                "seed": spec.get("seed", 0),  # the training seed (model folders before it: 0)
                "case_id": case_id,
                "patient_id": meta["patient_id"],
                "domain": meta["domain"],
            }
            spacing_zyx = truth_img.GetSpacing()[::-1]
            rows += [
                ids | r
                for r in label_rows(truth, pred, prob, spec["labels"], spacing_zyx, min_overlap)
            ]
            bins += [
                ids | {"label": label} | b
                for label, value in sorted(spec["labels"].items(), key=lambda kv: kv[1])
                if value != 0
                for b in calibration_bins(truth == value, prob[value])
            ]
            if detection_dir is not None:
                value = spec["labels"][lesion]
                save_detection_inputs(
                    detection_dir, case_id, meta["patient_id"], prob[value], truth == value, lesion
                )
            logger.debug("%s evaluated in %.1f s", case_id, time.perf_counter() - t0)
    if reliability is not None:
        write_bins(reliability, bins, RELIABILITY_COLUMNS)
    if overlays is not None and rows:
        try:
            write_overlays(rows, masks, originals, Path(overlays), spec)
        except Exception as err:  # noqa: BLE001 - a figure must not cost the metrics
            logger.warning("overlays not drawn: %s", err)
    return rows


def label_rows(
    truth: np.ndarray,
    pred: np.ndarray,
    prob: np.ndarray,
    labels: dict[str, int],
    spacing,
    min_overlap: float = 0.1,
) -> list[dict]:
    """One case's metrics per foreground label (:func:`case_metrics`), each with its ``label``.

    Args:
        truth, pred: expert and predicted label maps ``(Z, Y, X)`` on the original grid.
        prob: the class probabilities ``(K, Z, Y, X)`` on that grid.
        labels: label name -> value, background 0.
        spacing: voxel size in mm, ``(z, y, x)``.
    """
    gland = gland_mask(truth, labels)
    return [
        {"label": label}
        | case_metrics(
            truth == value, pred == value, spacing, min_overlap, prob=prob[value], gland=gland
        )
        for label, value in sorted(labels.items(), key=lambda kv: kv[1])
        if value != 0
    ]


def write_overlays(rows, masks, originals, folder: Path, spec: dict) -> list[Path]:
    """``best.png``, ``median.png`` and ``worst.png``: the held-out cases ranked by the first
    foreground label's Dice, among those with an expert lesion (all, if none has one), each
    drawn with that label's masks (:func:`adseg.plots.overlay_figure`).

    Fixed names: a new evaluation replaces the figures of the last one.
    """
    from adseg.plots import overlay

    first = next(r["label"] for r in rows)
    value = spec["labels"][first]
    ranked = [r for r in rows if r["label"] == first]
    with_lesion = [r for r in ranked if r["volume_true_ml"] > 0]
    ranked = sorted(with_lesion or ranked, key=lambda r: -r["dice"])
    picks = {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}
    written = []
    for rank, row in picks.items():
        pred = masks[row["case_id"]]
        truth = sitk.GetArrayFromImage(read_label(originals[row["case_id"]].label))
        image = sitk.GetArrayFromImage(read_channel(originals[row["case_id"]].channels[0]))
        if image.shape != truth.shape:
            continue  # validation refuses such cases; nothing to draw on
        path = folder / f"{rank}.png"
        title = (
            f"{spec.get('name', spec['scheme'])} fold {spec['fold']}, {rank}: {row['case_id']} "
            f"({first} Dice {row['dice']:.2f})"
        )
        overlay(image, truth == value, pred == value, path, title, structure=first)
        written.append(path)
    return written


METRIC_COLUMNS = ID_COLUMNS + METRICS
RELIABILITY_COLUMNS = ID_COLUMNS + BIN_COLUMNS
