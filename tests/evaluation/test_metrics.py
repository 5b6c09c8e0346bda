"""Metrics on hand-made masks, including the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adseg.evaluation.metrics import (
    ECE_BINS,
    METRICS,
    brier,
    case_metrics,
    ece,
    gland_mask,
    is_zone_label,
    lesion_detection,
)


def box(shape, *slices) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[slices] = True
    return m


def test_overlapping_boxes_by_hand():
    truth = box((4, 10, 10), slice(1, 3), slice(2, 6), slice(2, 6))  # 2*4*4 = 32 voxels
    pred = box((4, 10, 10), slice(1, 3), slice(4, 8), slice(2, 6))  # 32 voxels, 16 shared
    m = case_metrics(truth, pred, spacing=(3.0, 0.5, 0.5))
    assert set(m) == set(METRICS)
    assert m["dice"] == pytest.approx(2 * 16 / 64)
    assert m["sensitivity"] == pytest.approx(0.5) and m["precision"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx((400 - 48) / (400 - 32))
    assert m["volume_true_ml"] == pytest.approx(32 * 0.75 / 1000)
    # the boxes are shifted by 2 voxels = 1 mm along y
    assert m["hd95_mm"] == pytest.approx(1.0)
    assert (m["lesion_tp"], m["lesion_fn"], m["lesion_fp"]) == (1, 0, 0)


def test_empty_ground_truth_conventions():
    shape = (3, 8, 8)
    empty = np.zeros(shape, bool)
    both = case_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    assert both["specificity"] == 1.0 and math.isnan(both["hd95_mm"])
    false_alarm = case_metrics(empty, box(shape, slice(0, 1), slice(0, 2), slice(0, 2)), (1, 1, 1))
    assert false_alarm["dice"] == 0.0 and math.isnan(false_alarm["sensitivity"])
    assert false_alarm["precision"] == 0.0 and false_alarm["lesion_fp"] == 1
    missed = case_metrics(box(shape, slice(1, 2), slice(1, 3), slice(1, 3)), empty, (1, 1, 1))
    assert (
        missed["dice"] == 0.0 and missed["sensitivity"] == 0.0 and math.isnan(missed["precision"])
    )
    assert missed["lesion_fn"] == 1


def test_lesion_detection_overlap_rule():
    truth = box((1, 20, 20), slice(0, 1), slice(0, 10), slice(0, 10))  # 100 voxels
    truth |= box((1, 20, 20), slice(0, 1), slice(15, 18), slice(15, 18))  # a second lesion
    nick = box((1, 20, 20), slice(0, 1), slice(0, 1), slice(0, 5))  # covers 5 % of lesion 1
    far = box((1, 20, 20), slice(0, 1), slice(12, 13), slice(0, 2))  # touches nothing
    assert lesion_detection(truth, nick | far, min_overlap=0.1) == (0, 2, 1)
    assert lesion_detection(truth, nick | far, min_overlap=0.05) == (1, 1, 1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="mask shapes differ"):
        case_metrics(np.zeros((2, 2)), np.zeros((2, 3)), (1, 1))
    with pytest.raises(ValueError, match=r"probability map \(3, 2\)"):
        case_metrics(np.zeros((2, 2)), np.zeros((2, 2)), (1, 1), prob=np.zeros((3, 2)))


def test_patient_specificity_only_on_lesion_free_cases():
    shape = (2, 6, 6)
    empty = np.zeros(shape, bool)
    spot = box(shape, slice(0, 1), slice(0, 2), slice(0, 2))
    assert case_metrics(empty, empty, (1, 1, 1))["patient_specificity"] == 1.0
    assert case_metrics(empty, spot, (1, 1, 1))["patient_specificity"] == 0.0
    for pred in (empty, spot):  # a case with a lesion has no specificity of this kind
        assert math.isnan(case_metrics(spot, pred, (1, 1, 1))["patient_specificity"])


# a 1 x 4 x 5 expert label map of the lesion+zones label set: 12 gland voxels, 8 outside
ZONES = {"background": 0, "lesion": 1, "peripheral_zone": 2, "transition_zone": 3}
LABEL_MAP = np.array(
    [
        [
            [0, 0, 0, 0, 0],
            [0, 2, 2, 1, 1],
            [0, 2, 3, 3, 1],
            [0, 2, 3, 3, 3],
        ]
    ]
)


def test_gland_specificity_counts_the_gland_only():
    gland = gland_mask(LABEL_MAP, ZONES)
    assert np.count_nonzero(gland) == 12
    truth = LABEL_MAP == 1  # 3 lesion voxels: 9 gland voxels are negatives
    pred = np.zeros_like(truth)
    pred[0, 1, 1] = pred[0, 2, 2] = True  # 2 false positives in the gland (PZ, TZ)
    pred[0, 0, 0:3] = True  # 3 more outside it: no matter here
    m = case_metrics(truth, pred, (3.0, 0.5, 0.5), prob=None, gland=gland)
    assert m["gland_specificity"] == pytest.approx(7 / 9)
    assert m["specificity"] == pytest.approx(12 / 17)  # the whole volume's, for contrast
    assert case_metrics(truth, truth, (1, 1, 1), gland=gland)["gland_specificity"] == 1.0


def test_gland_specificity_needs_zone_labels():
    lesion_only = {"background": 0, "lesion": 1}
    assert gland_mask(LABEL_MAP, lesion_only) is None
    m = case_metrics(LABEL_MAP == 1, LABEL_MAP == 1, (1, 1, 1), gland=None)
    assert math.isnan(m["gland_specificity"])
    msd = {"background": 0, "PZ": 1, "TZ": 2}
    assert np.count_nonzero(gland_mask(LABEL_MAP, msd)) == 12
    assert is_zone_label("Peripheral zone") and is_zone_label("tz")
    assert not is_zone_label("lesion") and not is_zone_label("background")
    # no gland in the expert map: nothing to be specific on
    no_gland = gland_mask(np.zeros_like(LABEL_MAP), ZONES)
    empty = np.zeros(LABEL_MAP.shape, bool)
    assert math.isnan(case_metrics(empty, empty, (1, 1, 1), gland=no_gland)["gland_specificity"])


# five voxels: p and y by hand
P = np.array([[[0.1, 0.1, 0.9, 0.9, 0.5]]], np.float32)
Y = np.array([[[0, 1, 1, 1, 0]]], bool)


def test_brier_by_hand():
    # (0.1^2 + 0.9^2 + 0.1^2 + 0.1^2 + 0.5^2) / 5
    assert brier(Y, P) == pytest.approx(1.09 / 5, abs=1e-6)
    assert brier(Y, Y.astype(float)) == 0.0


def test_ece_by_hand():
    # 15 bins of width 1/15: {0.1, 0.1} mean y 0.5, {0.9, 0.9} mean y 1, {0.5} mean y 0
    # ECE = (2 * 0.4 + 2 * 0.1 + 1 * 0.5) / 5
    assert ece(Y, P) == pytest.approx(0.3, abs=1e-6)
    m = case_metrics(Y, P > 0.5, (1, 1, 1), prob=P)
    assert m["ece"] == pytest.approx(0.3, abs=1e-6) and m["brier"] == pytest.approx(0.218)


def test_ece_uses_15_bins():
    # 0.34 and 0.36 share the bin [1/3, 2/5) of 15 bins: |0.35 - 0.5| = 0.15; with MONAI's 20
    # bins they are apart: (0.34 + 0.64) / 2 = 0.49
    p = np.array([[0.34, 0.36]], np.float32)
    y = np.array([[0, 1]])
    assert ECE_BINS == 15
    assert ece(y, p) == pytest.approx(0.15, abs=1e-6)
    assert ece(y, p, bins=20) == pytest.approx(0.49, abs=1e-6)


def test_calibration_is_nan_without_a_probability_map():
    m = case_metrics(Y, Y, (1, 1, 1))
    assert math.isnan(m["brier"]) and math.isnan(m["ece"])
