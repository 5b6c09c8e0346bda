"""Metrics on hand-made masks, including the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adseg.evaluation.metrics import METRICS, case_metrics, lesion_detection


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
