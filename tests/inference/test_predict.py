"""`adseg predict`: new scans in, masks out in each scan's own geometry."""

from __future__ import annotations

import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adseg.inference.predict import (
    PredictError,
    PredictOptions,
    collect_inputs,
    lesion_stats,
    predict,
)
from adseg.training.segmentation import train_fold

CHANNELS = ["T2w", "ADC", "DWI"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def model_dir(tiny_experiment, tmp_path_factory):
    """A hybrid model with two folds (one epoch each) trained on the tiny experiment."""
    root = tmp_path_factory.mktemp("predict_model") / "hybrid"
    config = copy.deepcopy(tiny_experiment["config"])
    config["train"]["epochs"] = 1
    for fold in (0, 1):
        train_fold(
            config,
            "hybrid",
            fold,
            tiny_experiment["preprocessed"],
            tiny_experiment["splits"],
            root / f"fold_{fold}",
            show_progress=False,
        )
    return root


def _affine(kind: str) -> np.ndarray:
    spacing = np.diag([0.7, 0.6, 3.0])
    if kind == "ras":
        rot = np.eye(3)
    elif kind == "lps":
        rot = np.diag([-1.0, -1.0, 1.0])
    else:  # oblique: 12 degrees about z, then LPS
        a = np.deg2rad(12)
        rot = np.diag([-1.0, -1.0, 1.0]) @ np.array(
            [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
        )
    affine = np.eye(4)
    affine[:3, :3] = rot @ spacing
    affine[:3, 3] = [-20.0, 15.0, -30.0]
    return affine


def _write_case(folder: Path, case: str, kind: str, qform_code=1, sform_code=2) -> list[Path]:
    rng = np.random.default_rng(0)
    shape = (48, 56, 10)
    paths = []
    for k in range(3):
        data = rng.normal(300 + 50 * k, 30, shape).astype(np.float32)
        image = nib.Nifti1Image(data, _affine(kind))
        image.set_qform(_affine(kind), code=qform_code)
        image.set_sform(_affine(kind), code=sform_code)
        path = folder / f"{case}_{k:04d}.nii.gz"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(path))
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_mask_has_the_exact_geometry_of_its_scan(model_dir, tmp_path, kind):
    inputs = _write_case(tmp_path / "in", "scan", kind)
    out = tmp_path / "out"
    summary = predict([tmp_path / "in"], out, model_dir, PredictOptions(show_progress=False))
    mask = nib.load(str(out / "scan.nii.gz"))
    ref = nib.load(str(inputs[0]))
    assert mask.shape == ref.shape
    np.testing.assert_array_equal(mask.affine, ref.affine)
    assert int(mask.header["qform_code"]) == 1 and int(mask.header["sform_code"]) == 2
    np.testing.assert_array_equal(mask.header.get_qform(), ref.header.get_qform())
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
    rows = _rows(summary)
    assert rows[0]["case_id"] == "scan"
    assert {"lesion_ml", "lesion_count", "seconds", "d_score"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["d_score"]) <= 1.0


def test_inputs_from_a_folder_from_files_and_from_a_4d_file(tmp_path):
    files = _write_case(tmp_path / "in", "a", "ras")
    _write_case(tmp_path / "in", "b", "lps")
    cases = collect_inputs([tmp_path / "in"], CHANNELS)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [c.path for c in cases[0].channels] == files
    one = collect_inputs(files, CHANNELS)
    assert one[0].case_id == "a" and [c.index for c in one[0].channels] == [None] * 3
    stacked = np.stack([np.asanyarray(nib.load(str(f)).dataobj) for f in files], axis=-1)
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(stacked, _affine("ras")), str(four_d))
    cases = collect_inputs([four_d], CHANNELS)
    assert cases[0].case_id == "four_d" and [c.index for c in cases[0].channels] == [0, 1, 2]


def test_input_errors_name_the_file(tmp_path):
    files = _write_case(tmp_path / "in", "a", "ras")
    files[1].unlink()
    with pytest.raises(PredictError, match=r"case 'a' lacks channel 0001 \(ADC\)"):
        collect_inputs([tmp_path / "in"], CHANNELS)
    with pytest.raises(PredictError, match="the model takes 3 channel"):
        collect_inputs([files[0], files[2]], CHANNELS)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PredictError, match="notes.txt: not a NIfTI file"):
        collect_inputs([text], CHANNELS)
    broken = tmp_path / "broken_0000.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(PredictError, match="broken_0000.nii.gz: cannot read as NIfTI"):
        collect_inputs([broken, files[0], files[2]], CHANNELS)


