"""Slice synthesis: training on a tiny cohort, resume, collapse checks, SWD, sampling."""

from __future__ import annotations

import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_GAN, assert_roles_disjoint

from adseg.config import deep_merge, resolve_config
from adseg.gan.job import GanError, check_epoch, spread_ratio
from adseg.gan.sampling import sliced_wasserstein
from adseg.gan.synthesis import train_synthesis, widths
from adseg.io import read_json


def gan_config(**synthesis) -> dict:
    return resolve_config(deep_merge(TINY_GAN, {"gan": {"synthesis": synthesis}}))


def train(tiny_experiment, out, model="dcgan", config=None, **kwargs):
    return train_synthesis(
        config or gan_config(),
        model,
        0,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        show_progress=False,
        **kwargs,
    )


def test_widths_double_per_level():
    assert widths(64, 64) == ([512, 256, 128, 64], [64, 128, 256, 512])
    assert widths(8, 16) == ([16, 8], [8, 16])


def test_sliced_wasserstein_zero_for_the_same_set_and_grows_with_a_shift():
    torch.manual_seed(0)
    a = torch.randn(200, 1, 4, 4)
    assert sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)
    near, far = sliced_wasserstein(a, a + 0.1), sliced_wasserstein(a, a + 1.0)
    assert 0 < near < far
    # a collapsed generator (every sample the mean image) is far from the data
    assert sliced_wasserstein(a, a.mean(0, keepdim=True).expand(200, -1, -1, -1)) > near


def recipe(**changes) -> dict:
    base = {
        "loss": "nonsaturating",
        "real_label": 1.0,
        "collapse_loss": 0.01,
        "collapse_epochs": 2,
        "collapse_std": 0.05,
    }
    return base | changes


def row(epoch, loss_d=0.7, std=0.5):
    return {"epoch": epoch, "loss_d": loss_d, "d_real": 3.0, "d_fake": -3.0, "std_ratio": std}


def test_check_epoch_passes_a_healthy_run_and_stops_divergence():
    check_epoch([row(1), row(2), row(3)], recipe())
    with pytest.raises(GanError, match="non-finite loss_d at epoch 2"):
        check_epoch([row(1), row(2, loss_d=math.nan)], recipe())


def test_check_epoch_stops_a_d_that_wins_outright_but_not_a_critic():
    pinned = [row(1), row(2, loss_d=0.001), row(3, loss_d=0.002)]
    with pytest.raises(GanError, match="discriminator won outright"):
        check_epoch(pinned, recipe())
    check_epoch(pinned, recipe(loss="wgan-gp"))  # a critic's loss has no floor
    check_epoch(pinned[:2], recipe())  # one epoch at the floor is not yet a collapse


def test_check_epoch_measures_the_floor_of_a_smoothed_target():
    floor = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    at_floor = [row(1, loss_d=floor + 0.001), row(2, loss_d=floor + 0.002)]
    with pytest.raises(GanError, match="won outright"):
        check_epoch(at_floor, recipe(real_label=0.9))


def test_check_epoch_stops_a_collapsed_generator():
    with pytest.raises(GanError, match="generator collapsed"):
        check_epoch([row(1, std=0.01), row(2, std=0.02)], recipe())
    check_epoch([row(1, std=0.01), row(2, std=0.3)], recipe())


def test_batches_of_one_give_no_collapse_verdict():
    assert spread_ratio(torch.ones(1, 1, 4, 4), torch.randn(1, 1, 4, 4)) == {}
    no_spread = [{"epoch": k, "loss_d": 0.7, "d_real": 1.0, "d_fake": -1.0} for k in (1, 2, 3)]
    check_epoch(no_spread, recipe())


def test_dcgan_trains_and_writes_a_self_describing_folder(tiny_experiment, tmp_path):
    out = tmp_path / "synthesis-dcgan" / "fold_0"
    spec = train(tiny_experiment, out)
    files = {p.name for p in out.iterdir()}
    assert {"model.json", "checkpoint_final.pt", "samples.png", "evaluation.json"} <= files
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "epoch_0001.png",
        "epoch_0002.png",
    ]
    assert spec["format"] == "adseg-gan" and spec["name"] == "synthesis-dcgan"
    assert spec["generator"]["features"] == [16, 8] and spec["image_size"] == 16
    lo, hi = spec["intensity"][0]
    assert lo < hi
    splits = read_json(tiny_experiment["splits"])["folds"][0]
    assert spec["train_cases"] == splits["inner_train"]
    assert spec["val_cases"] == splits["inner_val"] and spec["test_cases"] == splits["val"]
    assert_roles_disjoint(spec, read_json(tiny_experiment["preprocessed"] / "dataset.json"))
    ev = read_json(out / "evaluation.json")
    assert ev["swd"] > 0 and ev["swd_train"] > 0 and ev["n_test_slices"] > 0
    log = (out / "training_log.tsv").read_text().splitlines()
    assert log[0].split("\t")[:3] == ["epoch", "loss_d", "loss_g"] and len(log) == 3


