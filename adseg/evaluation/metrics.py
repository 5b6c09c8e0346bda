"""Per-patient segmentation metrics, with stated conventions for empty masks.

Conventions (many patients have no lesion, so these decide the table):

- Dice: 1 when ground truth and prediction are both empty, 0 when only one is.
- Sensitivity TP/(TP+FN): undefined (NaN) when the ground truth is empty; such patients are
  excluded from its mean, and the number of patients used is reported beside it.
- Precision TP/(TP+FP): undefined (NaN) when the prediction is empty.
- Specificity TN/(TN+FP): defined whenever there are background voxels. Over a whole volume
  it is ~1 for any model (lesions fill a tiny share of it; Metrics Reloaded), so two stricter
  forms stand beside it:
- Patient specificity: for a case whose expert mask is empty, 1 when no voxel of the label is
  predicted and 0 otherwise; undefined (NaN) when the expert mask is non-empty. Its mean over
  cases is the share of lesion-free cases (scans, not patients) called lesion-free.
- Gland specificity: TN/(TN+FP) over the gland's voxels only (:func:`gland_mask`: every
  foreground voxel of the expert label map, when its labels include prostate zones);
  undefined (NaN) without zone labels, with no gland voxel, or when the label fills the gland.
- 95 % Hausdorff distance (mm, MONAI): undefined (NaN) unless both masks are non-empty.
- Lesion-wise detection: lesions are connected components (26-connectivity in 3-D). A
  ground-truth lesion is detected (TP) when predicted voxels cover at least ``min_overlap`` of
  its volume; missed ones are FN; predicted components that touch no ground-truth lesion are FP.
- Calibration of the label's probability map p against the expert one-hot y, over every voxel
  of the original grid: Brier score mean((p - y)^2) and expected calibration error (MONAI's
  ``CalibrationErrorMetric``, :data:`ECE_BINS` equal-width bins over [0, 1], bins weighted by
  their voxel counts). Both are defined for empty masks too; NaN when no map is given. The
  bins themselves (:func:`calibration_bins`, MONAI's ``calibration_binning``, which the metric
  uses) are what a reliability diagram draws (:mod:`adseg.evaluation.calibration`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import CalibrationErrorMetric, calibration_binning, compute_hausdorff_distance
from scipy import ndimage

METRICS = (
    "dice",
    "sensitivity",
    "specificity",
    "precision",
    "hd95_mm",
    "lesion_tp",
    "lesion_fn",
    "lesion_fp",
    "volume_true_ml",
    "volume_pred_ml",
    "patient_specificity",
    "gland_specificity",
    "brier",
    "ece",
)
# equal-width bins of the expected calibration error: the common default since Guo et al.
# 2017, not MONAI's 20
ECE_BINS = 15
# label names (lower case) of prostate zones besides those that end in "zone": the
# abbreviations of the MSD, Prostate158 and PI-CAI label files
ZONE_ABBREVIATIONS = ("pz", "tz", "cz", "afs")


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty (see the module docstring)."""
    denom = int(np.count_nonzero(truth)) + int(np.count_nonzero(pred))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(truth & pred)) / denom


def hd95(truth: np.ndarray, pred: np.ndarray, spacing) -> float:
    """95th percentile of the symmetric surface distance in mm; NaN unless both are non-empty."""
    if not truth.any() or not pred.any():
        return math.nan
    # MONAI wants batch-first, channel-first tensors: (1, 1, *spatial)
    p, t = (
        torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
        for m in (pred, truth)
    )
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument it passes to itself internally
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        value = compute_hausdorff_distance(p, t, percentile=95, spacing=list(spacing))
    return float(value.item())


def lesion_detection(
    truth: np.ndarray, pred: np.ndarray, min_overlap: float = 0.1
) -> tuple[int, int, int]:
    """Lesion-wise (TP, FN, FP) counts; see the module docstring for the overlap rule."""
    structure = ndimage.generate_binary_structure(truth.ndim, truth.ndim)
    truth_cc, n_true = ndimage.label(truth, structure)
    pred_cc, n_pred = ndimage.label(pred, structure)
    tp = 0
    for k in range(1, n_true + 1):
        lesion = truth_cc == k
        if pred[lesion].sum() >= min_overlap * lesion.sum():
            tp += 1
    touched = set(np.unique(pred_cc[truth > 0])) - {0}
    return tp, n_true - tp, n_pred - len(touched)


def patient_specificity(truth: np.ndarray, pred: np.ndarray) -> float:
    """1 or 0 for a case with an empty expert mask (nothing predicted or something), NaN for a
    case with a lesion (see the module docstring)."""
    if truth.any():
        return math.nan
    return 0.0 if pred.any() else 1.0