def test_nan_voxels_and_bad_model_folders_stop_before_any_work(model_dir, tmp_path):
    files = _write_case(tmp_path / "in", "a", "ras")
    data = np.asanyarray(nib.load(str(files[2])).dataobj).copy()
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, _affine("ras")), str(files[2]))
    out = tmp_path / "out"
    with pytest.raises(PredictError, match="a_0002.nii.gz: 1 NaN/inf voxels"):
        predict(files, out, model_dir, PredictOptions(show_progress=False))
    assert not out.exists()
    from adseg.inference.modelfolder import ModelError

    with pytest.raises(ModelError, match="no fold\\(s\\) \\[3\\]"):
        predict(files, out, model_dir, PredictOptions(folds=[3], show_progress=False))


def test_the_start_up_line_gives_the_channel_order_before_any_input_error(
    model_dir, tmp_path, caplog
):
    files = _write_case(tmp_path / "in", "a", "ras")
    files[1].unlink()
    with caplog.at_level("INFO", logger="adseg"), pytest.raises(PredictError, match="0001"):
        predict([tmp_path / "in"], tmp_path / "out", model_dir, PredictOptions())
    said = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert said[0] == (
        f"{model_dir} (fold(s) 0, 1) expects 3 channel(s), in this order: 0000 = T2w, "
        "0001 = ADC, 0002 = DWI (model.json channel_names); labels: 0 = background, 1 = lesion"
    )


def test_a_model_path_that_is_no_model_folder_says_what_it_is(tmp_path):
    from adseg.inference.modelfolder import ModelError, read_model

    with pytest.raises(
        ModelError, match=f"^{re.escape(str(tmp_path / 'nowhere'))}: no such model folder$"
    ):
        read_model(tmp_path / "nowhere")
    with pytest.raises(
        ModelError, match=f"^{re.escape(str(tmp_path))}: no model.json and no fold_\\* folders$"
    ):
        read_model(tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="model.json: a file; give the model folder"):
        read_model(tmp_path / "model.json")


def test_finished_cases_are_skipped_unless_overwrite(model_dir, tmp_path):
    _write_case(tmp_path / "in", "a", "ras")
    _write_case(tmp_path / "in", "b", "ras")
    out = tmp_path / "out"
    opts = PredictOptions(folds=[0], show_progress=False)
    predict([tmp_path / "in"], out, model_dir, opts)
    first = (out / "a.nii.gz").stat().st_mtime_ns
    (out / "b.nii.gz").unlink()  # as if interrupted before b was written
    summary = predict([tmp_path / "in"], out, model_dir, opts)
    assert (out / "a.nii.gz").stat().st_mtime_ns == first
    assert (out / "b.nii.gz").is_file()
    assert [r["case_id"] for r in _rows(summary)] == ["a", "b"]
    predict(
        [tmp_path / "in"],
        out,
        model_dir,
        PredictOptions(folds=[0], overwrite=True, show_progress=False),
    )
    assert (out / "a.nii.gz").stat().st_mtime_ns != first
    # no temporary files left behind; only the guard's marker of adseg's folder
    assert [p.name for p in out.glob(".*")] == [".adseg"]


