"""Per-patient segmentation metrics, with stated conventions for empty masks.

Conventions (many patients have no lesion, so these decide the table):

- Dice: 1 when ground truth and prediction are both empty, 0 when only one is.
- Sensitivity TP/(TP+FN): undefined (NaN) when the ground truth is empty; such patients are
  excluded from its mean, and the number of patients used is reported beside it.
- Precision TP/(TP+FP): undefined (NaN) when the prediction is empty.
- Specificity TN/(TN+FP): defined whenever there are background voxels.
- 95 % Hausdorff distance (mm, MONAI): undefined (NaN) unless both masks are non-empty.
- Lesion-wise detection: lesions are connected components (26-connectivity in 3-D). A
  ground-truth lesion is detected (TP) when predicted voxels cover at least ``min_overlap`` of
  its volume; missed ones are FN; predicted components that touch no ground-truth lesion are FP.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
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
)


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


def case_metrics(
    truth: np.ndarray, pred: np.ndarray, spacing, min_overlap: float = 0.1
) -> dict[str, float]:
    """All metrics of one patient for binary masks of the same shape.

    Args:
        truth, pred: boolean (or 0/1) masks, ``(Z, Y, X)`` or 2-D.
        spacing: voxel size in mm, in the same axis order as the arrays.
    """
    truth, pred = np.asarray(truth) > 0, np.asarray(pred) > 0
    if truth.shape != pred.shape:
        raise ValueError(f"mask shapes differ: truth {truth.shape}, prediction {pred.shape}")
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
    }