def is_zone_label(name: str) -> bool:
    """Whether a label names a prostate zone: ``*zone`` (``peripheral_zone``) or PZ/TZ/CZ/AFS."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return key.endswith("zone") or key in ZONE_ABBREVIATIONS


def gland_mask(label_map: np.ndarray, labels: dict[str, int]) -> np.ndarray | None:
    """The gland of an expert label map: every foreground voxel (the zones and the lesions
    inside them), or None when ``labels`` (name -> value) has no zone label, so that the
    foreground is not the gland.

    Args:
        label_map: the expert label map, integer ``(Z, Y, X)``.
        labels: the cohort's label names and values, background 0.
    """
    if not any(is_zone_label(name) for name in labels):
        return None
    return np.asarray(label_map) > 0


def brier(truth: np.ndarray, prob: np.ndarray) -> float:
    """Mean over voxels of (p - y)^2 for the label's probabilities p and expert mask y."""
    return float(np.mean((np.asarray(prob, np.float64) - truth) ** 2))


def ece(truth: np.ndarray, prob: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the label's probabilities over all voxels (MONAI's
    ``CalibrationErrorMetric``): voxels grouped into ``bins`` equal-width bins of p, each bin's
    |mean p - share of expert voxels| weighted by its share of the voxels; 15 bins by default.
    """
    metric = CalibrationErrorMetric(num_bins=bins, calibration_reduction="expected")
    # MONAI wants batch-first, channel-first tensors: (1, 1, *spatial)
    p, y = (
        torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
        for m in (prob, truth)
    )
    return float(metric(y_pred=p, y=y).item())


def calibration_bins(truth: np.ndarray, prob: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The bins :func:`ece` is computed from, as counts and sums that pool by adding.

    One dict per bin ``k`` of [k/bins, (k+1)/bins) (p = 1 in the last): ``voxels``, the sum of
    their probabilities ``prob_sum`` and the expert's voxels among them ``positives``. Binned
    by MONAI's ``calibration_binning``, the function ``CalibrationErrorMetric`` uses, so the
    bins give the metric's ECE (:func:`adseg.evaluation.calibration.bins_ece`); counts are
    exact below 2**24 voxels, as the metric's.

    Args:
        truth: the label's expert mask, any shape.
        prob: the label's probabilities, the same shape.
    """
    p, y = (
        torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
        for m in (prob, truth)
    )
    mean_p, mean_y, counts = (t[0, 0].double().numpy() for t in calibration_binning(p, y, bins))
    return [
        {
            "bin": k,
            "p_low": k / bins,
            "p_high": (k + 1) / bins,
            "voxels": int(n),
            # MONAI gives means (NaN in an empty bin); back to the sums they came from
            "prob_sum": float(mean_p[k] * n) if n else 0.0,
            "positives": int(round(mean_y[k] * n)) if n else 0,
        }
        for k, n in enumerate(counts)
    ]


def case_metrics(
    truth: np.ndarray,
    pred: np.ndarray,
    spacing,
    min_overlap: float = 0.1,
    prob: np.ndarray | None = None,
    gland: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one case for one label, as binary masks of the same shape.

    Args:
        truth, pred: boolean (or 0/1) masks of the label, ``(Z, Y, X)`` or 2-D.
        spacing: voxel size in mm, in the same axis order as the arrays.
        prob: the label's probabilities (same shape), or None: Brier score and ECE are NaN.
        gland: the gland's voxels (same shape, :func:`gland_mask`), or None: gland
            specificity is NaN.
    """
    truth, pred = np.asarray(truth) > 0, np.asarray(pred) > 0
    for name, other in (("prediction", pred), ("probability map", prob), ("gland", gland)):
        if other is not None and np.shape(other) != truth.shape:
            raise ValueError(f"mask shapes differ: truth {truth.shape}, {name} {np.shape(other)}")
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(~truth & pred))
    fn = int(np.count_nonzero(truth & ~pred))
    tn = truth.size - tp - fp - fn
    voxel_ml = float(np.prod(spacing)) / 1000.0
    les_tp, les_fn, les_fp = lesion_detection(truth, pred, min_overlap)
    return {
        "dice": dice(truth, pred),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "hd95_mm": hd95(truth, pred, spacing),
        "lesion_tp": les_tp,
        "lesion_fn": les_fn,
        "lesion_fp": les_fp,
        "volume_true_ml": (tp + fn) * voxel_ml,
        "volume_pred_ml": (tp + fp) * voxel_ml,
        "patient_specificity": patient_specificity(truth, pred),
        "gland_specificity": math.nan if gland is None else _gland_specificity(truth, pred, gland),
        "brier": math.nan if prob is None else brier(truth, prob),
        "ece": math.nan if prob is None else ece(truth, prob),
    }


def _gland_specificity(truth: np.ndarray, pred: np.ndarray, gland: np.ndarray) -> float:
    """TN/(TN+FP) over the voxels of ``gland`` only."""
    negative = np.asarray(gland, bool) & ~truth
    return _ratio(int(np.count_nonzero(negative & ~pred)), int(np.count_nonzero(negative)))
