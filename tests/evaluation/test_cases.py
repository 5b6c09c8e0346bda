"""Evaluation of a trained fold against the original label files."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from adseg.evaluation.cases import METRIC_COLUMNS, evaluate_fold
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


def test_every_held_out_case_is_evaluated_on_its_original_grid(tiny_experiment, trained_fold):
    rows = evaluate_fold(trained_fold, tiny_experiment["preprocessed"], show_progress=False)
    val_cases = read_json(tiny_experiment["splits"])["folds"][1]["val"]
    assert sorted(r["case_id"] for r in rows) == sorted(val_cases)
    for row in rows:
        assert row["scheme"] == "ce" and row["fold"] == 1 and row["label"] == "lesion"
        raw = sitk.ReadImage(str(tiny_experiment["raw"] / "labelsTr" / f"{row['case_id']}.nii.gz"))
        voxel_ml = np.prod(raw.GetSpacing()) / 1000
        expected = np.count_nonzero(sitk.GetArrayViewFromImage(raw) == 1) * voxel_ml
        assert row["volume_true_ml"] == pytest.approx(expected)
        assert 0.0 <= row["dice"] <= 1.0


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
