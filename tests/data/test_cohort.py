"""Cohort discovery: both layouts, patient ids, and every structural problem named by file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import with_msd_keys

from adseg.data.cohort import CohortError, discover_cohort, read_channel, read_channels, read_label
from adseg.data.problems import ChannelSource, Problem


def errors(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems if p.level == "error"]


def only_error(problems: list[Problem]) -> Problem:
    found = [p for p in problems if p.level == "error"]
    assert len(found) == 1, [str(p) for p in problems]
    return found[0]


def edit_json(root: Path, **changes) -> dict:
    path = root / "dataset.json"
    dataset = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            dataset.pop(key, None)
        else:
            dataset[key] = value
    path.write_text(json.dumps(dataset))
    return dataset


def test_nnunet_one_file_per_channel(nnunet_cohort):
    root = nnunet_cohort(case_ids=("b", "a"))
    cohort, problems = discover_cohort(root)
    assert problems == []
    assert (cohort.layout, cohort.channel_names) == ("nnunet", ["T2w", "ADC"])
    assert cohort.labels == {"background": 0, "lesion": 1, "zone": 2}
    assert [c.case_id for c in cohort.cases] == ["a", "b"]
    case = cohort.cases[0]
    assert case.channels == (
        ChannelSource(root / "imagesTr" / "a_0000.nii.gz", None),
        ChannelSource(root / "imagesTr" / "a_0001.nii.gz", None),
    )
    assert case.label == root / "labelsTr" / "a.nii.gz"
    assert (case.patient_id, case.domain) == ("a", "unknown")


def test_nnunet_four_d_channel_file(nnunet_cohort):
    root = nnunet_cohort(four_d=True)
    cohort, problems = discover_cohort(root, layout="nnunet")
    assert problems == []
    path = root / "imagesTr" / "case_000_0000.nii.gz"
    assert cohort.cases[0].channels == (ChannelSource(path, 0), ChannelSource(path, 1))
    t2, adc = (read_channel(src) for src in cohort.cases[0].channels)
    assert t2.GetDimension() == 3 and t2.GetPixelID() == sitk.sitkFloat32
    diff = sitk.GetArrayFromImage(adc) - sitk.GetArrayFromImage(t2)
    np.testing.assert_allclose(diff, 10.0, atol=1e-4)
    assert t2.GetSpacing() == pytest.approx((0.6, 0.6, 3.0))
    assert t2.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_msd_four_d(msd_cohort, phantom):
    root = msd_cohort()
    cohort, problems = discover_cohort(root)
    assert problems == []  # the macOS ._ files are ignored
    assert (cohort.layout, cohort.channel_names) == ("msd", ["T2", "ADC"])
    assert cohort.labels == {"background": 0, "PZ": 1, "TZ": 2}
    case = cohort.cases[1]
    image = root / "imagesTr" / "prostate_01.nii.gz"
    assert case.channels == (ChannelSource(image, 0), ChannelSource(image, 1))
    expected, label = phantom(seed=1)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(read_channel(case.channels[1])), expected + 10
    )
    label_image = read_label(case.label)
    assert label_image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label_image), label)
    # RAS affine in the file: ITK (LPS) direction diag(-1, -1, 1)
    assert read_channel(case.channels[0]).GetDirection() == pytest.approx(
        (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    )


def test_msd_single_modality_is_3d(msd_cohort):
    root = msd_cohort(modalities=("T2",))
    cohort, problems = discover_cohort(root, layout="msd")
    assert problems == []
    assert cohort.cases[0].channels[0].index is None
    assert read_channel(cohort.cases[0].channels[0]).GetSize() == (8, 8, 6)


def test_auto_layout_names_file_and_missing_keys(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [], "labels": {}}))
    cohort, problems = discover_cohort(tmp_path)
    error = only_error(problems)
    assert error.path == str(tmp_path / "dataset.json")
    assert "'channel_names'" in error.message and "'modality'" in error.message
    assert "'training'" not in error.message
    assert cohort.cases == []


def test_a_dataset_json_with_both_layouts_keys_says_which_was_read_and_why(nnunet_cohort):
    root = nnunet_cohort()
    with_msd_keys(root)
    cohort, problems = discover_cohort(root)
    assert cohort.layout == "msd"
    assert cohort.layout_reason == "auto: dataset.json has 'training' and 'modality' (MSD)"
    (warning,) = [p for p in problems if "both layouts" in p.message]
    assert warning.level == "warning" and warning.path == str(root / "dataset.json")
    assert "set dataset.source: nnunet" in warning.message
    cohort, problems = discover_cohort(root, layout="nnunet")
    assert [c.case_id for c in cohort.cases] == ["case_000", "case_001"]
    assert not problems
    assert cohort.layout_reason == (
        "nnU-Net v2, as requested (dataset.source: nnunet); dataset.json would also fit "
        "Medical Segmentation Decathlon"
    )
    cohort, _ = discover_cohort(nnunet_cohort(name="Plain"))
    assert cohort.layout_reason == "auto: dataset.json has 'channel_names' (nnU-Net v2)"


def test_explicit_layout_missing_keys(nnunet_cohort):
    root = nnunet_cohort()
    edit_json(root, labels=None)
    error = only_error(discover_cohort(root, layout="nnunet")[1])
    assert error.message == "missing key(s) for the nnunet layout: labels"
    error = only_error(discover_cohort(root, layout="msd")[1])
    assert error.message == "missing key(s) for the msd layout: modality, labels, training"


def test_missing_or_invalid_dataset_json(tmp_path):
    error = only_error(discover_cohort(tmp_path)[1])
    assert error.path == str(tmp_path / "dataset.json") and "missing" in error.message
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "T2w"},')
    error = only_error(discover_cohort(tmp_path)[1])
    assert "not valid JSON" in error.message
    error = only_error(discover_cohort(tmp_path / "nowhere")[1])
    assert error.message == "cohort folder does not exist"


def test_bad_arguments_fail_early(tmp_path):
    with pytest.raises(ValueError, match="choose from auto, nnunet, msd"):
        discover_cohort(tmp_path, layout="nnunet2")
    with pytest.raises(ValueError, match="not a valid regex"):
        discover_cohort(tmp_path, patient_regex="(")
    with pytest.raises(ValueError, match="needs a group"):
        discover_cohort(tmp_path, patient_regex="^p")


def test_regions_are_rejected(nnunet_cohort):
    root = nnunet_cohort(labels={"background": 0, "lesion": 1, "whole": [1, 2]})
    error = only_error(discover_cohort(root)[1])
    assert error.path == str(root / "dataset.json")
    assert "label 'whole' is a region [1, 2]" in error.message
    assert "regions are not supported" in error.message


def test_missing_channel_names_case_file_and_channel(nnunet_cohort):
    root = nnunet_cohort(channels=("T2w", "ADC", "HBV"))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    cohort, problems = discover_cohort(root)
    error = only_error(problems)
    assert error.path == str(root / "imagesTr" / "case_001_0001.nii.gz")
    assert error.message == "case 'case_001' lacks channel 1 (ADC): case_001_0001.nii.gz"
    assert [c.case_id for c in cohort.cases] == ["case_000"]


def test_channel_beyond_declared(nnunet_cohort):
    root = nnunet_cohort()
    extra = root / "imagesTr" / "case_000_0002.nii.gz"
    extra.write_bytes((root / "imagesTr" / "case_000_0001.nii.gz").read_bytes())
    error = only_error(discover_cohort(root)[1])
    assert error.path == str(extra)
    assert "channel 2 is beyond the 2 channel(s) of dataset.json (T2w, ADC)" in error.message


def test_label_without_images_and_images_without_label(nnunet_cohort):
    root = nnunet_cohort()
    (root / "labelsTr" / "case_000.nii.gz").rename(root / "labelsTr" / "case_009.nii.gz")
    cohort, problems = discover_cohort(root)
    assert sorted(errors(problems)) == [
        f"ERROR  {root / 'labelsTr' / 'case_000.nii.gz'}: case 'case_000' has no label",
        f"ERROR  {root / 'labelsTr' / 'case_009.nii.gz'}: "
        "label without images (no imagesTr/case_009_XXXX files)",
    ]
    # the case stays, so validation still reads its images
    assert cohort.cases[0].label is None


def test_duplicate_case_ids_nnunet(nnunet_cohort):
    root = nnunet_cohort()
    images, labels = root / "imagesTr", root / "labelsTr"
    (images / "case_000_0000.nii").write_bytes(b"")
    (labels / "case_000.nii").write_bytes(b"")
    problems = discover_cohort(root)[1]
    assert len(errors(problems)) == 2
    by_path = {p.path: p.message for p in problems}
    assert "duplicate case" in by_path[str(images / "case_000_0000.nii.gz")]
    assert (
        "case_000_0000.nii is also 'case_000' channel 0"
        in by_path[str(images / "case_000_0000.nii.gz")]
    )
    assert "case_000.nii is also case 'case_000'" in by_path[str(labels / "case_000.nii.gz")]


def test_duplicate_case_ids_msd(msd_cohort):
    root = msd_cohort()
    image = root / "imagesTr" / "prostate_00.nii.gz"
    (root / "imagesTr" / "prostate_00.nii").write_bytes(image.read_bytes())
    dataset = json.loads((root / "dataset.json").read_text())
    training = dataset["training"]
    training += [
        training[0],
        {"image": "./imagesTr/prostate_00.nii", "label": training[0]["label"]},
    ]
    edit_json(root, training=training)
    cohort, problems = discover_cohort(root)
    found = errors(problems)
    assert f"ERROR  {image}: listed twice in training (entries 0 and 2)" in found
    assert any(
        str(root / "imagesTr" / "prostate_00.nii") in e and "duplicate case" in e for e in found
    )
    assert len(found) == 2
    assert [c.case_id for c in cohort.cases] == ["prostate_00", "prostate_01"]


def test_non_nifti_files_are_errors(nnunet_cohort):
    root = nnunet_cohort()
    (root / "imagesTr" / "notes.txt").write_text("scanner notes")
    (root / "labelsTr" / "case_000.png").write_bytes(b"\x89PNG")
    (root / "imagesTr" / "case_005.nii.gz").write_bytes(b"")
    (root / "imagesTr" / "._case_000_0000.nii.gz").write_bytes(b"mac")
    by_path = {p.path: p.message for p in discover_cohort(root)[1]}
    assert by_path == {
        str(root / "imagesTr" / "notes.txt"): "not a NIfTI file (.nii or .nii.gz)",
        str(root / "labelsTr" / "case_000.png"): "not a NIfTI file (.nii or .nii.gz)",
        str(root / "imagesTr" / "case_005.nii.gz"): (
            "name does not end in _XXXX (4-digit channel number)"
        ),
    }


def test_missing_image_folder(nnunet_cohort):
    root = nnunet_cohort()
    (root / "imagesTr").rename(root / "images")
    error = only_error(discover_cohort(root)[1])
    assert error.path == str(root / "imagesTr") and "folder missing" in error.message


def test_msd_entries_pointing_to_missing_files(msd_cohort):
    root = msd_cohort()
    (root / "imagesTr" / "prostate_00.nii.gz").unlink()
    (root / "labelsTr" / "prostate_01.nii.gz").unlink()
    cohort, problems = discover_cohort(root)
    by_path = {p.path: (p.level, p.message) for p in problems}
    missing = ("error", "listed in dataset.json training but missing")
    assert by_path[str(root / "imagesTr" / "prostate_00.nii.gz")] == missing
    assert by_path[str(root / "labelsTr" / "prostate_01.nii.gz")] == missing
    # the orphan label of the missing image is not silently used
    assert by_path[str(root / "labelsTr" / "prostate_00.nii.gz")][0] == "warning"
    assert [(c.case_id, c.label) for c in cohort.cases] == [("prostate_01", None)]


def test_patient_regex(nnunet_cohort):
    root = nnunet_cohort(case_ids=("p001_v1", "p001_v2", "p002_v1"))
    cohort, problems = discover_cohort(root, patient_regex=r"^(p\d+)_v\d$")
    assert problems == []
    assert [c.patient_id for c in cohort.cases] == ["p001", "p001", "p002"]


def test_patient_regex_mismatch_names_case_and_regex(nnunet_cohort):
    root = nnunet_cohort(case_ids=("p001_v1", "scan7"))
    cohort, problems = discover_cohort(root, patient_regex=r"^(p\d+)_v\d$")
    error = only_error(problems)
    assert error.path == str(root / "imagesTr" / "scan7_0000.nii.gz")
    assert error.message == r"case id 'scan7' does not match patient_regex '^(p\d+)_v\d$'"


def test_patient_and_domain_from_dataset_json(nnunet_cohort):
    meta = {"p001_v1": {"patient_id": 17, "domain": "siemens"}, "ghost": {"domain": "x"}}
    root = nnunet_cohort(case_ids=("p001_v1", "p002_v1"), cases_meta=meta)
    cohort, problems = discover_cohort(root, patient_regex=r"^(p\d+)_")
    assert [(c.patient_id, c.domain) for c in cohort.cases] == [
        ("17", "siemens"),
        ("p002", "unknown"),
    ]
    assert [(p.level, p.message) for p in problems] == [
        ("warning", "'cases' lists 'ghost', which has no complete images")
    ]


def test_problem_and_cohort_error_text(tmp_path):
    problems = [
        Problem("error", "a.nii.gz", "truncated"),
        Problem("warning", "b.nii.gz", "label is empty"),
        Problem("error", "c.nii.gz", "2-D image"),
    ]
    assert str(problems[0]) == "ERROR  a.nii.gz: truncated"
    assert str(problems[1]) == "WARNING b.nii.gz: label is empty"
    text = str(CohortError(problems))
    assert "ERROR  a.nii.gz: truncated" in text and "ERROR  c.nii.gz: 2-D image" in text
    assert "b.nii.gz" not in text
    # survives a process pool
    assert pickle.loads(pickle.dumps(CohortError(problems))).problems == problems


def test_read_label_rejects_non_integer_values(tmp_path, write_image):
    path = write_image(tmp_path / "lab.nii.gz", np.full((2, 3, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: label values are not integers"):
        read_label(path)
    path = write_image(tmp_path / "ok.nii.gz", np.ones((2, 3, 4), np.float32))
    assert read_label(path).GetPixelID() == sitk.sitkUInt8


def test_read_channel_wrong_index(tmp_path, write_image):
    path = write_image(tmp_path / "t2.nii.gz", np.ones((2, 3, 4), np.float32))
    with pytest.raises(
        ValueError, match=r"t2\.nii\.gz: image of size \(4, 3, 2\) has no channel 1"
    ):
        read_channel(ChannelSource(path, 1))


def test_read_channel_takes_a_singleton_4d_file_and_refuses_a_multichannel_one(
    tmp_path, write_nibabel
):
    """A one-file-per-channel source is read in one go: a 4-D file of one volume is that
    volume; one of several volumes names the file, since it needs a channel index."""
    volume = np.arange(24, dtype=np.float32).reshape(4, 3, 2)  # x, y, z
    # ITK's NIfTI reader drops a trailing axis of one itself; its MetaImage reader keeps it
    single = write_nibabel(tmp_path / "single.nii.gz", volume[..., None], np.eye(4))
    mha = tmp_path / "single.mha"
    sitk.WriteImage(sitk.JoinSeries(sitk.GetImageFromArray(volume.T)), str(mha))
    assert sitk.ReadImage(str(mha)).GetSize() == (4, 3, 2, 1)
    for path in (mha, single):
        image = read_channel(ChannelSource(path, None))
        assert image.GetSize() == (4, 3, 2)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.T)
    several = write_nibabel(
        tmp_path / "several.nii.gz", np.stack([volume, 2 * volume], -1), np.eye(4)
    )
    with pytest.raises(ValueError, match=r"several\.nii\.gz: image of size \(4, 3, 2, 2\)"):
        read_channel(ChannelSource(several, None))
    second = read_channel(ChannelSource(several, 1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(second), 2 * volume.T)
    assert second.GetDirection() == image.GetDirection()


def test_read_channels_reads_each_source_in_order_and_names_a_bad_file(tmp_path, write_nibabel):
    """The threaded read gives what read_channel gives, channel by channel; a file that fails
    raises its own error."""
    rng = np.random.default_rng(0)
    volumes = [rng.random((6, 5, 4)).astype(np.float32) for _ in range(3)]
    paths = [write_nibabel(tmp_path / f"c{i}.nii.gz", v, np.eye(4)) for i, v in enumerate(volumes)]
    stacked = write_nibabel(tmp_path / "all.nii.gz", np.stack(volumes, -1), np.eye(4))
    sources = [ChannelSource(p, None) for p in paths] + [ChannelSource(stacked, 1)]
    images = read_channels(sources)
    assert len(images) == 4
    for image, volume in zip(images, [*volumes, volumes[1]], strict=True):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.T)
    with pytest.raises(ValueError, match=r"all\.nii\.gz: image of size .* has no channel 5"):
        read_channels([*sources, ChannelSource(stacked, 5)])


def test_msd_paths_outside_the_dataset_folder_are_refused(msd_cohort):
    """An entry's image or label given by '..', as an absolute path or through a link that
    leads out of the dataset folder is an error naming the entry and the path; a '..' that
    stays inside is fine."""
    root = msd_cohort(case_ids=("prostate_00", "prostate_01", "prostate_02", "prostate_03"))
    outside = root.parent / "outside.nii.gz"
    outside.write_bytes(b"garbage, never to be read")
    link = root / "imagesTr" / "prostate_02.nii.gz"
    link.unlink()
    link.symlink_to(outside)
    dataset = json.loads((root / "dataset.json").read_text())
    training = dataset["training"]
    training[0]["image"] = "../outside.nii.gz"
    training[1]["label"] = str(outside)
    training[3]["label"] = "./labelsTr/../labelsTr/prostate_03.nii.gz"
    edit_json(root, training=training)
    cohort, problems = discover_cohort(root)
    json_path = str(root / "dataset.json")
    assert [(p.path, p.message) for p in problems if p.level == "error"] == [
        (
            json_path,
            f"training[0] 'image' '../outside.nii.gz' leads outside the dataset folder "
            f"(to {outside.resolve()}); not read",
        ),
        (
            json_path,
            f"training[1] 'label' '{outside}' is an absolute path (not read); give it relative "
            "to the dataset folder",
        ),
        (
            json_path,
            "training[2] 'image' './imagesTr/prostate_02.nii.gz' leads outside the dataset "
            f"folder (to {outside.resolve()}); not read",
        ),
    ]
    # the files the refused entries left unused are only warnings; the link is not "unlisted"
    assert sorted(p.path for p in problems if p.level == "warning") == [
        str(root / "imagesTr" / "prostate_00.nii.gz"),
        str(root / "labelsTr" / "prostate_00.nii.gz"),
        str(root / "labelsTr" / "prostate_01.nii.gz"),
        str(root / "labelsTr" / "prostate_02.nii.gz"),
    ]
    assert [(c.case_id, c.label) for c in cohort.cases] == [
        ("prostate_01", None),
        ("prostate_03", root / "labelsTr" / ".." / "labelsTr" / "prostate_03.nii.gz"),
    ]


def test_msd_label_outside_is_reported_even_when_the_image_is_missing(msd_cohort):
    root = msd_cohort()
    (root / "imagesTr" / "prostate_00.nii.gz").unlink()
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["training"][0]["label"] = "../../labels/prostate_00.nii.gz"
    edit_json(root, training=dataset["training"])
    messages = sorted(p.message for p in discover_cohort(root)[1] if p.level == "error")
    assert messages[0] == "listed in dataset.json training but missing"
    assert messages[1].startswith(
        "training[0] 'label' '../../labels/prostate_00.nii.gz' leads outside the dataset folder"
    )
    assert len(messages) == 2


@pytest.mark.parametrize("layout", ["nnunet", "msd"])
def test_num_training_must_match_the_cases_found(nnunet_cohort, msd_cohort, layout):
    root = nnunet_cohort() if layout == "nnunet" else msd_cohort()
    assert discover_cohort(root)[1] == []  # numTraining 2, two cases: fine
    edit_json(root, numTraining=3)
    cohort, problems = discover_cohort(root)
    error = only_error(problems)
    assert error.path == str(root / "dataset.json")
    counted = "imagesTr holds 2" if layout == "nnunet" else "'training' lists 2"
    assert error.message == f"'numTraining' is 3 but {counted} training case(s)"
    assert len(cohort.cases) == 2  # the cases are still checked
    edit_json(root, numTraining="2")
    assert only_error(discover_cohort(root)[1]).message == (
        "'numTraining' must be a non-negative integer, not '2'"
    )
    edit_json(root, numTraining=None)  # optional
    assert discover_cohort(root)[1] == []


def test_num_training_counts_incomplete_cases_as_nnunet_does(nnunet_cohort):
    """A case missing a channel is still a case (nnU-Net counts imagesTr's case ids): one
    error for the missing file, none for numTraining."""
    root = nnunet_cohort()
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    error = only_error(discover_cohort(root)[1])
    assert "lacks channel 1" in error.message
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    error = only_error(discover_cohort(root)[1])
    assert error.message == "'numTraining' is 2 but imagesTr holds 1 training case(s)"
