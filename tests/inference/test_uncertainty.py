"""`adseg predict --uncertainty`: entropy and fold-disagreement maps in each scan's geometry."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from adseg.checkpoint import load_checkpoint, save_checkpoint
from adseg.inference.predict import PredictError, PredictOptions, predict
from adseg.inference.sliding import make_inferer, predict_probabilities
from adseg.inference.uncertainty import (
    fold_disagreement,
    normalised_entropy,
    probabilities_and_votes,
)
from adseg.training.segmentation import train_fold
from adseg.training.threshold import ThresholdRule

MAPS = ("entropy", "disagreement")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _affine(kind: str, spacing=(0.7, 0.6, 3.0)) -> np.ndarray:
    rot = np.diag([-1.0, -1.0, 1.0])  # LPS
    if kind == "oblique":  # 12 degrees about z, then LPS
        a = np.deg2rad(12)
        rot = rot @ np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    elif kind == "ras":
        rot = np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = [-20.0, 15.0, -30.0]
    return affine


def _write_case(folder: Path, case: str, affine: np.ndarray, shape=(40, 44, 8), seed=0):
    """A case's three channels of noise, with qform code 1 and sform code 2."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(3):
        image = nib.Nifti1Image(rng.normal(300 + 50 * k, 30, shape).astype(np.float32), affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=2)
        paths.append(folder / f"{case}_{k:04d}.nii.gz")
        nib.save(image, str(paths[-1]))
    return paths


def _train(tiny_experiment, scheme: str, folds, root: Path) -> Path:
    config = copy.deepcopy(tiny_experiment["config"])
    config["train"]["epochs"] = 1
    for fold in folds:
        train_fold(
            config,
            scheme,
            fold,
            tiny_experiment["preprocessed"],
            tiny_experiment["splits"],
            root / f"fold_{fold}",
            show_progress=False,
        )
    return root


@pytest.fixture(scope="module")
def ce_model(tiny_experiment, tmp_path_factory) -> Path:
    """A ce network of two folds, one epoch each."""
    return _train(tiny_experiment, "ce", (0, 1), tmp_path_factory.mktemp("unc_ce") / "ce")


@pytest.fixture(scope="module")
def rule_model(tiny_experiment, tmp_path_factory) -> Path:
    """The threshold scheme fitted on fold 0 (a one-fold model folder)."""
    root = tmp_path_factory.mktemp("unc_rule") / "threshold"
    return _train(tiny_experiment, "threshold", (0,), root)


def _hard_rules(fitted: Path, out: Path, thresholds: list[float]) -> Path:
    """Folds that are copies of the fitted rule with a rule of our own: lesion where the
    z-scored T2w exceeds the fold's threshold, with hard (0/1) probabilities, no least size."""
    for k, threshold in enumerate(thresholds):
        fold = out / f"fold_{k}"
        shutil.copytree(fitted / "fold_0", fold)
        rule = ThresholdRule(3, 3, 2).set_rule([1, 1, 1], [threshold, 0, 0], [1, 0, 0], 1e9, 1)
        for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
            state = load_checkpoint(fold / name)
            state["segmentor"] = rule.state_dict()
            save_checkpoint(state, fold / name)
        spec = json.loads((fold / "model.json").read_text())
        spec["fold"], spec["postprocess"] = k, {"min_component_voxels": 0, "label": "lesion"}
        (fold / "model.json").write_text(json.dumps(spec))
    return out


def _opts(**kw) -> PredictOptions:
    return PredictOptions(show_progress=False, device="cpu", **kw)


