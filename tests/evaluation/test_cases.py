"""Evaluation of a trained fold against the original label files."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from adseg.evaluation.calibration import bins_ece
from adseg.evaluation.cases import (
    METRIC_COLUMNS,
    RELIABILITY_COLUMNS,
    evaluate_fold,
    label_rows,
)
from adseg.evaluation.detection import load_detection_inputs
from adseg.evaluation.metrics import ECE_BINS
from adseg.io import read_json
from adseg.preprocessing.qc import read_tsv
from adseg.training.segmentation import train_fold


@pytest.fixture(scope="module")
def trained_fold(tiny_experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "ce" / "fold_1"
    config = copy.deepcopy(tiny_experiment["config"])
    config["train"]["epochs"] = 1
    train_fold(
        config,
        "ce",
        1,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        show_progress=False,
    )
    return out


def test_every_held_out_case_is_evaluated_on_its_original_grid(
    tiny_experiment, trained_fold, tmp_path
):
    detection, reliability = tmp_path / "detection", tmp_path / "reliability.tsv"
    rows = evaluate_fold(
        trained_fold,
        tiny_experiment["preprocessed"],
        show_progress=False,
        detection=detection,
        reliability=reliability,
    )
    val_cases = read_json(tiny_experiment["splits"])["folds"][1]["val"]
    assert sorted(r["case_id"] for r in rows) == sorted(val_cases)
    for row in rows:
        assert row["scheme"] == "ce" and row["fold"] == 1 and row["label"] == "lesion"
        raw = sitk.ReadImage(str(tiny_experiment["raw"] / "labelsTr" / f"{row['case_id']}.nii.gz"))
        voxel_ml = np.prod(raw.GetSpacing()) / 1000
        expected = np.count_nonzero(sitk.GetArrayViewFromImage(raw) == 1) * voxel_ml
        assert row["volume_true_ml"] == pytest.approx(expected)
        assert 0.0 <= row["dice"] <= 1.0
        assert set(METRIC_COLUMNS) <= set(row)
        assert 0.0 <= row["brier"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
        # defined exactly on lesion-free cases; the tiny cohort has no zone labels
        assert math.isnan(row["patient_specificity"]) == (expected > 0)
        assert math.isnan(row["patient_specificity"]) or row["patient_specificity"] in (0.0, 1.0)
        assert math.isnan(row["gland_specificity"])
    # the detection inputs: each case's lesion probabilities and expert mask, original grid
    cases = load_detection_inputs([detection])
    assert sorted(c[0] for c in cases) == sorted(val_cases)
    for case_id, patient_id, prob, truth in cases:
        raw = sitk.ReadImage(str(tiny_experiment["raw"] / "labelsTr" / f"{case_id}.nii.gz"))
        np.testing.assert_array_equal(truth, sitk.GetArrayFromImage(raw) == 1)
        assert prob.shape == truth.shape and prob.min() >= 0.0 and prob.max() <= 1.0
        assert patient_id == next(r["patient_id"] for r in rows if r["case_id"] == case_id)
        row = next(r for r in rows if r["case_id"] == case_id)
        # the stored map is the one the row's Brier score was computed from
        assert np.mean((prob - truth) ** 2) == pytest.approx(row["brier"], abs=1e-3)
    # the probability bins of each case: every voxel of its original grid, once; its ECE
    bins = read_tsv(reliability)
    assert list(bins[0]) == list(RELIABILITY_COLUMNS)
    for row in rows:
        raw = sitk.ReadImage(str(tiny_experiment["raw"] / "labelsTr" / f"{row['case_id']}.nii.gz"))
        mine = [b for b in bins if (b["case_id"], b["label"]) == (row["case_id"], row["label"])]
        assert [int(b["bin"]) for b in mine] == list(range(ECE_BINS))
        assert sum(int(b["voxels"]) for b in mine) == raw.GetNumberOfPixels()
        lesion = np.count_nonzero(sitk.GetArrayViewFromImage(raw) == 1)
        assert sum(int(b["positives"]) for b in mine) == lesion
        assert bins_ece(mine) == pytest.approx(row["ece"], abs=1e-6)


def test_evaluate_cli_writes_the_metrics_tsv(tiny_experiment, trained_fold, tmp_path):
    out = tmp_path / "metrics.tsv"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "adseg",
            "evaluate",
            str(trained_fold),
            "--preprocessed",
            str(tiny_experiment["preprocessed"]),
            "-o",
            str(out),
            "--checkpoint",
            "best",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    rows = read_tsv(out)
    assert list(rows[0]) == list(METRIC_COLUMNS)
    bins = read_tsv(tmp_path / "reliability.tsv")  # beside the metrics
    assert list(bins[0]) == list(RELIABILITY_COLUMNS)
    assert len(bins) == len(rows) * ECE_BINS
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "adseg",
            "evaluate",
            str(tmp_path),
            "--preprocessed",
            str(tiny_experiment["preprocessed"]),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert "not a complete model folder; missing model.json" in missing.stderr


def test_label_rows_of_a_zones_cohort():
    labels = {"background": 0, "lesion": 1, "peripheral_zone": 2, "transition_zone": 3}
    truth = np.array([[[0, 0, 0, 0], [0, 2, 1, 1], [0, 2, 3, 3]]])  # 6 gland voxels
    pred = np.array([[[0, 1, 0, 0], [0, 1, 1, 1], [0, 2, 3, 3]]])  # lesion FP in PZ and outside
    prob = np.stack([pred == k for k in range(4)]).astype(np.float32)
    rows = label_rows(truth, pred, prob, labels, (3.0, 1.0, 1.0))
    assert [r["label"] for r in rows] == ["lesion", "peripheral_zone", "transition_zone"]
    lesion, pz, tz = rows
    assert lesion["gland_specificity"] == pytest.approx(3 / 4)  # 1 FP among 4 gland negatives
    assert lesion["specificity"] == pytest.approx(8 / 10)
    assert pz["gland_specificity"] == 1.0 and pz["dice"] == pytest.approx(2 / 3)
    assert tz["gland_specificity"] == 1.0 and tz["dice"] == 1.0
    # hard probabilities: the Brier score is the share of voxels predicted wrong
    assert lesion["brier"] == pytest.approx(2 / 12) and pz["brier"] == pytest.approx(1 / 12)
    assert all(math.isnan(r["patient_specificity"]) for r in rows)
