"""PI-CAI lesion detection over a cohort, from each case's probability map (``picai_eval``).

The per-case metrics (:mod:`adseg.evaluation.metrics`) judge each scan on its own; the PI-CAI
protocol ranks every lesion candidate and every case of a cohort by confidence:

- Lesion candidates: ``report_guided_annotation.extract_lesion_candidates`` with its default
  threshold, ``dynamic-fast``, as picai_eval's own documentation calls it
  (:data:`CANDIDATES`): up to 5 candidates per case, each a region (26-connected) above the
  case's highest peak / 2.5, of more than 10 voxels, carrying its peak probability as
  confidence.
- A candidate is a hit when its IoU with an expert lesion is >= 0.1 (picai_eval's default;
  candidates and lesions matched one to one; a second candidate on a found lesion is dropped,
  not counted as a false positive). Per-case ``lesion_fp`` in metrics.tsv counts otherwise:
  every component of the argmax mask that touches no expert lesion
  (:func:`adseg.evaluation.metrics.lesion_detection`).
- ``lesion_ap``: lesion-level average precision (picai_eval ``Metrics.AP``).
- ``patient_auroc``: AUROC of the case score (its highest candidate confidence) against
  whether the case has an expert lesion (``Metrics.auroc``).
- ``ranking_score``: (AUROC + AP) / 2, the PI-CAI ranking score (``Metrics.score``).
- ``froc_sens_fp0.5``, ``froc_sens_fp1``, ``froc_sens_fp2``: lesion sensitivity at 0.5, 1
  and 2 false-positive candidates per case, read off picai_eval's FROC curve
  (``lesion_TPR`` against ``lesion_FPR``) by :func:`froc_sensitivity`.
- ``n_cases``, ``n_positive`` (cases with an expert lesion), ``n_lesions`` (expert lesions).

Everything is per case (scan), as in picai_eval; in the synthetic cohort a patient may have two
visits, i.e. two cases. A confidence interval must resample patients, each with all of their
cases: :func:`summarise` takes any list of case ids, repeats allowed, so candidates are
extracted and matched once and a resample only re-ranks them.

Undefined (NaN): AP and FROC sensitivities when the cases hold no expert lesion; AUROC (and
so the ranking score) unless there are cases both with and without one.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from adseg.evaluation.metrics import is_zone_label
from adseg.io import atomic_path

with contextlib.redirect_stdout(io.StringIO()):  # each prints a banner on import
    from picai_eval import Metrics, evaluate
    from report_guided_annotation import extract_lesion_candidates

# report_guided_annotation's default mode, the one picai_eval's README uses: all of a case's
# candidates cut at its highest peak / 2.5. The "dynamic" mode (each candidate cut at its own
# peak) grows regions voxel by voxel: on the default run's poorly calibrated maps (p(lesion)
# about 0.25 over the whole background) it took 20 s a case against 0.02 s.
CANDIDATES = "dynamic-fast"
FROC_POINTS = {"froc_sens_fp0.5": 0.5, "froc_sens_fp1": 1.0, "froc_sens_fp2": 2.0}
DETECTION_METRICS = (
    "lesion_ap",
    "patient_auroc",
    "ranking_score",
    *FROC_POINTS,
    "n_cases",
    "n_positive",
    "n_lesions",
)
# picai_eval's threads (the candidate extraction is numpy and scipy, which free the GIL): 40
# cases on the default cohort's grid, ~25 false-positive blobs each, took 9.7 s in one thread
# and 5.3 s in two on 2 idle cores (no gain while another job held a core)
PARALLEL_CALLS = 2

# (case_id, patient_id, probability map (Z, Y, X), expert mask (Z, Y, X))
Case = tuple[str, str, np.ndarray, np.ndarray]


def detection_label(labels: dict[str, int]) -> str | None:
    """The label whose detection is measured: ``lesion`` if the cohort has one, else its first
    foreground label that is not a prostate zone, else None (a zones-only cohort)."""
    if "lesion" in labels:
        return "lesion"
    others = sorted((v, k) for k, v in labels.items() if v != 0 and not is_zone_label(k))
    return others[0][1] if others else None


def save_detection_inputs(
    folder: str | Path,
    case_id: str,
    patient_id: str,
    prob: np.ndarray,
    truth: np.ndarray,
    label: str = "lesion",
) -> Path:
    """Write ``<folder>/<case_id>.npz`` atomically: the label's probabilities (float16) and
    expert mask (uint8) on the case's original grid, its patient and label, compressed.

    Args:
        prob, truth: ``(Z, Y, X)`` arrays of the same shape.
    """
    if np.shape(prob) != np.shape(truth):
        raise ValueError(f"shapes differ: probabilities {np.shape(prob)}, mask {np.shape(truth)}")
    path = Path(folder) / f"{case_id}.npz"
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            prob=np.asarray(prob, np.float16),
            truth=(np.asarray(truth) > 0).astype(np.uint8),
            patient_id=np.array(str(patient_id)),
            label=np.array(label),
        )
    return path


def load_detection_inputs(folders: Iterable[str | Path]) -> list[Case]:
    """The cases that :func:`save_detection_inputs` wrote into ``folders`` (e.g. every fold of
    one scheme), sorted by folder and case id; probabilities as float32.

    Raises:
        ValueError: a case in two folders.
    """
    cases: list[Case] = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*.npz")):
            if path.name.startswith("."):
                continue  # a write that never finished
            with np.load(path) as f:
                prob, truth = f["prob"].astype(np.float32), f["truth"]
                cases.append((path.stem, str(f["patient_id"]), prob, truth))
    ids = [c[0] for c in cases]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"cases found in more than one folder: {', '.join(twice)}")
    return cases


def detection_map(prob: np.ndarray) -> np.ndarray:
    """The lesion candidates of one probability map, as picai_eval wants them: each candidate
    a connected region holding its confidence, 0 elsewhere (:data:`CANDIDATES` extraction).

    Args:
        prob: the label's probabilities ``(Z, Y, X)`` in [0, 1].

    Returns:
        float32 ``(Z, Y, X)``.
    """
    return extract_lesion_candidates(np.asarray(prob), threshold=CANDIDATES)[0].astype(np.float32)


def evaluate_detections(
    y_dets: Sequence[np.ndarray],
    y_trues: Sequence[np.ndarray],
    case_ids: Sequence[str] | None = None,
    num_parallel_calls: int = PARALLEL_CALLS,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Metrics:
    """picai_eval's matching of candidates to expert lesions, case by case, done once.

    Args:
        y_dets: detection maps (:func:`detection_map`), or probability maps with
            ``postprocess=detection_map``; ``(Z, Y, X)`` each.
        y_trues: the expert masks, same shapes.
        case_ids: the cases' names (default ``"0"``, ``"1"``, ...).
        num_parallel_calls: picai_eval's threads (1: in this thread).
    """
    case_ids = [str(i) for i in range(len(y_dets))] if case_ids is None else list(case_ids)
    if not len(y_dets) == len(y_trues) == len(case_ids):
        raise ValueError(
            f"{len(y_dets)} maps, {len(y_trues)} expert masks and {len(case_ids)} case ids"
        )
    for case, det, truth in zip(case_ids, y_dets, y_trues, strict=True):
        if np.shape(det) != np.shape(truth):
            raise ValueError(f"{case}: map {np.shape(det)} and mask {np.shape(truth)} differ")
    return evaluate(
        y_det=list(y_dets),
        y_true=[(np.asarray(t) > 0).astype(np.int32) for t in y_trues],
        subject_list=case_ids,
        y_det_postprocess_func=postprocess,
        num_parallel_calls=num_parallel_calls,
    )


def summarise(metrics: Metrics, case_ids: Sequence[str] | None = None) -> dict[str, float]:
    """:data:`DETECTION_METRICS` of the cases ``case_ids`` of ``metrics`` (default: all of
    them); a case listed twice counts twice, as in a bootstrap resample.

    The FROC thresholds are the candidates' confidences and 0: picai_eval replaces the point
    of its lowest threshold by the curve's flat extension to infinitely many false positives,
    and at 0 that point holds no candidate (without it the lowest-confidence candidates would
    drop off the curve when every lesion is found).
    """
    ids = list(metrics.subject_list if case_ids is None else case_ids)
    keys = [f"{k}:{case}" for k, case in enumerate(ids)]
    results = {key: metrics.lesion_results[c] for key, c in zip(keys, ids, strict=True)}
    confidences = {float(conf) for found in results.values() for _, conf, _ in found}
    sample = Metrics(
        lesion_results=results,
        case_target={key: int(metrics.case_target[c]) for key, c in zip(keys, ids, strict=True)},
        case_pred={key: float(metrics.case_pred[c]) for key, c in zip(keys, ids, strict=True)},
        thresholds=np.array(sorted(confidences | {0.0}, reverse=True)),
    )
    n_positive = sum(sample.case_target.values())
    n_lesions = int(sample.num_lesions)
    ap = float(sample.AP) if n_lesions else math.nan
    auroc = float(sample.auroc) if 0 < n_positive < len(ids) else math.nan
    tpr, fpr = sample.lesion_TPR, sample.lesion_FPR
    froc = {
        k: froc_sensitivity(tpr, fpr, x) if n_lesions else math.nan for k, x in FROC_POINTS.items()
    }
    return {
        "lesion_ap": ap,
        "patient_auroc": auroc,
        "ranking_score": (auroc + ap) / 2,
        **froc,
        "n_cases": len(ids),
        "n_positive": n_positive,
        "n_lesions": n_lesions,
    }


def detection_metrics(
    y_dets: Sequence[np.ndarray],
    y_trues: Sequence[np.ndarray],
    case_ids: Sequence[str] | None = None,
    num_parallel_calls: int = PARALLEL_CALLS,
) -> dict[str, float]:
    """:data:`DETECTION_METRICS` of detection maps already extracted (:func:`detection_map`).

    Args:
        y_dets, y_trues: detection maps and expert masks, ``(Z, Y, X)`` each.
    """
    return summarise(evaluate_detections(y_dets, y_trues, case_ids, num_parallel_calls))


def cohort_detection(
    cases: Sequence[Case], num_parallel_calls: int = PARALLEL_CALLS
) -> dict[str, float]:
    """The PI-CAI protocol on a cohort's probability maps: candidates extracted inside
    picai_eval (``y_det_postprocess_func``), then :func:`summarise`, plus ``n_patients``.

    Args:
        cases: ``(case_id, patient_id, probabilities, expert mask)`` per case
            (:func:`load_detection_inputs`), arrays ``(Z, Y, X)``.
    """
    metrics = evaluate_detections(
        [c[2] for c in cases],
        [c[3] for c in cases],
        [c[0] for c in cases],
        num_parallel_calls,
        postprocess=detection_map,
    )
    return summarise(metrics) | {"n_patients": len({c[1] for c in cases})}


def froc_sensitivity(tpr: Sequence[float], fpr: Sequence[float], fp_per_case: float) -> float:
    """Lesion sensitivity at ``fp_per_case`` false positives per case on an FROC curve.

    The curve's operating points (one per threshold; ``fpr`` may end in infinity, as
    picai_eval's does) plus the origin (a threshold above every confidence) are reduced to the
    best sensitivity at each false-positive rate, and the sensitivity is interpolated linearly
    between them (the operating point of picking between the two thresholds at random); past
    the last finite point it stays at that point's sensitivity. picai_eval's own
    ``lesion_TPR_at_FPR`` takes the last point at or below the rate instead (a step), never
    more than this.
    """
    tpr, fpr = np.asarray(tpr, np.float64), np.asarray(fpr, np.float64)
    keep = np.isfinite(fpr) & ~np.isnan(tpr)
    xs = np.concatenate([[0.0], fpr[keep]])
    ys = np.concatenate([[0.0], tpr[keep]])
    rates = np.unique(xs)
    best = np.array([ys[xs == x].max() for x in rates])
    return float(np.interp(fp_per_case, rates, best))