def _ball_image(affine: np.ndarray, shape, centre_world, radius_mm, rng) -> tuple:
    """A noisy volume with a bright ball at a world position, and the ball's mask."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    ball = np.linalg.norm(world - centre_world, axis=-1) <= radius_mm
    image = rng.normal(100, 5, shape) + 60 * ball
    return image.astype(np.float32), ball.astype(np.uint8)


@pytest.fixture(scope="module")
def ball_model(tmp_path_factory):
    """A ce model trained to find bright balls (an easy task learnt in seconds)."""
    from adseg.config import load_config
    from adseg.data.splits import case_meta_from_dataset, make_splits
    from adseg.io import write_json
    from adseg.preprocessing.cohort import prepare_cohort

    root = tmp_path_factory.mktemp("balls")
    raw, rng = root / "raw", np.random.default_rng(1)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    for i in range(8):
        centre = rng.uniform([10, 10, 6], [22, 22, 15])
        image, ball = _ball_image(affine, (32, 32, 8), centre, rng.uniform(3, 6), rng)
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), str(raw / "imagesTr" / f"b{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(ball, affine), str(raw / "labelsTr" / f"b{i}.nii.gz"))
    (raw / "dataset.json").write_text(
        '{"channel_names": {"0": "T2w"}, "labels": {"background": 0, "lesion": 1}, '
        '"numTraining": 8, "file_ending": ".nii.gz"}'
    )
    config = load_config(
        None,
        {
            "preprocess": {"target_spacing": [1.0, 1.0, 3.0]},
            "train": {
                "network": {"features": [8, 16]},
                "patch_size": [32, 32],
                "batch_size": 8,
                "samples_per_case": 2,
                "epochs": 25,
                "lr": 0.01,
            },
        },
    )
    prepare_cohort(raw, config, root / "pre", workers=1, show_progress=False)
    dataset = json.loads((root / "pre" / "dataset.json").read_text())
    write_json(root / "splits.json", make_splits(case_meta_from_dataset(dataset), 2, 0))
    out = root / "model" / "ce"
    for fold in (0, 1):
        train_fold(
            config,
            "ce",
            fold,
            root / "pre",
            root / "splits.json",
            out / f"fold_{fold}",
            show_progress=False,
        )
    return out


@pytest.mark.parametrize("kind", ["lps", "oblique"])
def test_a_lesion_at_a_known_world_position_is_found_there(ball_model, tmp_path, kind):
    affine = _affine(kind)
    centre = affine[:3, :3] @ np.array([24.0, 28.0, 5.0]) + affine[:3, 3]
    image, truth = _ball_image(affine, (48, 56, 10), centre, 5.0, np.random.default_rng(5))
    scan = tmp_path / "scan_0000.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(scan))
    predict([scan], tmp_path / "out", ball_model, PredictOptions(show_progress=False))
    mask = nib.load(str(tmp_path / "out" / "scan.nii.gz"))
    found = np.asanyarray(mask.dataobj) == 1
    assert found.sum() > 0
    dice = 2 * np.sum(found & (truth == 1)) / (found.sum() + truth.sum())
    assert dice > 0.6
    ijk = np.argwhere(found).mean(axis=0)
    found_world = mask.affine[:3, :3] @ ijk + mask.affine[:3, 3]
    assert np.linalg.norm(found_world - centre) < 1.5  # mm


def test_ensemble_tta_and_probabilities(ball_model, tmp_path):
    affine = _affine("lps")
    centre = affine[:3, :3] @ np.array([20.0, 20.0, 4.0]) + affine[:3, 3]
    image, _ = _ball_image(affine, (40, 40, 8), centre, 5.0, np.random.default_rng(6))
    scan = tmp_path / "in" / "s_0000.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(scan))
    out = tmp_path / "out"
    opts = PredictOptions(tta=True, save_probabilities=True, show_progress=False)
    predict([scan.parent], out, ball_model, opts)
    probs = nib.load(str(out / "s_probabilities.nii.gz"))
    assert probs.shape == (40, 40, 8, 2) and probs.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asanyarray(probs.dataobj).sum(axis=-1), 1.0, atol=1e-4)
    mask = np.asanyarray(nib.load(str(out / "s.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask, np.asanyarray(probs.dataobj).argmax(-1))
    # one fold alone gives a (slightly) different map than the two-fold ensemble
    predict(
        [scan.parent],
        tmp_path / "one",
        ball_model,
        PredictOptions(folds=[0], save_probabilities=True, show_progress=False),
    )
    single = np.asanyarray(nib.load(str(tmp_path / "one" / "s_probabilities.nii.gz")).dataobj)
    assert not np.allclose(single, np.asanyarray(probs.dataobj))
    rows = _rows(out / "predictions.csv")
    assert "d_score" not in rows[0]  # ce models have no discriminator
    assert float(rows[0]["lesion_ml"]) == pytest.approx(4 / 3 * np.pi * 125 / 1000, rel=0.5)


def _cli(inputs: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["-i", str(inputs), "-o", str(out), "-m", str(model), *extra]
    return subprocess.run(
        [sys.executable, "-m", "adseg", "predict", *args], capture_output=True, text=True
    )


def test_predict_cli_as_a_user_calls_it(model_dir, tmp_path):
    _write_case(tmp_path / "in", "case1", "oblique")
    out = tmp_path / "out"
    run = _cli(tmp_path / "in", out, model_dir, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert (out / "case1.nii.gz").is_file()
    row = _rows(out / "predictions.csv")[0]
    assert row["d_flag"] in ("", "unlike-expert") and float(row["d_threshold"]) > 0
    bad = _cli(tmp_path / "in", out, tmp_path / "nowhere")
    assert bad.returncode == 1 and "adseg predict: error:" in bad.stderr
    assert "Traceback" not in bad.stderr
    # a path under a regular file can never be written, whoever runs the test
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    denied = _cli(tmp_path / "in", blocker / "out", model_dir)
    assert denied.returncode == 1
    assert f"{blocker / 'out'}: output folder is not writable" in denied.stderr


def test_incomplete_or_foreign_model_folders_are_refused(model_dir, tmp_path):
    import shutil

    from adseg.inference.modelfolder import ModelError

    files = _write_case(tmp_path / "in", "a", "ras")
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    spec = json.loads((broken / "fold_0" / "model.json").read_text())
    spec["format_version"] = 99
    (broken / "fold_0" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="version 99; this adseg reads 'adseg-model' version 1"):
        predict(files, tmp_path / "out", broken, PredictOptions(show_progress=False))
    (broken / "fold_1" / "plans.json").unlink()
    with pytest.raises(ModelError, match="fold_1: not a complete model folder; missing plans"):
        predict(files, tmp_path / "out", broken, PredictOptions(folds=[1], show_progress=False))
    assert not (tmp_path / "out").exists()


def test_a_4d_scan_gets_a_3d_mask_with_its_geometry(model_dir, tmp_path):
    files = _write_case(tmp_path / "in", "a", "oblique")
    stacked = np.stack([np.asanyarray(nib.load(str(f)).dataobj) for f in files], axis=-1)
    four_d = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(stacked, _affine("oblique")), str(four_d))
    predict([four_d], tmp_path / "out", model_dir, PredictOptions(show_progress=False))
    mask = nib.load(str(tmp_path / "out" / "multi.nii.gz"))
    assert mask.shape == stacked.shape[:3]
    np.testing.assert_array_equal(mask.affine, nib.load(str(four_d)).affine)


def test_without_a_stored_threshold_no_case_is_flagged(model_dir, tmp_path):
    import shutil

    files = _write_case(tmp_path / "in", "a", "ras")
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    for spec_file in model.glob("fold_*/model.json"):
        spec = json.loads(spec_file.read_text())
        del spec["quality_threshold"]
        spec_file.write_text(json.dumps(spec))
    summary = predict(files, tmp_path / "out", model, PredictOptions(show_progress=False))
    row = _rows(summary)[0]
    assert 0 < float(row["d_score"]) < 1 and "d_flag" not in row
    flagged = predict(
        files,
        tmp_path / "out2",
        model,
        PredictOptions(quality_threshold=1.0, show_progress=False),
    )
    assert _rows(flagged)[0]["d_flag"] == "unlike-expert"


def test_lesion_stats_count_26_connected_components_and_millilitres():
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[0, 0, 0] = 1  # a corner voxel
    labels[1, 1, 1] = 1  # touches it by a vertex: the same component
    labels[5:7, 5:8, 8:10] = 1  # a block at the far faces
    labels[3, 7, 2] = 2  # another class
    names = {0: "background", 1: "lesion", 2: "gland"}
    stats = lesion_stats(labels, (0.5, 0.5, 4.0), names)
    assert stats == {
        "lesion_count": 2,
        "lesion_ml": 0.014,
        "lesion_mean_entropy": "",
        "gland_count": 1,
        "gland_ml": 0.001,
        "gland_mean_entropy": "",
        "mean_entropy": "",
    }
    empty = lesion_stats(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), names)
    assert empty["lesion_count"] == 0 and empty["lesion_ml"] == 0.0
    # with an entropy map: each component's mean, in (z, y, x) order of their first voxel
    entropy = np.zeros(labels.shape, np.float32)
    entropy[0, 0, 0], entropy[1, 1, 1] = 0.2, 0.4
    entropy[5:7, 5:8, 8:10] = 0.9
    entropy[3, 7, 2] = 0.5
    stats = lesion_stats(labels, (0.5, 0.5, 4.0), names, entropy)
    assert stats["lesion_mean_entropy"] == "0.3000; 0.9000"
    assert stats["gland_mean_entropy"] == "0.5000"
    assert stats["mean_entropy"] == pytest.approx((0.2 + 0.4 + 12 * 0.9 + 0.5) / 15, abs=1e-4)
    empty = lesion_stats(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), names, np.ones((4, 4, 4)))
    assert empty["lesion_mean_entropy"] == "" and empty["mean_entropy"] == ""
