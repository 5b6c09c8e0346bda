"""Training: the schemes' steps, checks before training, resume, divergence and collapse."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from conftest import rewrite_arrays

from adseg.config import deep_merge
from adseg.io import read_json
from adseg.training.engine import TrainingError, pick_device
from adseg.training.job import check_job
from adseg.training.segmentation import fingerprint, train_fold
from adseg.training.segmentor import SegmentorTrainer as Trainer

ROOT = Path(__file__).resolve().parents[2]


def _config(tiny_experiment, **sections) -> dict:
    return deep_merge(copy.deepcopy(tiny_experiment["config"]), sections)


def _job(tiny_experiment, scheme="ce", fold=0, out=None, **sections):
    return check_job(
        _config(tiny_experiment, **sections),
        scheme,
        fold,
        tiny_experiment["preprocessed"],
        read_json(tiny_experiment["splits"]),
        out or tiny_experiment["root"] / "unused",
    )


def _batch(job, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(4, job.spec["network"]["in_channels"], 32, 32, generator=g)
    label = (torch.rand(4, 1, 32, 32, generator=g) > 0.8).float()
    return image, label


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_ce_step_trains_the_segmentor_and_there_is_no_discriminator(tiny_experiment):
    trainer = Trainer(_job(tiny_experiment, "ce"), torch.device("cpu"))
    assert trainer.disc is None
    before = _params(trainer.segmentor)
    stats = trainer.supervised_step(*_batch(trainer.job))
    assert _changed(before, trainer.segmentor)
    assert stats["loss_s"] == stats["loss_ce"] > 0


@pytest.mark.parametrize("scheme", ["adversarial", "hybrid"])
def test_adversarial_steps_update_both_networks(tiny_experiment, scheme):
    torch.manual_seed(0)
    trainer = Trainer(_job(tiny_experiment, scheme), torch.device("cpu"))
    s_before, d_before = _params(trainer.segmentor), _params(trainer.disc)
    stats = trainer.adversarial_step(*_batch(trainer.job))
    assert _changed(s_before, trainer.segmentor)
    assert _changed(d_before, trainer.disc)
    # D's parameters are trainable again after the segmentor step froze them
    assert all(p.requires_grad for p in trainer.disc.parameters())
    expected = stats["loss_adv"] + (0.5 * stats["loss_ce"] if scheme == "hybrid" else 0.0)
    assert stats["loss_s"] == pytest.approx(expected, rel=1e-5)
    assert {"loss_d", "d_real", "d_fake", "grad_norm_d"} <= set(stats)


def test_segmentor_step_does_not_move_the_discriminator(tiny_experiment):
    """With D's own step skipped (lr 0 for D), the S step must leave D exactly as it was."""
    torch.manual_seed(0)
    trainer = Trainer(_job(tiny_experiment, "adversarial"), torch.device("cpu"))
    for group in trainer.opt_d.param_groups:
        group["lr"] = 0.0
    d_before = _params(trainer.disc)
    trainer.adversarial_step(*_batch(trainer.job))
    assert not _changed(d_before, trainer.disc)


def test_frozen_control_trains_the_segmentor_against_a_discriminator_that_never_moves(
    tiny_experiment,
):
    torch.manual_seed(0)
    trainer = Trainer(_job(tiny_experiment, "hybrid-frozen"), torch.device("cpu"))
    s_before, d_before = _params(trainer.segmentor), _params(trainer.disc)
    for seed in range(3):
        stats = trainer.adversarial_step(*_batch(trainer.job, seed))
    assert _changed(s_before, trainer.segmentor)
    assert not _changed(d_before, trainer.disc)
    # the same game as hybrid: λ·L_mce + L_S, D's loss and scores logged
    assert stats["loss_s"] == pytest.approx(stats["loss_adv"] + 0.5 * stats["loss_ce"], rel=1e-5)
    assert stats["grad_norm_d"] == 0 and stats["loss_d"] > 0


