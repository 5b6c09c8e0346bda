"""Validation reads every file and reports every problem, each naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from adseg.data.validation import ValidationReport, validate_cohort

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
T2_SPACING = (0.6, 0.6, 3.0)


def validate(root: Path, **kwargs) -> ValidationReport:
    return validate_cohort(root, progress=False, **kwargs)


def messages(report: ValidationReport, path: Path, level: str = "error") -> list[str]:
    """Messages of one level about one file."""
    return [p.message for p in report.problems if p.path == str(path) and p.level == level]


def rotation_z(degrees: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def test_clean_nnunet_cohort(nnunet_cohort, phantom):
    report = validate(nnunet_cohort())
    assert report.ok() and report.problems == [] and report.warnings == []
    assert (report.layout, report.n_cases) == ("nnunet", 2)
    info = report.cases[0]
    assert info.case_id == "case_000"
    t2, adc = info.channel_grids
    assert t2["size"] == [8, 8, 6] and adc["size"] == [4, 4, 6]
    assert t2["spacing"] == pytest.approx(T2_SPACING)
    assert info.label_grid["size"] == [8, 8, 6]
    assert info.label_values == [0, 1, 2]
    assert info.label_voxels == {"background": 280, "lesion": 52, "zone": 52}
    assert set(info.intensity[0]) == {"min", "max", "mean", "std", "p01", "p99"}
    image = phantom(seed=0)[0]
    assert info.intensity[0]["mean"] == pytest.approx(image.mean(), rel=1e-6)
    assert info.intensity[1]["mean"] == pytest.approx(image[:, ::2, ::2].mean() + 10, rel=1e-6)
    assert info.intensity[0]["p99"] == pytest.approx(np.percentile(image, 99), rel=1e-6)


def test_clean_four_d_cohorts(nnunet_cohort, msd_cohort):
    for root in (nnunet_cohort(four_d=True), msd_cohort()):
        report = validate(root)
        assert report.ok() and report.problems == [], report.format()
        info = report.cases[0]
        assert info.channel_grids[0] == info.channel_grids[1]
        assert info.label_values == [0, 1, 2]
    assert report.cases[0].label_voxels == {"background": 280, "PZ": 52, "TZ": 52}


def test_truncated_gzip_file(nnunet_cohort):
    root = nnunet_cohort()
    path = root / "imagesTr" / "case_000_0001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = validate(root)
    [message] = messages(report, path)
    assert message.startswith("truncated or corrupt: gzip stream broken")
    assert report.cases[0].channel_grids[1] == {} and report.cases[0].intensity[1] == {}


def test_truncated_uncompressed_file(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort(case_ids=("a",))
    (root / "labelsTr" / "a.nii.gz").unlink()
    path = write_image(root / "labelsTr" / "a.nii", phantom()[1], T2_SPACING)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    [message] = messages(validate(root), path)
    assert (
        message == f"truncated or corrupt: {len(data) // 2} bytes of {len(data)} the header needs"
    )


def test_not_nifti_files(nnunet_cohort):
    root = nnunet_cohort()
    text = root / "imagesTr" / "case_000_0000.nii.gz"
    text.write_text("this is not an image\n")
    png = root / "labelsTr" / "case_001.nii.gz"
    fig = plt.figure(figsize=(0.2, 0.2))
    fig.savefig(png, format="png")
    plt.close(fig)
    report = validate(root)
    [message] = messages(report, text)
    assert message == (
        "not a NIfTI file, or its header is damaged "
        "(case_000_0000.nii.gz is not recognized as a NIFTI file)"
    )
    [message] = messages(report, png)
    assert message == "not a NIfTI file (ITK reads it as PNG)"


def test_zero_byte_file(nnunet_cohort):
    root = nnunet_cohort()
    path = root / "labelsTr" / "case_000.nii.gz"
    path.write_bytes(b"")
    assert messages(validate(root), path) == ["empty file (0 bytes)"]


def test_wrong_dimensionality(nnunet_cohort, write_image, write_nibabel, phantom):
    root = nnunet_cohort()
    image, label = phantom()
    flat = write_image(root / "imagesTr" / "case_000_0000.nii.gz", image[0])
    stacked = np.stack([label.transpose(2, 1, 0)] * 3, axis=-1)
    label4 = write_nibabel(root / "labelsTr" / "case_001.nii.gz", stacked)
    adc4 = write_nibabel(root / "imagesTr" / "case_001_0001.nii.gz", stacked.astype(np.float32))
    report = validate(root)
    assert messages(report, flat) == ["2-D image (8x8); expected 3-D"]
    assert messages(report, label4) == ["4-D image (8x8x6x3) holds 3 volumes; expected 3-D"]
    assert messages(report, adc4) == ["4-D image (8x8x6x3) holds 3 volumes; expected 3-D"]


def test_four_d_with_one_volume_is_3d(nnunet_cohort, write_nibabel, phantom):
    root = nnunet_cohort()
    label = phantom()[1].transpose(2, 1, 0)[..., None]
    write_nibabel(root / "labelsTr" / "case_000.nii.gz", label, np.diag([-0.6, -0.6, 3.0, 1.0]))
    report = validate(root)
    assert report.ok(), report.format()
    assert report.cases[0].label_values == [0, 1, 2]


def test_msd_channel_count_mismatch(msd_cohort, write_nibabel, phantom):
    root = msd_cohort()
    image = phantom()[0].transpose(2, 1, 0)
    three = write_nibabel(root / "imagesTr" / "prostate_00.nii.gz", np.stack([image] * 3, -1))
    single = write_nibabel(root / "imagesTr" / "prostate_01.nii.gz", image)
    report = validate(root)
    assert messages(report, three) == [
        "4-D image with 3 channels; dataset.json declares 2 (T2, ADC)"
    ]
    assert messages(report, single) == [
        "3-D image; dataset.json declares 2 (T2, ADC) channels in a 4-D file"
    ]


@pytest.mark.parametrize(
    ("spacing", "origin", "direction", "expected"),
    [
        (T2_SPACING, (0.312, 0, 0), LPS, "origin off by 0.52 voxel (tolerance 0.01)"),
        ((0.6, 0.6, 3.3), (0, 0, 0), LPS, "spacing off by 0.1 (relative) (tolerance 0.01)"),
        (T2_SPACING, (0, 0, 0), rotation_z(3), "direction off by 0.0523 (cosine) (tolerance 0.01)"),
    ],
)
def test_label_grid_differs(
    nnunet_cohort, write_image, phantom, spacing, origin, direction, expected
):
    root = nnunet_cohort()
    path = write_image(
        root / "labelsTr" / "case_001.nii.gz", phantom()[1], spacing, origin, direction
    )
    assert messages(validate(root), path) == [f"label grid differs from T2w: {expected}"]


def test_label_grid_size_and_tolerance(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort()
    label = phantom()[1]
    small = write_image(root / "labelsTr" / "case_000.nii.gz", label[:5], T2_SPACING)
    close = write_image(root / "labelsTr" / "case_001.nii.gz", label, T2_SPACING, (0.003, 0, 0))
    report = validate(root)
    assert messages(report, small) == ["label grid differs from T2w: size 8x8x5 vs 8x8x6"]
    assert messages(report, close) == []  # 0.005 voxel is within tolerance
    assert messages(validate(root, grid_tolerance=0.001), close) == [
        "label grid differs from T2w: origin off by 0.005 voxel (tolerance 0.001)"
    ]


def test_channel_outside_reference(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort()
    image = phantom()[0][:, ::2, ::2]
    path = root / "imagesTr" / "case_000_0001.nii.gz"
    write_image(path, image, (1.2, 1.2, 3.0), (3.6, 0.3, 0))  # shifted by 3/4 of T2w's width
    assert messages(validate(root), path) == [
        "ADC overlaps only 31 % of T2w in world space (bounding boxes; at least 50 % needed)"
    ]


def write_shifted_case(root: Path, write_image, phantom, shift_x_mm: float, ras_adc=False):
    """Case "a" of a 48 mm wide T2w (80 voxels of 0.6 mm) and an ADC of 2x its voxels over
    the same field of view, shifted ``shift_x_mm`` in x; ``ras_adc`` stores the ADC in RAS."""
    image, label = phantom(size_zyx=(6, 80, 80))
    write_image(root / "imagesTr" / "a_0000.nii.gz", image, T2_SPACING)
    write_image(root / "labelsTr" / "a.nii.gz", label, T2_SPACING)
    adc, origin, direction = image[:, ::2, ::2], [0.3 + shift_x_mm, 0.3, 0.0], LPS
    if ras_adc:  # voxel 0 at the other corner of the same field of view
        adc, origin = adc[:, ::-1, ::-1], [47.1 + shift_x_mm, 47.1, 0.0]
        direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    path = root / "imagesTr" / "a_0001.nii.gz"
    return write_image(path, np.ascontiguousarray(adc), (1.2, 1.2, 3.0), origin, direction)


def test_channel_shifted_against_reference_is_a_warning(nnunet_cohort, write_image, phantom):
    """An ADC 20 mm off the T2w still overlaps 58 % of it: no error, but a warning in mm."""
    root = nnunet_cohort(case_ids=("a",))
    adc = write_shifted_case(root, write_image, phantom, 20.0)
    report = validate(root)
    assert report.ok(), report.format()
    assert [(p.path, p.level) for p in report.problems] == [(str(adc), "warning")]
    assert messages(report, adc, "warning") == [
        "ADC is shifted 20.0 mm against T2w (20.0, 0.0, 0.0 mm along T2w's axes; more than a "
        "voxel of the coarser channel): centres of the fields of view differ, check that the "
        "channels are registered"
    ]


@pytest.mark.parametrize(
    ("shift_x_mm", "ras_adc"),
    [(0.06, False), (-0.06, False), (0.0, True), (0.06, True)],
    ids=["0.1 voxel", "-0.1 voxel", "RAS ADC", "RAS ADC 0.1 voxel"],
)
def test_channel_within_a_voxel_of_reference_is_fine(
    nnunet_cohort, write_image, phantom, shift_x_mm, ras_adc
):
    """A 0.1-voxel shift is rounding, and a channel stored in another orientation over the
    same field of view (its origin at the opposite corner) is not shifted at all."""
    root = nnunet_cohort(case_ids=("a",))
    write_shifted_case(root, write_image, phantom, shift_x_mm, ras_adc)
    report = validate(root)
    assert report.problems == [], report.format()


@pytest.mark.parametrize(("shift_x_mm", "warned"), [(2.5, False), (-2.9, False), (4.0, True)])
def test_channel_shift_is_measured_in_the_coarser_channels_voxels(
    nnunet_cohort, write_image, phantom, shift_x_mm, warned
):
    """The ADC's voxel is 1.2 x 1.2 x 3 mm: a shift up to 3 mm cannot show in it (the T2w's
    0.6 mm voxel does not set the limit), 4 mm can."""
    root = nnunet_cohort(case_ids=("a",))
    adc = write_shifted_case(root, write_image, phantom, shift_x_mm)
    report = validate(root)
    assert report.ok(), report.format()
    assert bool(messages(report, adc, "warning")) == warned, report.format()


def test_channel_outside_reference_is_an_error_not_also_a_warning(
    nnunet_cohort, write_image, phantom
):
    root = nnunet_cohort(case_ids=("a",))
    adc = write_shifted_case(root, write_image, phantom, 30.0)  # 38 % overlap
    report = validate(root)
    assert [(p.path, p.level) for p in report.problems] == [(str(adc), "error")]
    assert messages(report, adc)[0].startswith("ADC overlaps only 38 % of T2w")


def test_msd_files_outside_the_dataset_folder_are_never_read(msd_cohort):
    """Refused entries are errors about dataset.json; the garbage files they point to are not
    opened, so no error about reading them appears."""
    root = msd_cohort(case_ids=("prostate_00", "prostate_01", "prostate_02"))
    outside = root.parent / "outside.nii.gz"
    outside.write_bytes(b"not an image: reading it would be an error naming this file")
    absolute = root.parent / "elsewhere" / "label.nii.gz"
    absolute.parent.mkdir()
    absolute.write_bytes(b"garbage")
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["training"][0]["image"] = "../outside.nii.gz"
    dataset["training"][1]["image"] = str(absolute)
    (root / "dataset.json").write_text(json.dumps(dataset))
    report = validate(root)
    json_path = str(root / "dataset.json")
    assert [p.path for p in report.errors] == [json_path, json_path]
    assert "training[0] 'image' '../outside.nii.gz' leads outside" in report.errors[0].message
    assert f"training[1] 'image' '{absolute}' is an absolute path" in report.errors[1].message
    assert not any(str(outside) == p.path or str(absolute) == p.path for p in report.problems)
    assert report.n_cases == 1 and report.cases[0].case_id == "prostate_02"


def test_num_training_mismatch_fails_validation(nnunet_cohort):
    root = nnunet_cohort()
    assert validate(root).ok()
    dataset = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**dataset, "numTraining": 5}))
    report = validate(root)
    assert [(p.path, p.message) for p in report.errors] == [
        (str(root / "dataset.json"), "'numTraining' is 5 but imagesTr holds 2 training case(s)")
    ]


def test_label_values(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort(labels={"background": 0, "lesion": 1})
    label = phantom()[1].astype(np.float32)
    label[0, 0, :2] = (7, 0.5)
    path = write_image(root / "labelsTr" / "case_000.nii.gz", label, T2_SPACING)
    report = validate(root)
    assert messages(report, path) == [
        "non-integer label values (1: 0.5)",
        "label values not declared in dataset.json: 2, 7 (declared: background=0, lesion=1)",
    ]
    # the undeclared value 2 is in every case
    assert "not declared" in messages(report, root / "labelsTr" / "case_001.nii.gz")[0]


def test_bad_voxels(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort(case_ids=("a", "b", "c"))
    image = phantom()[0]
    image[0, 0, :3] = (np.nan, np.inf, -np.inf)
    nan = write_image(root / "imagesTr" / "a_0000.nii.gz", image, T2_SPACING)
    empty = write_image(root / "imagesTr" / "b_0000.nii.gz", np.zeros_like(image), T2_SPACING)
    constant = write_image(
        root / "imagesTr" / "c_0000.nii.gz", np.full_like(image, 7.5), T2_SPACING
    )
    report = validate(root)
    assert messages(report, nan) == ["3 NaN/inf voxels (ITK reads them as 0)"]
    assert np.isfinite(report.cases[0].intensity[0]["max"])
    assert messages(report, empty) == ["T2w: image is empty (all voxels 0)"]
    assert messages(report, constant) == ["T2w: image is constant (all voxels 7.5)"]


def test_warnings_only(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort(case_ids=("a", "b", "c"))
    image, label = phantom()
    empty = write_image(root / "labelsTr" / "a.nii.gz", np.zeros_like(label), T2_SPACING)
    write_image(root / "imagesTr" / "b_0000.nii.gz", image, (0.3, 0.3, 3.6))
    write_image(root / "labelsTr" / "b.nii.gz", label, (0.3, 0.3, 3.6))
    oblique = rotation_z(40)
    for name in ("c_0000", "c_0001"):
        write_image(root / "imagesTr" / f"{name}.nii.gz", image, T2_SPACING, direction=oblique)
    write_image(root / "labelsTr" / "c.nii.gz", label, T2_SPACING, direction=oblique)
    report = validate(root)
    assert report.ok(), report.format()
    assert messages(report, empty, "warning") == ["label is empty (no foreground voxels)"]
    assert messages(report, root / "imagesTr" / "b_0000.nii.gz", "warning") == [
        "extreme anisotropy: spacing 0.3x0.3x3.6 mm, ratio 12.0 (> 10)"
    ]
    assert messages(report, root / "imagesTr" / "c_0000.nii.gz", "warning") == [
        "axes 40.0 degrees oblique; orientation LPS is only the nearest"
    ]
    # b's T2w grid changed under its ADC: their centres are now 2.1 mm apart
    # b's T2w voxel size moves its centre 2.1 mm against the ADC's: under an ADC voxel
    assert messages(report, root / "imagesTr" / "b_0001.nii.gz", "warning") == []
    assert len(report.warnings) == 4  # c_0001 too; labels are not checked for geometry


def test_mildly_oblique_and_rounded_directions_are_fine(
    nnunet_cohort, write_image, write_nibabel, phantom
):
    root = nnunet_cohort()
    image, label = phantom()
    for name in ("case_000_0000", "case_000_0001"):
        write_image(
            root / "imagesTr" / f"{name}.nii.gz", image, T2_SPACING, direction=rotation_z(12)
        )
    write_image(root / "labelsTr" / "case_000.nii.gz", label, T2_SPACING, direction=rotation_z(12))
    affine = np.diag([-0.6, -0.6, 3.0, 1.0])
    affine[0, 1] = 1e-5  # not quite orthonormal, as rounded scanner affines are
    for name in ("case_001_0000", "case_001_0001"):
        write_nibabel(root / "imagesTr" / f"{name}.nii.gz", image.transpose(2, 1, 0), affine)
    write_nibabel(root / "labelsTr" / "case_001.nii.gz", label.transpose(2, 1, 0), affine)
    report = validate(root)
    assert report.problems == [], report.format()


def test_every_problem_at_once(nnunet_cohort, write_image, phantom):
    root = nnunet_cohort(case_ids=("a", "b", "c", "d"), channels=("T2w", "ADC", "HBV"))
    images, labels = root / "imagesTr", root / "labelsTr"
    (images / "a_0002.nii.gz").unlink()
    data = (images / "b_0001.nii.gz").read_bytes()
    (images / "b_0001.nii.gz").write_bytes(data[:40])
    (labels / "b.nii.gz").write_bytes(b"")
    write_image(images / "c_0000.nii.gz", np.zeros((6, 8, 8), np.float32), T2_SPACING)
    write_image(labels / "d.nii.gz", phantom()[1], T2_SPACING, (0.3, 0, 0))
    (labels / "e.nii.gz").write_bytes(b"")
    (images / "readme.md").write_text("hi")
    report = validate(root)
    assert not report.ok() and report.n_cases == 3
    assert [p.path for p in report.errors] == sorted(
        str(p)
        for p in (
            images / "a_0002.nii.gz",
            images / "b_0001.nii.gz",
            labels / "b.nii.gz",
            images / "c_0000.nii.gz",
            labels / "d.nii.gz",
            labels / "e.nii.gz",
            images / "readme.md",
        )
    )
    text = report.format()
    assert text.splitlines()[0] == f"{root} (nnunet layout): 3 cases, 7 error(s), 0 warning(s)"
    for p in report.errors:
        assert text.count(p.path) == 1 and f"  ERROR   {p.message}" in text


def test_report_json_round_trip(nnunet_cohort, tmp_path):
    root = nnunet_cohort()
    (root / "labelsTr" / "case_000.nii.gz").write_bytes(b"")
    report = validate(root)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report.to_dict()))
    again = ValidationReport.from_dict(json.loads(path.read_text()))
    assert again == report
    assert again.errors == report.errors and len(again.errors) == 1


def test_workers_give_the_same_report(nnunet_cohort, write_image):
    root = nnunet_cohort(case_ids=("a", "b", "c", "d"))
    write_image(root / "imagesTr" / "c_0000.nii.gz", np.ones((6, 8, 8), np.float32), T2_SPACING)
    serial = validate(root)
    parallel = validate(root, workers=2)
    assert parallel == serial and len(serial.errors) == 1
