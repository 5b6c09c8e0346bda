"""Preprocessing a whole cohort: outputs, fingerprint, QC table, and all-or-nothing writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from adseg.config import resolve_config
from adseg.data.cohort import CohortError
from adseg.data.validation import validate_cohort
from adseg.geometry import orientation_code
from adseg.preprocessing import store
from adseg.preprocessing.cohort import PreprocessedError, original_cases, prepare_cohort
from adseg.preprocessing.qc import read_tsv


def config_for(source: str, **preprocess) -> dict:
    config = resolve_config({"dataset": {"source": "synthetic"}, "preprocess": preprocess})
    config["dataset"]["source"] = source  # the path check needs a real folder; tests pass root
    return config


def test_nnunet_cohort_with_channels_on_two_grids(nnunet_cohort, tmp_path):
    root = nnunet_cohort(
        case_ids=("a_1", "a_2", "b_1"),
        cases_meta={
            "a_1": {"patient_id": "A", "domain": "X"},
            "a_2": {"patient_id": "A", "domain": "X"},
            "b_1": {"patient_id": "B", "domain": "Y"},
        },
    )
    out = tmp_path / "pre"
    fingerprint = prepare_cohort(
        root, config_for("nnunet", target_spacing=[1.2, 1.2, 3.0]), out, show_progress=False
    )
    assert fingerprint["n_cases"] == 3 and fingerprint["target_spacing"] == [1.2, 1.2, 3.0]
    assert fingerprint["domains"] == {"X": 2, "Y": 1}
    for case in ("a_1", "a_2", "b_1"):
        images = [sitk.ReadImage(str(out / "imagesTr" / f"{case}_{c:04d}.nii.gz")) for c in (0, 1)]
        label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
        assert images[0].GetSize() == images[1].GetSize() == label.GetSize()
        assert images[0].GetSpacing() == pytest.approx((1.2, 1.2, 3.0))
        assert orientation_code(images[0].GetDirection()) == "RAS"
        arr = sitk.GetArrayFromImage(images[0])
        assert abs(arr.mean()) < 1e-3 and arr.std() == pytest.approx(1.0, abs=1e-3)  # z-score
        props = json.loads((out / "properties" / f"{case}.json").read_text())
        assert props["final_grid"]["size"] == list(label.GetSize())
        assert len(props["original_channel_grids"]) == 2
        # the arrays training reads hold the same voxels, in SimpleITK's order
        arrays = store.open_case(out, case, in_memory=True)
        stacked = np.stack([sitk.GetArrayFromImage(i) for i in images])
        assert np.array_equal(arrays["image"], stacked.transpose(0, 3, 2, 1))
        assert np.array_equal(arrays["label"][0], sitk.GetArrayFromImage(label).transpose())
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["cases"]["a_2"]["patient_id"] == "A"
    assert json.loads((out / "plans.json").read_text())["channel_names"] == ["T2w", "ADC"]
    rows = read_tsv(out / "qc.tsv")
    assert [r["case_id"] for r in rows] == ["a_1", "a_2", "b_1"]
    for column in (
        "T2w_orientation",
        "ADC_spacing",
        "T2w_p99",
        "lesion_ml",
        "lesion_ml_preprocessed",
        "preprocessed_size",
        "warnings",
    ):
        assert column in rows[0]
    assert float(rows[0]["lesion_ml"]) > 0


def test_validation_warnings_reach_the_qc_table(nnunet_cohort, tmp_path):
    root = nnunet_cohort(case_ids=("full", "empty"))
    label = root / "labelsTr" / "empty.nii.gz"
    image = sitk.ReadImage(str(label))
    sitk.WriteImage(image * 0, str(label))
    prepare_cohort(
        root,
        config_for("nnunet", target_spacing=[1.2, 1.2, 3.0]),
        tmp_path / "pre",
        show_progress=False,
    )
    rows = {r["case_id"]: r for r in read_tsv(tmp_path / "pre" / "qc.tsv")}
    assert "label is empty (no foreground voxels)" in rows["empty"]["warnings"]
    assert rows["full"]["warnings"] == ""


def test_msd_four_d_cohort_with_auto_spacing(msd_cohort, tmp_path):
    root = msd_cohort()
    out = tmp_path / "pre"
    fingerprint = prepare_cohort(
        root, config_for("msd", target_spacing="auto"), out, show_progress=False
    )
    # all cases share one spacing here, so nnU-Net's rule gives it back (after reorientation)
    assert fingerprint["target_spacing"] == pytest.approx([0.6, 0.6, 3.0])
    plans = json.loads((out / "plans.json").read_text())
    assert plans["channel_names"] == ["T2", "ADC"]
    assert plans["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "prostate_00.nii.gz")))
    assert set(np.unique(label)) <= {0, 1, 2} and (label == 2).any()


def test_given_report_is_used_and_must_match(nnunet_cohort, tmp_path):
    root = nnunet_cohort()
    config = config_for("nnunet", target_spacing=[2.0, 2.0, 3.0])
    report = validate_cohort(root, progress=False)
    prepare_cohort(root, config, tmp_path / "pre", report=report, show_progress=False)
    other = nnunet_cohort(case_ids=("zzz",), name="Other")
    with pytest.raises(ValueError, match="does not match the cohort"):
        prepare_cohort(other, config, tmp_path / "pre2", report=report, show_progress=False)
    assert not (tmp_path / "pre2").exists()


def test_errors_stop_before_any_work(nnunet_cohort, tmp_path):
    root = nnunet_cohort()
    bad = root / "imagesTr" / "case_001_0001.nii.gz"
    bad.write_bytes(b"not an image")
    out = tmp_path / "pre"
    with pytest.raises(CohortError) as err:
        prepare_cohort(root, config_for("nnunet"), out, show_progress=False)
    assert "case_001_0001.nii.gz" in str(err.value)
    assert not out.exists()


def test_a_previous_output_survives_a_failed_run(nnunet_cohort, tmp_path):
    root = nnunet_cohort()
    out = tmp_path / "pre"
    config = config_for("nnunet", target_spacing=[2.0, 2.0, 3.0])
    prepare_cohort(root, config, out, show_progress=False)
    before = sorted(p.name for p in out.rglob("*"))
    (root / "labelsTr" / "case_000.nii.gz").write_bytes(b"")
    with pytest.raises(CohortError):
        prepare_cohort(root, config, out, show_progress=False)
    assert sorted(p.name for p in out.rglob("*")) == before


def test_parallel_workers_give_identical_output(nnunet_cohort, tmp_path):
    root = nnunet_cohort(case_ids=("c0", "c1", "c2"))
    config = config_for("nnunet", target_spacing=[1.5, 1.5, 3.0])
    prepare_cohort(root, config, tmp_path / "one", workers=1, show_progress=False)
    prepare_cohort(root, config, tmp_path / "two", workers=2, show_progress=False)
    for path in sorted((tmp_path / "one" / "imagesTr").glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / "imagesTr" / path.name)))
        np.testing.assert_array_equal(a, b)


def test_the_preprocessed_folder_records_the_original_files(nnunet_cohort, tmp_path):
    """Later stages read the originals from this record (never by detecting the layout
    again), and say so when the record is missing or a recorded file is gone."""
    root = nnunet_cohort(case_ids=("a", "b"), channels=("T2w", "ADC"))
    out = tmp_path / "pre"
    prepare_cohort(
        root, config_for("nnunet", target_spacing=[1.2, 1.2, 3.0]), out, show_progress=False
    )
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["source_layout"] == "nnunet"
    assert dataset["cases"]["a"]["original"] == {
        "channels": [
            {"path": "imagesTr/a_0000.nii.gz", "index": None},
            {"path": "imagesTr/a_0001.nii.gz", "index": None},
        ],
        "label": "labelsTr/a.nii.gz",
    }
    originals = original_cases(out)
    assert sorted(originals) == ["a", "b"]
    assert originals["b"].label == root.resolve() / "labelsTr" / "b.nii.gz"
    assert [c.path.name for c in originals["b"].channels] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    # a file of the cohort moved away: named, with the record it was found in
    (root / "labelsTr" / "b.nii.gz").rename(tmp_path / "b.nii.gz")
    with pytest.raises(PreprocessedError, match=r"labelsTr/b.nii.gz: original file of case b"):
        original_cases(out)
    # a folder written before the record existed
    del dataset["cases"]["a"]["original"]
    (out / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(PreprocessedError, match="no record of the original files of 1 case"):
        original_cases(out)