def test_resumed_run_equals_an_uninterrupted_one(tiny_experiment, tmp_path, monkeypatch):
    import adseg.training.engine

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_experiment, straight, model="wgan-gp")
    # interrupt the second run after epoch 2's updates, before its checkpoint
    write_tsv = adseg.training.engine.write_tsv

    def interrupted(path, history, columns):
        if len(history) == 2:
            raise KeyboardInterrupt
        write_tsv(path, history, columns)

    monkeypatch.setattr(adseg.training.engine, "write_tsv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_experiment, split, model="wgan-gp")
    monkeypatch.setattr(adseg.training.engine, "write_tsv", write_tsv)
    assert len(torch.load(split / "checkpoint_last.pt", weights_only=True)["history"]) == 1
    train(tiny_experiment, split, model="wgan-gp", resume="yes")
    a = torch.load(straight / "checkpoint_final.pt", weights_only=True)
    b = torch.load(split / "checkpoint_final.pt", weights_only=True)
    for net in ("generator", "discriminator"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert read_json(split / "evaluation.json") == read_json(straight / "evaluation.json")


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_experiment, tmp_path):
    out = tmp_path / "fold"
    train(tiny_experiment, out, config=gan_config(epochs=1))
    with pytest.raises(ValueError, match="checkpoint from another config"):
        train(tiny_experiment, out, config=gan_config(latent_dim=4), resume="yes")


def test_a_fresh_start_leaves_nothing_of_the_earlier_run(tiny_experiment, tmp_path):
    out = tmp_path / "fold"
    train(tiny_experiment, out, config=gan_config(epochs=3))
    assert (out / "samples" / "epoch_0003.png").is_file()
    train(tiny_experiment, out, config=gan_config(epochs=1), resume="no")
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0001.png"]
    assert read_json(out / "model.json")["epochs_trained"] == 1


def test_wgan_gp_and_feature_matching_recipes_train(tiny_experiment, tmp_path):
    config = gan_config(models={"fm": {"loss": "feature-matching", "g_width": 8, "d_width": 8}})
    spec = train(tiny_experiment, tmp_path / "fm", model="fm", config=config)
    assert spec["recipe"]["loss"] == "feature-matching"
    spec = train(tiny_experiment, tmp_path / "wgan", model="wgan-gp")
    assert spec["discriminator"]["norm"] == "layer"
    log = (tmp_path / "wgan" / "training_log.tsv").read_text()
    assert "nan" not in log


def test_a_collapsed_generator_stops_training_with_a_message(tiny_experiment, tmp_path):
    # a spread above the real data's can never be reached: the check must fire
    models = {"dcgan": {"g_width": 8, "d_width": 8, "collapse_std": 10.0, "collapse_epochs": 1}}
    out = tmp_path / "collapse"
    with pytest.raises(GanError, match="generator collapsed"):
        train(tiny_experiment, out, config=gan_config(models=models))
    assert not (out / "model.json").exists()
    assert (out / "training_log.tsv").is_file()  # what happened is kept


def sample(*args: str) -> subprocess.CompletedProcess:
    """``adseg gan sample ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "adseg", "gan", "sample", *args, "--no-progress"],
        capture_output=True,
        text=True,
    )


def test_conditional_model_samples_a_chosen_domain(tiny_experiment, tmp_path):
    out = tmp_path / "synthesis-cgan" / "fold_0"
    spec = train(tiny_experiment, out, config=gan_config(condition="domain"))
    assert spec["classes"] == ["A", "B"]
    samples = tmp_path / "samples"
    run = sample("-m", str(out.parent), "-n", "5", "-o", str(samples), "--class", "B")
    assert run.returncode == 0, run.stderr
    files = sorted(p.name for p in samples.iterdir())
    assert files == [f"sample_{i:04d}.nii.gz" for i in range(5)] + ["samples.png"]
    image = nib.load(str(samples / "sample_0000.nii.gz"))
    assert image.shape[2] == 1 and image.shape[:2] == (16, 16)
    assert np.allclose(image.header.get_zooms(), spec["grid"]["spacing"])
    bad = sample("-m", str(out), "-n", "2", "-o", str(tmp_path / "x"), "--class", "C")
    assert bad.returncode == 1
    assert "class 'C' unknown" in bad.stderr and "it knows ['A', 'B']" in bad.stderr
    # a smaller draw into the same folder leaves no files of the larger one
    again = sample("-m", str(out.parent), "-n", "2", "-o", str(samples), "--format", "nifti")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in samples.glob("*.nii.gz")) == [
        "sample_0000.nii.gz",
        "sample_0001.nii.gz",
    ]
    wrong = sample("-m", str(out), "--fold", "1", "-o", str(tmp_path / "y"))
    assert wrong.returncode == 1 and "one fold folder (fold 0); folds [1]" in wrong.stderr


def test_sample_refuses_a_translation_or_segmentation_folder(tiny_experiment, tmp_path):
    run = sample("-m", str(tmp_path), "-o", "x")
    assert run.returncode == 1 and "no model.json and no fold_* folders" in run.stderr
