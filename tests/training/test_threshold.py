"""The threshold-rule baseline: the rule as a module, its fit (which never sees a test
patient), its model folder through ``adseg evaluate`` and ``adseg predict``, and the removal
of small lesion components that is part of the model."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import assert_roles_disjoint, rewrite_arrays
from mlflow.tracking import MlflowClient

from adseg import tracking
from adseg.checkpoint import load_checkpoint
from adseg.config import schema
from adseg.evaluation.cases import evaluate_fold
from adseg.evaluation.detection import load_detection_inputs
from adseg.inference.modelfolder import read_fold
from adseg.inference.predict import PredictOptions, predict
from adseg.inference.sliding import ensemble_spec, remove_small_components
from adseg.io import read_json
from adseg.preprocessing.qc import read_tsv
from adseg.training.job import check_job
from adseg.training.networks import SEGMENTORS, build_segmentor
from adseg.training.schemes import SCHEMES
from adseg.training.segmentation import train_fold
from adseg.training.threshold import ThresholdRule, fit_threshold_rule, small_components

LABELS = {"background": 0, "lesion": 1}
FOLD = 0


def _write_cohort(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A minimal preprocessed folder: ``{case: (channels (C, z, y, x), label (z, y, x))}``."""
    n_channels = len(next(iter(cases.values()))[0])
    for case, (image, label) in cases.items():
        for c, channel in enumerate(image):
            path = root / "imagesTr" / f"{case}_{c:04d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(channel.astype(np.float32)), str(path))
        (root / "labelsTr").mkdir(exist_ok=True)
        sitk.WriteImage(
            sitk.GetImageFromArray(label.astype(np.uint8)),
            str(root / "labelsTr" / f"{case}.nii.gz"),
        )
    channels = {str(c): f"ch{c}" for c in range(n_channels)}
    (root / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": LABELS}))
    rewrite_arrays(root)
    return root


def _known_rule_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lesion where channel 0 > 1.0 and channel 1 < -0.5; channel 2 is noise."""
    image = np.random.default_rng(seed).normal(0.0, 1.0, (3, 8, 24, 24))
    label = (image[0] > 1.0) & (image[1] < -0.5)
    return image, label


def test_the_fit_recovers_known_directions_and_thresholds(tmp_path):
    cases = {f"c{i}": _known_rule_case(i) for i in range(4)}
    root = _write_cohort(tmp_path / "prep", cases)
    fit = fit_threshold_rule(root, ["c0", "c1", "c2"], ["c3"], LABELS, "lesion")
    rule = fit.rule
    assert rule.direction.tolist()[:2] == [1.0, -1.0]
    assert rule.active.tolist()[:2] == [True, True]
    np.testing.assert_allclose(rule.threshold.tolist()[:2], [1.0, -0.5], atol=0.02)
    # the noise channel is off, or on at a cut that passes (almost) every voxel
    noise = np.concatenate([image[2].ravel() for image, _ in cases.values()])
    passes = np.mean(rule.direction[2].item() * (noise - rule.threshold[2].item()) > 0)
    assert not rule.active[2] or passes > 0.99
    assert fit.train_dice > 0.98 and fit.val_dice > 0.95
    assert fit.min_component_voxels in (0, 4, 8, 16, 32, 64, 128)
    # deterministic: the same fit twice
    again = fit_threshold_rule(root, ["c0", "c1", "c2"], ["c3"], LABELS, "lesion")
    for key, value in rule.state_dict().items():
        assert torch.equal(value, again.rule.state_dict()[key]), key


def test_the_rule_module_is_pointwise_and_its_argmax_is_the_rule():
    rule = ThresholdRule(3, 3, 4).set_rule(
        [1, -1, 1], [1.0, -0.5, 9.0], [True, True, False], 2.0, 1
    )
    x = torch.randn(2, 3, 6, 7, 5, generator=torch.Generator().manual_seed(0))
    logits = rule(x)
    assert logits.shape == (2, 4, 6, 7, 5)
    expected = (x[:, 0] > 1.0) & (x[:, 1] < -0.5)
    assert torch.equal(logits.argmax(1) == 1, expected)
    probs = torch.softmax(logits, 1)
    margin = torch.minimum(x[:, 0] - 1.0, -(x[:, 1] + 0.5))
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(2.0 * margin), atol=1e-5, rtol=0)
    assert probs[:, 2:].max() < 1e-6  # zone classes are never predicted
    # a 2-D patch of the same voxels gives the same logits (pointwise)
    torch.testing.assert_close(rule(x[..., 2]), logits[..., 2])
    # the parameters are the state dict, and build_segmentor makes the same module
    net = build_segmentor("ThresholdRule", 2, 3, 4, [])
    net.load_state_dict(rule.state_dict())
    torch.testing.assert_close(net(x), logits)
    with pytest.raises(ValueError, match="at least one active"):
        ThresholdRule(3, 2, 2).set_rule([1, 1], [0, 0], [False, False], 1.0, 1)


def test_the_scheme_is_registered_but_its_network_is_not_a_user_choice():
    assert SCHEMES["threshold"].fitted == "rule"
    assert all(s.fitted == "gradient" for n, s in SCHEMES.items() if n != "threshold")
    assert "ThresholdRule" not in SEGMENTORS
    names = schema()["properties"]["train"]["properties"]["network"]["properties"]["name"]
    assert "ThresholdRule" not in names["enum"]


def test_network_settings_do_not_stop_the_rule(tiny_experiment):
    config = copy.deepcopy(tiny_experiment["config"])
    config["train"]["patch_size"] = [33, 33]  # odd: no multiple of the UNet's downsampling
    args = (FOLD, tiny_experiment["preprocessed"], read_json(tiny_experiment["splits"]), Path("x"))
    with pytest.raises(ValueError, match="multiples of"):
        check_job(config, "ce", *args)
    spec = check_job(config, "threshold", *args).spec
    assert spec["network"]["name"] == "ThresholdRule" and spec["discriminator"] is None


def _roles(tiny_experiment) -> dict:
    """Fold 0's model spec: its training, (inner) validation and test cases."""
    splits = read_json(tiny_experiment["splits"])
    args = (tiny_experiment["preprocessed"], splits, Path("unused"))
    return check_job(tiny_experiment["config"], "threshold", FOLD, *args).spec


def test_the_fit_never_reads_a_test_patient(tiny_experiment, tmp_path):
    prep = tiny_experiment["preprocessed"]
    fold = _roles(tiny_experiment)
    copied = Path(shutil.copytree(prep, tmp_path / "preprocessed"))
    for case in fold["test_cases"]:
        # the test labels made all lesion, the test images removed: reading one would fail
        path = copied / "labelsTr" / f"{case}.nii.gz"
        label = sitk.ReadImage(str(path))
        all_lesion = sitk.GetImageFromArray(np.ones(label.GetSize()[::-1], np.uint8))
        all_lesion.CopyInformation(label)
        sitk.WriteImage(all_lesion, str(path))
        for image in [*copied.glob(f"imagesTr/{case}_*.nii.gz"), *copied.glob(f"arrays/{case}_*")]:
            image.unlink()
    labels = read_json(prep / "dataset.json")["labels"]
    clean = fit_threshold_rule(prep, fold["train_cases"], fold["val_cases"], labels, "lesion")
    corrupted = fit_threshold_rule(copied, fold["train_cases"], fold["val_cases"], labels, "lesion")
    assert clean.summary(["a", "b", "c"]) | {"fit_seconds": 0} == corrupted.summary(
        ["a", "b", "c"]
    ) | {"fit_seconds": 0}
    for key, value in clean.rule.state_dict().items():
        assert torch.equal(value, corrupted.rule.state_dict()[key]), key
    # and the whole training job on that folder writes the same rule
    spec = train_fold(
        tiny_experiment["config"],
        "threshold",
        FOLD,
        copied,
        tiny_experiment["splits"],
        tmp_path / "m",
        show_progress=False,
    )
    assert spec["postprocess"]["min_component_voxels"] == clean.min_component_voxels
    assert spec["rule"]["channels"] == clean.summary(spec["channel_names"])["channels"]


def fit(tiny_experiment, out: Path, resume: str = "auto") -> dict:
    """The threshold scheme on fold FOLD of the tiny experiment, into ``out``."""
    return train_fold(
        tiny_experiment["config"],
        "threshold",
        FOLD,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        resume,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def rule_model(tiny_experiment, tmp_path_factory) -> Path:
    """The threshold scheme trained on fold 0 of the tiny experiment."""
    out = tmp_path_factory.mktemp("threshold_model") / "threshold" / f"fold_{FOLD}"
    fit(tiny_experiment, out)
    return out


def test_the_model_folder_describes_the_rule(tiny_experiment, rule_model):
    spec = read_json(rule_model / "model.json")
    dataset = read_json(tiny_experiment["preprocessed"] / "dataset.json")
    assert_roles_disjoint(spec, dataset)
    assert spec["scheme"] == "threshold" and spec["network"]["name"] == "ThresholdRule"
    assert spec["epochs_trained"] == 0
    assert spec["best_val_dice"] == spec["final_val_dice"] and 0 <= spec["best_val_dice"] <= 1
    assert spec["postprocess"]["label"] == "lesion"
    assert spec["postprocess"]["min_component_voxels"] in (0, 4, 8, 16, 32, 64, 128)
    names = [c["channel"] for c in spec["rule"]["channels"]]
    assert names == spec["channel_names"]
    rows = read_tsv(rule_model / "threshold_fit.tsv")
    assert [r["channel"] for r in rows] == names
    log = read_tsv(rule_model / "training_log.tsv")
    tried = [int(r["min_component_voxels"]) for r in log if r["step"] == "min size"]
    assert tried == [0, 4, 8, 16, 32, 64, 128]
    for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
        state = load_checkpoint(rule_model / name, required=("segmentor",))["segmentor"]
        assert set(state) == {"direction", "threshold", "active", "scale", "lesion"}
    net = read_fold(rule_model).segmentor()
    assert isinstance(net, ThresholdRule)
    for channel, threshold, active in zip(
        spec["rule"]["channels"], net.threshold.tolist(), net.active.tolist(), strict=True
    ):
        assert channel["active"] == active
        assert channel["threshold"] == (threshold if active else None)


def test_a_resumed_job_refits_the_same_rule(tiny_experiment, rule_model, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(rule_model, out)
    (out / "checkpoint_last.pt").write_bytes(b"left by an older run")
    for resume in ("auto", "yes"):
        spec = fit(tiny_experiment, out, resume)
        assert spec["rule"]["channels"] == read_json(rule_model / "model.json")["rule"]["channels"]
    assert not (out / "checkpoint_last.pt").exists()


def test_evaluate_tests_the_rule_on_the_held_out_patients(tiny_experiment, rule_model, tmp_path):
    detection = tmp_path / "detection"
    rows = evaluate_fold(
        rule_model, tiny_experiment["preprocessed"], show_progress=False, detection=detection
    )
    test_cases = _roles(tiny_experiment)["test_cases"]
    assert sorted(r["case_id"] for r in rows) == sorted(test_cases)
    assert all(r["scheme"] == "threshold" and math.isfinite(r["dice"]) for r in rows)
    maps = load_detection_inputs([detection])
    assert sorted(c[0] for c in maps) == sorted(test_cases)
    for _, _, prob, _ in maps:
        assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_predict_writes_a_mask_with_the_rule(tiny_experiment, rule_model, tmp_path):
    case = _roles(tiny_experiment)["test_cases"][0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in (tiny_experiment["raw"] / "imagesTr").glob(f"{case}_*.nii.gz"):
        shutil.copy(path, inputs / path.name)
    summary = predict(
        [inputs], tmp_path / "out", rule_model.parent, PredictOptions(show_progress=False)
    )
    mask = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
    reference = sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz"))
    assert mask.GetSize() == reference.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    assert case in summary.read_text()


def test_a_tracked_fit_is_a_finished_run_with_the_validation_dice(tiny_experiment, tmp_path):
    config = copy.deepcopy(tiny_experiment["config"])
    config["results_dir"], config["experiment"] = str(tmp_path / "results"), "tiny"
    config["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "results" / "tiny" / "threshold" / f"fold_{FOLD}"
    spec = train_fold(
        config,
        "threshold",
        FOLD,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        show_progress=False,
        tracker=tracking.FoldRun(config),
    )
    client = MlflowClient(config["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("tiny")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("adseg.role") == "fold"
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["val/best_dice"] == pytest.approx(spec["best_val_dice"])
    steps = sorted(
        m.step for m in client.get_metric_history(runs[0].info.run_id, "val/dice_pooled")
    )
    assert steps == [0, 4, 8, 16, 32, 64, 128]


def _probs(lesion: np.ndarray) -> torch.Tensor:
    """Probabilities ``(2, X, Y, Z)``: 0.8 lesion on ``lesion``, 0.1 elsewhere."""
    p = np.where(lesion, 0.8, 0.1).astype(np.float32)
    return torch.from_numpy(np.stack([1 - p, p]))


def test_small_lesion_components_are_moved_to_background():
    lesion = np.zeros((12, 12, 6), bool)
    lesion[1:3, 1:3, 1] = True  # 4 voxels
    lesion[6:10, 6:10, 2:4] = True  # 32 voxels
    probs = _probs(lesion)
    spec = {"labels": LABELS, "postprocess": {"min_component_voxels": 8, "label": "lesion"}}
    out = remove_small_components(probs, spec)
    small = np.zeros_like(lesion)
    small[1:3, 1:3, 1] = True
    np.testing.assert_array_equal(out.argmax(0).numpy() == 1, lesion & ~small)
    assert out[1][torch.from_numpy(small)].max() == 0.0  # the continuous map loses it too
    torch.testing.assert_close(out.sum(0), torch.ones(lesion.shape))
    keep = torch.from_numpy(~small)
    torch.testing.assert_close(out[:, keep], probs[:, keep])  # everything else untouched
    # no postprocess (every network): unchanged; a size of 4 keeps the 4-voxel component
    assert remove_small_components(probs, {"labels": LABELS}) is probs
    spec4 = {"labels": LABELS, "postprocess": {"min_component_voxels": 4, "label": "lesion"}}
    torch.testing.assert_close(remove_small_components(probs, spec4), probs)


def test_components_are_26_connected_and_folds_share_the_median_size():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours: one component of 2
    assert not small_components(mask, 2).any()
    assert small_components(mask, 3).sum() == 2
    specs = [
        {"labels": LABELS, "postprocess": {"min_component_voxels": n, "label": "lesion"}}
        for n in (4, 16, 64)
    ]
    assert ensemble_spec(specs)["postprocess"]["min_component_voxels"] == 16
    assert ensemble_spec([{"labels": LABELS}]) == {"labels": LABELS}