def test_class_weighted_ce_weights_come_from_the_training_labels_only(tiny_experiment):
    job = _job(tiny_experiment, "wce")
    weights = job.spec["class_weights"]
    counts = torch.zeros(2, dtype=torch.float64)
    for case in job.spec["train_cases"]:
        path = tiny_experiment["preprocessed"] / "labelsTr" / f"{case}.nii.gz"
        labels = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).long()
        counts += torch.bincount(labels.ravel(), minlength=2)[:2]
    freq = counts / counts.sum()
    # inverse square root of the frequency, mean weight per voxel 1
    assert weights[1] / weights[0] == pytest.approx(float((freq[0] / freq[1]) ** 0.5), rel=1e-6)
    assert float((freq * torch.tensor(weights, dtype=torch.float64)).sum()) == pytest.approx(1.0)
    trainer = Trainer(job, torch.device("cpu"))
    logits = torch.randn(2, 2, 8, 8)
    label = (torch.rand(2, 1, 8, 8) > 0.7).float()
    expected = torch.nn.functional.cross_entropy(
        logits, label[:, 0].long(), weight=torch.tensor(weights)
    )
    assert float(trainer.ce(logits, label)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"train": {"patch_size": [33, 33]}}, "use multiples of 2"),
        ({"train": {"patch_size": [32, 32, 16]}}, "network.spatial_dims is 2"),
        ({"train": {"patch_size": [512, 512]}}, "use a smaller patch"),
        ({"train": {"class_weights": [1.0, 2.0, 3.0]}}, "the data has 2 classes"),
        (
            {"adversarial": {"loss": "wgan-gp", "d_norm": "batch"}},
            "batch norm couples samples",
        ),
        ({"adversarial": {"d_features": [8, 8, 8, 8, 8, 8]}}, "need patches of at least 64"),
        ({"adversarial": {"real_maps": "soft"}}, "real_maps 'soft' unknown; choose from onehot"),
        ({"train": {"network": {"name": "BasicUNet", "features": [8, 16]}}}, "6 sizes"),
        ({"train": {"network": {"name": "DynUNet", "features": [8, 16]}}}, "at least 3 levels"),
    ],
)
def test_bad_settings_fail_before_training(tiny_experiment, sections, message):
    with pytest.raises(ValueError, match="cannot train") as err:
        _job(tiny_experiment, "hybrid", **sections)
    assert message in str(err.value)


def test_discriminator_settings_do_not_stop_schemes_without_one(tiny_experiment):
    job = _job(tiny_experiment, "ce", adversarial={"d_features": [8] * 6})
    assert job.spec["discriminator"] is None


def test_unknown_scheme_and_fold_outside_the_splits(tiny_experiment):
    with pytest.raises(ValueError, match="scheme 'gan' unknown; choose from ce, dicece"):
        _job(tiny_experiment, "gan")
    with pytest.raises(ValueError, match="fold 3 is outside the splits: they have folds 0-2"):
        _job(tiny_experiment, "ce", fold=3)


def _train(tiny_experiment, out, scheme="ce", resume="no", **sections):
    return train_fold(
        _config(tiny_experiment, **sections),
        scheme,
        0,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        resume,
        show_progress=False,
    )


def test_model_folder_is_self_describing(tiny_experiment, tmp_path):
    spec = _train(tiny_experiment, tmp_path / "hybrid" / "fold_0", "hybrid")
    folder = tmp_path / "hybrid" / "fold_0"
    for name in (
        "model.json",
        "plans.json",
        "config.yaml",
        "checkpoint_final.pt",
        "checkpoint_best.pt",
        "checkpoint_last.pt",
        "training_log.tsv",
        "learning_curves.png",
    ):
        assert (folder / name).is_file(), name
    written = read_json(folder / "model.json")
    assert written == json.loads(json.dumps(spec))
    assert written["channel_names"] == ["T2w", "ADC", "DWI"]
    assert written["labels"] == {"background": 0, "lesion": 1}
    assert written["fold"] == 0 and written["scheme"] == "hybrid"
    assert written["discriminator"]["input"] == "image+labels"
    log = (folder / "training_log.tsv").read_text().splitlines()
    header = log[0].split("\t")
    assert header[:6] == ["epoch", "phase", "loss_s", "loss_ce", "loss_adv", "loss_d"]
    assert len(log) == 1 + 2
    row = dict(zip(header, log[-1].split("\t"), strict=True))
    assert row["phase"] == "adversarial" and float(row["d_real"]) == float(row["d_real"])
    assert 0.0 <= float(row["val_dice"]) <= 1.0


