"""pix2pix translation: training, held-out evaluation, new scans in their own geometry, and
the GAN summary table."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TINY_GAN, assert_roles_disjoint

from adseg.config import resolve_config
from adseg.gan.summary import summarize_gan
from adseg.gan.translation import image_metrics, train_translation
from adseg.io import read_json
from adseg.preprocessing.qc import read_tsv


@pytest.fixture(scope="module")
def trained(tiny_experiment, tmp_path_factory) -> dict:
    """pix2pix and L1-only models of fold 0, trained once for this module."""
    root = tmp_path_factory.mktemp("translation")
    config = resolve_config(TINY_GAN)
    specs = {}
    for model in ("pix2pix", "l1"):
        out = root / f"translation-{model}" / "fold_0"
        specs[model] = train_translation(
            config,
            model,
            0,
            tiny_experiment["preprocessed"],
            tiny_experiment["splits"],
            out,
            show_progress=False,
        )
    return {"root": root, "specs": specs}


def adseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adseg", *args, "--no-progress"], capture_output=True, text=True
    )


def test_image_metrics_on_hand_computed_values():
    real = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    same = image_metrics(real, real, axis=2)
    assert same["mae"] == 0 and same["ssim"] == pytest.approx(1.0)
    off = image_metrics(real + 0.1, real, axis=2)
    assert off["mae"] == pytest.approx(0.1, rel=1e-5)
    # PSNR with peak 2: 20 log10(2) - 10 log10(0.1²)
    assert off["psnr"] == pytest.approx(20 * math.log10(2) + 20, rel=1e-4)


def test_pix2pix_and_l1_folders(trained):
    pix, l1 = (trained["root"] / f"translation-{m}" / "fold_0" for m in ("pix2pix", "l1"))
    spec = trained["specs"]["pix2pix"]
    assert spec["discriminator"]["name"] == "patch" and spec["generator"]["features"] == [4, 8, 16]
    assert (spec["source"], spec["target"], spec["target_index"]) == ("T2w", "ADC", 1)
    # a new scan's source channel is preprocessed as the training cases were, alone
    assert read_json(pix / "plans.json")["channel_names"] == ["T2w"]
    assert trained["specs"]["l1"]["discriminator"] is None
    weights = torch.load(l1 / "checkpoint_final.pt", weights_only=True)
    assert set(weights) == {"generator"}
    log = read_tsv(pix / "training_log.tsv")
    assert len(log) == 2 and all(float(r["val_ssim"]) <= 1 for r in log)
    assert float(log[0]["loss_d"]) > 0 and read_tsv(l1 / "training_log.tsv")[0]["loss_d"] == ""
    assert sorted(p.name for p in (pix / "samples").iterdir()) == [
        "epoch_0001.png",
        "epoch_0002.png",
    ]


def test_evaluate_cli_writes_one_row_per_held_out_case(trained, tiny_experiment):
    fold = trained["root"] / "translation-pix2pix" / "fold_0"
    run = adseg(
        "gan", "evaluate", str(fold), "--preprocessed", str(tiny_experiment["preprocessed"]),
        "-o", str(fold / "metrics.tsv"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = read_tsv(fold / "metrics.tsv")
    spec = trained["specs"]["pix2pix"]
    assert sorted(r["case_id"] for r in rows) == sorted(spec["test_cases"])
    assert_roles_disjoint(spec, read_json(tiny_experiment["preprocessed"] / "dataset.json"))
    for r in rows:
        assert 0 <= float(r["mae"]) <= 2 and -1 <= float(r["ssim"]) <= 1
        assert r["model"] == "translation-pix2pix" and r["fold"] == "0"
    assert (fold / "examples.png").stat().st_size > 0


def flipped_copy(src, dst) -> None:
    """The same scan stored with its x axis reversed (another orientation, same world)."""
    image = sitk.ReadImage(str(src))
    flipped = sitk.Flip(image, [True, False, False])  # keeps world positions, flips storage
    assert flipped.GetDirection() != image.GetDirection()
    sitk.WriteImage(flipped, str(dst))


def test_translate_new_scans_in_their_own_geometry(trained, tiny_experiment, tmp_path):
    raw = tiny_experiment["raw"] / "imagesTr"
    scans = tmp_path / "scans"
    scans.mkdir()
    case = sorted(raw.glob("*_0000.nii.gz"))[0]
    shutil.copy(case, scans / "plain_0000.nii.gz")
    flipped_copy(case, scans / "flipped_0000.nii.gz")
    model = trained["root"] / "translation-pix2pix"
    out = tmp_path / "out"
    run = adseg("gan", "translate", "-m", str(model), "-i", str(scans), "-o", str(out))
    assert run.returncode == 0, run.stderr
    for name in ("plain", "flipped"):
        ref, made = (
            nib.load(str(scans / f"{name}_0000.nii.gz")),
            nib.load(str(out / f"{name}_0001.nii.gz")),
        )
        assert made.shape == ref.shape and np.array_equal(made.affine, ref.affine)
        assert made.get_data_dtype() == np.float32
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "plain_0001.nii.gz")))
    flipped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "flipped_0001.nii.gz")))
    # the same anatomy gives the same synthetic ADC, wherever the scan stored it
    assert np.allclose(plain, flipped[:, :, ::-1], atol=1e-3)
    assert plain.std() > 0
    summary = (out / "translations.csv").read_text().splitlines()
    assert summary[0].startswith("case_id,source_file,target,file") and len(summary) == 3


def test_translate_reports_bad_input_before_any_work(trained, tiny_experiment, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    raw = tiny_experiment["raw"] / "imagesTr"
    shutil.copy(sorted(raw.glob("*_0001.nii.gz"))[0], scans / "adc_0001.nii.gz")
    model = trained["root"] / "translation-pix2pix"
    run = adseg("gan", "translate", "-m", str(model), "-i", str(scans), "-o", str(tmp_path / "o"))
    assert run.returncode == 1
    assert "case 'adc': no file adc_0000.nii.gz (the source channel)" in run.stderr
    assert not (tmp_path / "o").exists()
    shutil.copy(sorted(raw.glob("*_0000.nii.gz"))[0], scans / "t2_0000.nii.gz")
    (scans / "adc_0001.nii.gz").unlink()
    run = adseg("gan", "translate", "-m", str(model), "-i", str(scans), "-o", str(scans))
    assert run.returncode == 1 and "the output folder is the input folder" in run.stderr
    assert sorted(p.name for p in scans.iterdir()) == ["t2_0000.nii.gz"]
    # a wrong path is named as such, not as a file that is not NIfTI
    run = adseg(
        "gan",
        "translate",
        "-m",
        str(model),
        "-i",
        str(tmp_path / "nope"),
        "-o",
        str(tmp_path / "o"),
    )
    assert run.returncode == 1 and f"{tmp_path / 'nope'}: no such file or folder" in run.stderr
    run = adseg(
        "gan",
        "translate",
        "-m",
        str(tmp_path / "nomodel"),
        "-i",
        str(scans),
        "-o",
        str(tmp_path / "o"),
    )
    assert run.returncode == 1 and f"{tmp_path / 'nomodel'}: no such model folder" in run.stderr
    assert not (tmp_path / "o").exists()


def test_a_synthesis_command_refuses_a_translation_model(trained, tmp_path):
    run = adseg("gan", "sample", "-m", str(trained["root"] / "translation-l1"), "-o", str(tmp_path))
    assert run.returncode == 1
    assert "a translation model; this command needs a synthesis model" in run.stderr


def test_summary_tables_and_paired_tests(tmp_path):
    rows = []
    for i in range(6):
        for model, mae in (("translation-pix2pix", 0.20), ("translation-l1", 0.25)):
            rows.append(
                f"c{i}\tP{i}\tA\t{i % 2}\t{model}\t{mae + 0.01 * i}\t{20 - i}\t{0.5 + 0.01 * i}"
            )
    metrics = tmp_path / "metrics.tsv"
    metrics.write_text(
        "case_id\tpatient_id\tdomain\tfold\tmodel\tmae\tpsnr\tssim\n" + "\n".join(rows)
    )
    path = summarize_gan([], [metrics], tmp_path / "gan", "test")
    text = path.read_text()
    assert "| translation-pix2pix | 0.225 ± 0.019 (6) |" in text
    tests = read_tsv(tmp_path / "gan" / "tests.tsv")
    mae = next(t for t in tests if t["metric"] == "mae")
    assert mae["model_a"] == "translation-l1" and float(mae["median_diff"]) == pytest.approx(0.05)
    assert float(mae["p"]) == pytest.approx(0.03125)  # all 6 pairs one way: 2 / 2**6
    assert (tmp_path / "gan" / "plots" / "translation_ssim.png").is_file()
    with pytest.raises(ValueError, match="nothing|no synthesis models"):
        summarize_gan([], [], tmp_path / "empty", "test")
