"""PI-CAI detection metrics (picai_eval) on hand-made probability maps with known rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adseg.evaluation.detection import (
    DETECTION_METRICS,
    cohort_detection,
    detection_label,
    detection_map,
    detection_metrics,
    evaluate_detections,
    froc_sensitivity,
    load_detection_inputs,
    save_detection_inputs,
    summarise,
)

SHAPE = (8, 32, 32)
# four places far apart, each a 2 x 4 x 4 block (32 voxels: candidates need more than 10)
PLACES = [(1, 2, 2), (1, 2, 20), (5, 20, 2), (5, 20, 20)]


def block(k: int) -> tuple[slice, ...]:
    z, y, x = PLACES[k]
    return slice(z, z + 2), slice(y, y + 4), slice(x, x + 4)


def case(case_id: str, lesion: tuple[int, float] | None, *false_positives: tuple[int, float]):
    """``(case_id, patient_id, probabilities, expert mask)``: a lesion ``(place, confidence)``
    predicted exactly where the expert drew it, and false positives elsewhere."""
    prob, truth = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.uint8)
    if lesion is not None:
        truth[block(lesion[0])] = 1
        prob[block(lesion[0])] = lesion[1]
    for place, confidence in false_positives:
        prob[block(place)] = confidence
    return case_id, f"patient_{case_id}", prob, truth


def test_perfect_maps_score_one():
    cases = [case("A", (0, 0.9)), case("B", (3, 0.6)), case("C", None), case("D", None)]
    out = cohort_detection(cases)
    assert set(out) == {*DETECTION_METRICS, "n_patients"}
    for metric in ("lesion_ap", "patient_auroc", "ranking_score", "froc_sens_fp0.5"):
        assert out[metric] == pytest.approx(1.0), metric
    assert (out["n_cases"], out["n_positive"], out["n_lesions"], out["n_patients"]) == (4, 2, 2, 4)


# A and B have a lesion, C and D none. Candidates by confidence: 0.95 FP (C), 0.9 TP (A),
# 0.8 FP (C), 0.7 FP (B), 0.5 FP (C), 0.4 FP (D), 0.3 TP (B).
RANKED = [
    case("A", (0, 0.9)),
    case("B", (1, 0.3), (3, 0.7)),
    case("C", None, (0, 0.95), (1, 0.8), (2, 0.5)),
    case("D", None, (2, 0.4)),
]


def test_a_negative_case_ranked_first_by_hand():
    out = cohort_detection(RANKED)
    # case scores A 0.9, B 0.7 against C 0.95, D 0.4: 2 of the 4 pairs ordered right
    assert out["patient_auroc"] == pytest.approx(0.5)
    # recall 1/2 at precision 1/2 (threshold 0.9), recall 1 at precision 2/7 (0.3)
    assert out["lesion_ap"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 7)
    assert out["ranking_score"] == pytest.approx((0.5 + 0.25 + 1 / 7) / 2)
    # FROC points (FP per case, sensitivity): (0.25, 0.5), (0.5, 0.5), (0.75, 0.5), (1, 0.5),
    # (1.25, 1): the second lesion, found last, still counts at 2 FP per case
    assert out["froc_sens_fp0.5"] == pytest.approx(0.5)
    assert out["froc_sens_fp1"] == pytest.approx(0.5)
    assert out["froc_sens_fp2"] == pytest.approx(1.0)


def test_precomputed_maps_give_the_same_metrics():
    maps = [detection_map(c[2]) for c in RANKED]
    # each candidate is one region carrying its confidence
    assert sorted(np.unique(maps[2])) == pytest.approx([0.0, 0.5, 0.8, 0.95])
    ids = [c[0] for c in RANKED]
    expected = cohort_detection(RANKED)
    expected.pop("n_patients")
    assert detection_metrics(maps, [c[3] for c in RANKED], ids) == pytest.approx(expected)


def test_summarise_resamples_cases_with_repeats():
    maps = [detection_map(c[2]) for c in RANKED]
    metrics = evaluate_detections(maps, [c[3] for c in RANKED], [c[0] for c in RANKED])
    out = summarise(metrics, ["A", "A", "C", "C"])
    assert (out["n_cases"], out["n_positive"], out["n_lesions"]) == (4, 2, 2)
    assert out["patient_auroc"] == pytest.approx(0.0)  # C's 0.95 above A's 0.9, twice over
    # 0.95 FP x2 ranked before 0.9 TP x2: recall 1 at precision 1/2
    assert out["lesion_ap"] == pytest.approx(0.5)
    assert summarise(metrics) == pytest.approx(summarise(metrics, ["A", "B", "C", "D"]))


def test_undefined_without_lesions_or_without_lesion_free_cases():
    negatives = [RANKED[2], RANKED[3]]
    out = cohort_detection(negatives)
    assert (out["n_positive"], out["n_lesions"]) == (0, 0)
    for metric in ("lesion_ap", "patient_auroc", "ranking_score", *DETECTION_METRICS[3:6]):
        assert math.isnan(out[metric]), metric
    positives = cohort_detection([RANKED[0], RANKED[1]])
    assert math.isnan(positives["patient_auroc"]) and math.isnan(positives["ranking_score"])
    assert positives["lesion_ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_froc_interpolation_on_a_known_curve():
    tpr, fpr = [0.5, 0.75, 0.75], [0.25, 1.0, math.inf]
    assert froc_sensitivity(tpr, fpr, 0.5) == pytest.approx(0.5 + 0.25 * (0.25 / 0.75))
    assert froc_sensitivity(tpr, fpr, 0.1) == pytest.approx(0.2)  # from the origin
    assert froc_sensitivity(tpr, fpr, 2.0) == pytest.approx(0.75)  # flat past the last point
    # several thresholds at one rate: the best sensitivity there
    assert froc_sensitivity([0.2, 0.6], [0.5, 0.5], 0.5) == pytest.approx(0.6)
    assert froc_sensitivity([0.2, 0.6], [0.5, 0.5], 0.25) == pytest.approx(0.3)


def test_detection_inputs_round_trip(tmp_path):
    fold1, fold2 = tmp_path / "fold_1", tmp_path / "fold_2"
    save_detection_inputs(fold1, "A", "p1", RANKED[0][2], RANKED[0][3])
    path = save_detection_inputs(fold2, "C", "p2", RANKED[2][2], RANKED[2][3])
    (fold2 / ".C.unfinished.npz").write_bytes(b"")  # a write killed half-way
    with np.load(path) as f:
        assert f["prob"].dtype == np.float16 and f["truth"].dtype == np.uint8
        assert str(f["label"]) == "lesion"
    cases = load_detection_inputs([fold1, fold2])
    assert [(c[0], c[1]) for c in cases] == [("A", "p1"), ("C", "p2")]
    np.testing.assert_allclose(cases[1][2], RANKED[2][2], atol=1e-3)
    np.testing.assert_array_equal(cases[0][3], RANKED[0][3])
    save_detection_inputs(fold2, "A", "p1", RANKED[0][2], RANKED[0][3])
    with pytest.raises(ValueError, match="more than one folder: A"):
        load_detection_inputs([fold1, fold2])
    with pytest.raises(ValueError, match="shapes differ"):
        save_detection_inputs(fold1, "B", "p3", np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="2 maps, 1 expert masks and 2 case ids"):
        evaluate_detections([np.zeros(SHAPE)] * 2, [np.zeros(SHAPE)], ["a", "b"])
    with pytest.raises(ValueError, match="a: map"):
        evaluate_detections([np.zeros(SHAPE)], [np.zeros((8, 32, 31))], ["a"])


def test_detection_label():
    assert detection_label({"background": 0, "lesion": 1, "peripheral_zone": 2}) == "lesion"
    assert detection_label({"background": 0, "PZ": 1, "tumour": 2}) == "tumour"
    assert detection_label({"background": 0, "PZ": 1, "TZ": 2}) is None