def test_resumed_run_equals_an_uninterrupted_one(tiny_experiment, tmp_path, monkeypatch):
    import adseg.training.engine

    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(tiny_experiment, straight, "adversarial", train={"epochs": 3})
    # interrupt the second run between epochs 2 and 3, before epoch 3's checkpoint
    write_tsv, calls = adseg.training.engine.write_tsv, []

    def interrupted(path, history, columns):
        calls.append(len(history))
        if len(history) == 3:
            raise KeyboardInterrupt
        write_tsv(path, history, columns)

    monkeypatch.setattr(adseg.training.engine, "write_tsv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_experiment, split, "adversarial", train={"epochs": 3})
    monkeypatch.setattr(adseg.training.engine, "write_tsv", write_tsv)
    _train(tiny_experiment, split, "adversarial", "yes", train={"epochs": 3})
    a = torch.load(straight / "checkpoint_final.pt", weights_only=True)
    b = torch.load(split / "checkpoint_final.pt", weights_only=True)
    for net in ("segmentor", "discriminator"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert read_json(split / "model.json")["epochs_trained"] == 3


def test_a_run_repeats_bit_for_bit_on_one_machine_and_thread_count(tiny_experiment, tmp_path):
    """What the README promises: the same config, machine and thread count give the same
    weights and the same training log (but for its seconds). Another CPU or BLAS, or another
    thread count, may sum in another order and differ in the last bits, then further."""
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        _train(tiny_experiment, out, "hybrid", train={"epochs": 2, "threads": 1})
    a, b = (torch.load(out / "checkpoint_final.pt", weights_only=True) for out in runs)
    for net in ("segmentor", "discriminator"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)

    def log(out):
        rows = [line.split("\t") for line in (out / "training_log.tsv").read_text().splitlines()]
        keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
        return [[row[i] for i in keep] for row in rows]

    assert log(runs[0]) == log(runs[1])


def test_resume_refuses_a_checkpoint_from_another_config(tiny_experiment, tmp_path):
    out = tmp_path / "fold"
    _train(tiny_experiment, out, train={"epochs": 1})
    with pytest.raises(ValueError, match="checkpoint from another config"):
        _train(tiny_experiment, out, resume="yes", train={"lr": 0.01})
    # the workflow's mode starts afresh instead
    spec = _train(tiny_experiment, out, resume="auto", train={"lr": 0.01, "epochs": 1})
    assert spec["epochs_trained"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        _train(tiny_experiment, tmp_path / "empty", resume="yes")


def test_fingerprint_covers_settings_schedule_and_data(tiny_experiment, tmp_path):
    base = fingerprint(_job(tiny_experiment))
    assert fingerprint(_job(tiny_experiment, train={"threads": 2, "val_every": 3})) == base
    assert fingerprint(_job(tiny_experiment, train={"epochs": 9})) != base
    assert fingerprint(_job(tiny_experiment, train={"lr": 0.1})) != base
    assert fingerprint(_job(tiny_experiment, fold=1)) != base
    # an edited label of a case in the fold changes it too
    pre = tmp_path / "preprocessed"
    shutil.copytree(tiny_experiment["preprocessed"], pre)
    job = _job({**tiny_experiment, "preprocessed": pre})
    label = pre / "labelsTr" / f"{job.spec['train_cases'][0]}.nii.gz"
    image = sitk.ReadImage(str(label))
    image[0, 0, 0] = 1
    sitk.WriteImage(image, str(label))
    # the job reads the arrays: an edit that has not reached them changes nothing it trains on
    assert fingerprint(_job({**tiny_experiment, "preprocessed": pre})) == base
    rewrite_arrays(pre, [job.spec["train_cases"][0]])
    assert fingerprint(_job({**tiny_experiment, "preprocessed": pre})) != base


def test_nan_voxels_give_a_non_finite_loss_that_stops_training(tiny_experiment, tmp_path):
    pre = tmp_path / "preprocessed"
    shutil.copytree(tiny_experiment["preprocessed"], pre)
    for path in (pre / "imagesTr").glob("*_0000.nii.gz"):
        image = sitk.ReadImage(str(path))
        image[:, :, :] = float("nan")
        sitk.WriteImage(image, str(path))
    rewrite_arrays(pre)
    out = tmp_path / "fold"
    with pytest.raises(TrainingError, match="non-finite loss_s.*at epoch 1, iteration 1"):
        _train({**tiny_experiment, "preprocessed": pre}, out)
    assert not (out / "checkpoint_last.pt").exists() and not (out / "model.json").exists()


def test_divergence_keeps_the_last_good_checkpoint(tiny_experiment, tmp_path, monkeypatch):
    steps = {"n": 0, "per_epoch": None}
    step = Trainer.supervised_step

    def diverging(self, image, label):
        stats = step(self, image, label)
        steps["n"] += 1
        if steps["per_epoch"] is not None and steps["n"] > steps["per_epoch"]:
            stats["loss_s"] = float("inf")
        return stats

    def log_after_first_epoch(path, history, columns):
        if steps["per_epoch"] is None:
            steps["per_epoch"] = steps["n"]
        return write_tsv(path, history, columns)

    import adseg.training.engine

    write_tsv = adseg.training.engine.write_tsv
    monkeypatch.setattr(Trainer, "supervised_step", diverging)
    monkeypatch.setattr(adseg.training.engine, "write_tsv", log_after_first_epoch)
    out = tmp_path / "fold"
    with pytest.raises(TrainingError, match="non-finite loss_s at epoch 2, iteration 1"):
        _train(tiny_experiment, out, train={"epochs": 3})
    kept = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert len(kept["history"]) == 1
    assert not (out / "model.json").exists()


def test_collapsed_discriminator_stops_training(tiny_experiment, tmp_path):
    # any real loss is below a threshold of 100: collapse after the first adversarial epoch
    with pytest.raises(
        TrainingError, match="discriminator collapsed: L_D within 100 of its floor for 1 epochs"
    ):
        _train(
            tiny_experiment,
            tmp_path / "fold",
            "adversarial",
            adversarial={"collapse_loss": 100.0, "collapse_epochs": 1},
        )
    assert not (tmp_path / "fold" / "checkpoint_last.pt").exists()


def _cli(tiny_experiment, out, *extra) -> list[str]:
    from conftest import TINY_TRAIN

    cfg = json.dumps(deep_merge(copy.deepcopy(TINY_TRAIN), {"train": {"epochs": 6}}))
    return [
        sys.executable,
        "-m",
        "adseg",
        "train",
        "--scheme",
        "ce",
        "--fold",
        "1",
        "--preprocessed",
        str(tiny_experiment["preprocessed"]),
        "--splits",
        str(tiny_experiment["splits"]),
        "-o",
        str(out),
        "--set",
        cfg,
        "--no-progress",
        *extra,
    ]


def test_killed_run_resumes_from_its_checkpoint(tiny_experiment, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store}
    done = subprocess.run(_cli(tiny_experiment, straight), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(_cli(tiny_experiment, killed), env=env, stderr=subprocess.PIPE)
    log = killed / "training_log.tsv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:  # 2 epochs done
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.json").exists()
    epochs_before = len(torch.load(killed / "checkpoint_last.pt", weights_only=True)["history"])
    # the kill may land between writing the log and the checkpoint of an epoch
    assert 1 <= epochs_before < 6
    resumed = subprocess.run(
        _cli(tiny_experiment, killed, "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming ce fold 1 after epoch {epochs_before}" in resumed.stderr
    a = torch.load(straight / "checkpoint_final.pt", weights_only=True)["segmentor"]
    b = torch.load(killed / "checkpoint_final.pt", weights_only=True)["segmentor"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed job continued its MLflow run: one run, every epoch, resumption in its tags
    from mlflow.tracking import MlflowClient

    from adseg.tracking import current_journal

    client = MlflowClient(store)
    run = client.get_run(current_journal(killed).run_id())
    assert run.info.status == "FINISHED"
    assert run.data.tags["adseg.resumed"] == "1"
    assert run.data.tags["adseg.resumed_after_epoch"] == str(epochs_before)
    # every epoch once: a kill between an epoch's event and its checkpoint must not leave
    # MLflow a second point at the step it trains again
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss_s"))
    assert steps == list(range(1, 7))
    assert len(client.search_runs([run.info.experiment_id])) == 3  # a parent, two folds


@pytest.mark.parametrize(
    ("network", "patch"),
    [
        ({"name": "UNet", "spatial_dims": 3, "features": [8, 16]}, [32, 32, 16]),
        ({"name": "DynUNet", "spatial_dims": 3, "features": [8, 16, 16]}, [16, 16, 8]),
        ({"name": "SegResNet", "spatial_dims": 2, "features": [8, 16]}, [32, 32]),
        ({"name": "BasicUNet", "spatial_dims": 2, "features": [4, 4, 8, 8, 16, 4]}, [32, 32]),
    ],
)
def test_every_registered_network_trains_in_2d_or_3d(tiny_experiment, tmp_path, network, patch):
    spec = _train(
        tiny_experiment,
        tmp_path / "fold",
        "hybrid",
        train={"network": network, "patch_size": patch, "epochs": 1},
    )
    assert spec["network"]["name"] == network["name"]
    assert spec["network"]["spatial_dims"] == network["spatial_dims"]
    assert 0.0 <= spec["final_val_dice"] <= 1.0


def test_train_cli_reports_bad_input_without_a_traceback(tiny_experiment, tmp_path):
    args = _cli(tiny_experiment, tmp_path / "fold")
    args[args.index("--fold") + 1] = "9"
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 1
    assert "adseg train: error: fold 9 is outside the splits: they have folds 0-2" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback without CUDA")
def test_gpus_given_by_the_scheduler_but_unusable_are_reported(monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert pick_device("auto").type == "cpu"
    assert "running on cpu although CUDA_VISIBLE_DEVICES=1" in caplog.text
    caplog.clear()
    # asking for the CPU, or given no GPU, is no news
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pick_device("auto").type == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in caplog.text