def test_normalised_entropy_is_the_analytic_value():
    probs = np.array(
        [
            [1 / 3, 1.0, 0.5, 0.25, 0.0],
            [1 / 3, 0.0, 0.5, 0.75, 0.0],
            [1 / 3, 0.0, 0.0, 0.0, 1.0],
        ],
        np.float32,
    )
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = [1.0, 0.0, math.log(2) / math.log(3), h / math.log(3), 0.0]
    got = normalised_entropy(probs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    binary = normalised_entropy(np.array([[0.5, 0.25], [0.5, 0.75]]))
    np.testing.assert_allclose(binary, [1.0, h / math.log(2)], atol=1e-6)


def test_fold_disagreement_is_the_fraction_of_folds_against_the_ensemble():
    # 4 folds, 3 classes, 4 voxels: the votes per class
    votes = torch.tensor([[4, 2, 1, 0], [0, 2, 3, 2], [0, 0, 0, 2]], dtype=torch.uint8)
    labels = torch.tensor([0, 1, 1, 0])
    got = fold_disagreement(votes[..., None, None], labels[..., None, None])[:, 0, 0]
    np.testing.assert_allclose(got.numpy(), [0.0, 0.5, 0.25, 1.0])


def test_votes_and_the_mean_agree_with_predict_probabilities():
    """The mean is bit for bit predict's (the mask does not depend on --uncertainty); each
    fold's vote is its own argmax."""
    image = torch.randn(3, 12, 10, 4)
    rules = [
        ThresholdRule(3, 3, 2).set_rule([1, 1, 1], [t, 0, 0], [1, 0, 0], 4.0, 1)
        for t in (0.0, 0.5, 0.2)
    ]
    inferer = make_inferer(3, (8, 8, 4), 2)
    specs = [{"labels": {"background": 0, "lesion": 1}}] * 3
    for tta in (False, True):
        mean, votes = probabilities_and_votes(rules, specs, image, inferer, 3, 2, tta)
        torch.testing.assert_close(
            mean, predict_probabilities(rules, image, inferer, 3, 2, tta), rtol=0, atol=0
        )
        x = image[0]
        expected = (x > 0.0).int() + (x > 0.5).int() + (x > 0.2).int()
        assert votes.dtype == torch.uint8 and votes.shape == (2, 12, 10, 4)
        torch.testing.assert_close(votes[1].int(), expected)
        torch.testing.assert_close(votes.sum(0).int(), torch.full_like(expected, 3))


@pytest.mark.parametrize("kind", ["lps", "oblique"])
def test_maps_have_the_exact_geometry_of_their_scan(ce_model, tmp_path, kind):
    inputs = _write_case(tmp_path / "in", "scan", _affine(kind))
    out = tmp_path / "out"
    summary = predict([tmp_path / "in"], out, ce_model, _opts(uncertainty=True, tta=True))
    ref = nib.load(str(inputs[0]))
    mask = nib.load(str(out / "scan.nii.gz"))
    for name in MAPS:
        image = nib.load(str(out / f"scan_{name}.nii.gz"))
        assert image.shape == ref.shape == mask.shape
        np.testing.assert_array_equal(image.affine, ref.affine)
        np.testing.assert_array_equal(image.header.get_qform(), ref.header.get_qform())
        np.testing.assert_array_equal(image.header.get_sform(), ref.header.get_sform())
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 2
        assert image.get_data_dtype() == np.float32
        values = _data(out / f"scan_{name}.nii.gz")
        assert values.min() >= 0.0 and values.max() <= 1.0
    assert _data(out / "scan_entropy.nii.gz").max() > 0  # an untrained net is never sure
    # the mask is the one predict makes without --uncertainty
    predict([tmp_path / "in"], tmp_path / "plain", ce_model, _opts(tta=True))
    np.testing.assert_array_equal(_data(out / "scan.nii.gz"), _data(tmp_path / "plain/scan.nii.gz"))
    row = _rows(summary)[0]
    assert row["mean_entropy"] != "" or row["lesion_count"] == "0"


def test_one_fold_and_identical_folds_never_disagree(rule_model, tmp_path):
    _write_case(tmp_path / "in", "s", _affine("oblique"))
    predict([tmp_path / "in"], tmp_path / "one", rule_model, _opts(uncertainty=True, tta=True))
    assert not _data(tmp_path / "one" / "s_disagreement.nii.gz").any()
    entropy = _data(tmp_path / "one" / "s_entropy.nii.gz")
    assert np.isfinite(entropy).all() and entropy.min() >= 0 and entropy.max() <= 1
    same = _hard_rules(rule_model, tmp_path / "same", [0.3, 0.3])
    predict([tmp_path / "in"], tmp_path / "two", same, _opts(uncertainty=True))
    assert not _data(tmp_path / "two" / "s_disagreement.nii.gz").any()
    # on the model's own grid (RAS, 2 x 2 x 3 mm) nothing is blended: hard maps that every
    # fold shares are certain everywhere
    _write_case(tmp_path / "grid", "g", _affine("ras", (2.0, 2.0, 3.0)))
    predict([tmp_path / "grid"], tmp_path / "three", same, _opts(uncertainty=True, tta=True))
    mask = _data(tmp_path / "three" / "g.nii.gz")
    assert 0 < mask.mean() < 1
    assert not _data(tmp_path / "three" / "g_disagreement.nii.gz").any()
    np.testing.assert_allclose(_data(tmp_path / "three" / "g_entropy.nii.gz"), 0.0, atol=1e-5)


def test_folds_that_disagree_and_the_entropy_of_their_mean(rule_model, tmp_path):
    # the scan on the model's own grid (RAS, 2 x 2 x 3 mm), so nothing is interpolated
    _write_case(tmp_path / "in", "s", _affine("ras", (2.0, 2.0, 3.0)))
    model = _hard_rules(rule_model, tmp_path / "model", [0.0, 0.5, 0.5])
    summary = predict([tmp_path / "in"], tmp_path / "out", model, _opts(uncertainty=True))
    disagreement = _data(tmp_path / "out" / "s_disagreement.nii.gz")
    entropy = _data(tmp_path / "out" / "s_entropy.nii.gz")
    # where the z-scored T2w lies in (0, 0.5), fold 0 says lesion, folds 1 and 2 not: the
    # ensemble's lesion probability is 1/3, so background, and one fold of three disagrees
    between = np.isclose(disagreement, 1 / 3, atol=1e-4)
    assert 0.05 < between.mean() < 0.5
    assert np.all(between | (np.abs(disagreement) < 1e-4))
    third = -(math.log(1 / 3) / 3 + 2 / 3 * math.log(2 / 3)) / math.log(2)
    np.testing.assert_allclose(entropy, np.where(between, third, 0.0), atol=1e-4)
    # the lesion (z-scored T2w > 0.5, all folds) is certain: entropy 0
    row = _rows(summary)[0]
    assert float(row["mean_entropy"]) == pytest.approx(0.0, abs=1e-4)
    assert len(row["lesion_mean_entropy"].split("; ")) == int(row["lesion_count"]) > 0


def test_each_lesion_has_its_mean_entropy_in_predictions_csv(ce_model, tmp_path):
    _write_case(tmp_path / "in", "s", _affine("oblique"))
    out = tmp_path / "out"
    summary = predict([tmp_path / "in"], out, ce_model, _opts(uncertainty=True, folds=[0]))
    row = _rows(summary)[0]
    mask, entropy = _data(out / "s.nii.gz"), _data(out / "s_entropy.nii.gz")
    components, count = ndimage.label(mask == 1, ndimage.generate_binary_structure(3, 3))
    assert int(row["lesion_count"]) == count
    if not count:
        pytest.skip("the one-epoch net found no lesion")
    # nibabel's (x, y, z) arrays: the CSV orders lesions by first voxel in (z, y, x) order
    order = np.unique(components.transpose(2, 1, 0), return_index=True)[1]
    first = components.transpose(2, 1, 0).ravel()[np.sort(order)]
    first = [c for c in first if c]
    means = ndimage.mean(entropy, components, first)
    assert [float(v) for v in row["lesion_mean_entropy"].split("; ")] == pytest.approx(
        list(means), abs=1e-4
    )
    assert float(row["mean_entropy"]) == pytest.approx(entropy[mask == 1].mean(), abs=1e-4)


def test_without_uncertainty_nothing_extra_is_written(rule_model, tmp_path):
    _write_case(tmp_path / "in", "s", _affine("lps"))
    out = tmp_path / "out"
    summary = predict([tmp_path / "in"], out, rule_model, _opts())
    assert sorted(p.name for p in out.iterdir()) == [".adseg", "predictions.csv", "s.nii.gz"]
    row = _rows(summary)[0]
    assert row["lesion_mean_entropy"] == "" and row["mean_entropy"] == ""


def test_a_rerun_with_uncertainty_adds_the_maps_to_the_same_masks(rule_model, tmp_path):
    _write_case(tmp_path / "in", "a", _affine("lps"))
    _write_case(tmp_path / "in", "b", _affine("oblique"), seed=1)
    out = tmp_path / "out"
    predict([tmp_path / "in"], out, rule_model, _opts())
    masks = {c: _data(out / f"{c}.nii.gz") for c in "ab"}
    (out / "b.nii.gz").unlink()  # as if killed before b was written
    summary = predict([tmp_path / "in"], out, rule_model, _opts(uncertainty=True))
    for case in "ab":
        assert all((out / f"{case}_{name}.nii.gz").is_file() for name in MAPS)
        np.testing.assert_array_equal(_data(out / f"{case}.nii.gz"), masks[case])
    assert all(r["mean_entropy"] != "" or r["lesion_count"] == "0" for r in _rows(summary))
    # done with its maps: a rerun skips it, with or without --uncertainty
    stamp = (out / "a_entropy.nii.gz").stat().st_mtime_ns
    for wanted in (True, False):
        predict([tmp_path / "in"], out, rule_model, _opts(uncertainty=wanted))
        assert (out / "a_entropy.nii.gz").stat().st_mtime_ns == stamp
    # maps missing for a case made from another model: refused, as for its mask
    other = _hard_rules(rule_model, tmp_path / "other", [0.0])
    (out / "a_disagreement.nii.gz").unlink()
    with pytest.raises(PredictError, match="already predicted differently"):
        predict([tmp_path / "in"], out, other, _opts(uncertainty=True))
    # redone without --uncertainty: the old maps, of another mask, go
    predict([tmp_path / "in"], out, other, _opts(overwrite=True))
    assert not list(out.glob("*_entropy.nii.gz")) and not list(out.glob("*_disagreement.*"))
    assert all(r["mean_entropy"] == "" for r in _rows(out / "predictions.csv"))


def test_the_cli_flag(rule_model, tmp_path):
    _write_case(tmp_path / "in", "c", _affine("oblique"))
    args = ["-i", tmp_path / "in", "-o", tmp_path / "out", "-m", rule_model, "--uncertainty"]
    cmd = [sys.executable, "-m", "adseg", "predict", "--no-progress", "--device", "cpu"]
    run = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "c_entropy.nii.gz").is_file()
    assert (tmp_path / "out" / "c_disagreement.nii.gz").is_file()
    helped = subprocess.run([*cmd[:4], "--help"], capture_output=True, text=True, timeout=300)
    assert "<case>_entropy.nii.gz" in helped.stdout and "--uncertainty" in helped.stdout
