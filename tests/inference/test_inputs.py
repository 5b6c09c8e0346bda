"""How `adseg predict` matches files to the model's channels, and what it says when they do not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adseg.inference.inputs import (
    PredictError,
    channel_order,
    check_exists,
    collect_inputs,
    expected_channels,
)

CHANNELS = ["T2w", "ADC", "DWI"]
ORDER = "the model takes 3 channel(s), in this order: 0000 = T2w, 0001 = ADC, 0002 = DWI"


def _write(path: Path, volumes: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (6, 5, 4) if volumes == 1 else (6, 5, 4, volumes)
    data = np.random.default_rng(0).normal(300, 30, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.7, 3.0, 1.0])), str(path))
    return path


def _case(folder: Path, case: str = "a") -> list[Path]:
    return [_write(folder / f"{case}_{k:04d}.nii.gz") for k in range(3)]


def test_the_order_reads_as_the_files_are_numbered():
    assert channel_order(CHANNELS) == "0000 = T2w, 0001 = ADC, 0002 = DWI"
    assert expected_channels(CHANNELS) == ORDER


def _missing_adc(tmp_path: Path) -> list[Path]:
    files = _case(tmp_path / "in")
    files[1].unlink()
    return [tmp_path / "in"]


def _only_t2w(tmp_path: Path) -> list[Path]:
    _write(tmp_path / "in" / "a_0000.nii.gz")
    return [tmp_path / "in"]


def _two_files(tmp_path: Path) -> list[Path]:
    files = _case(tmp_path / "in")
    return [files[0], files[2]]


def _4d_of_two(tmp_path: Path) -> list[Path]:
    return [_write(tmp_path / "in" / "a_0000.nii.gz", volumes=2)]


def _4d_of_two_in_a_folder(tmp_path: Path) -> list[Path]:
    _write(tmp_path / "in" / "a_0000.nii.gz", volumes=2)
    return [tmp_path / "in"]


def _4d_among_3d(tmp_path: Path) -> list[Path]:
    files = _case(tmp_path / "in")
    return [_write(files[0], volumes=3), files[1], files[2]]


def _extra_channel(tmp_path: Path) -> list[Path]:
    _case(tmp_path / "in")
    _write(tmp_path / "in" / "a_0003.nii.gz")
    return [tmp_path / "in"]


def _named_by_channel(tmp_path: Path) -> list[Path]:
    _case(tmp_path / "in")
    _write(tmp_path / "in" / "b_T2w.nii.gz")
    return [tmp_path / "in"]


def _listed_out_of_order(tmp_path: Path) -> list[Path]:
    files = _case(tmp_path / "in")
    return [files[1], files[0], files[2]]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_missing_adc, r"case 'a' lacks channel 0001 \(ADC\): no a_0001.nii.gz in .*in; "),
        (_only_t2w, r"case 'a' lacks channel 0001 \(ADC\), 0002 \(DWI\): no a_0001.nii.gz, "),
        (_two_files, r"case 'a': 2 channel file\(s\) \(.*a_0000.nii.gz, .*a_0002.nii.gz\); "),
        (_4d_of_two, r"a_0000.nii.gz: 2 volume\(s\); one file must hold every channel as a "),
        (_4d_of_two_in_a_folder, r"a_0000.nii.gz: 2 volume\(s\); "),
        (_4d_among_3d, r"a_0000.nii.gz: 4-D; give one 3-D file per channel, or one 4-D file "),
        (_extra_channel, r"a_0003.nii.gz: channel file\(s\) the model does not take; "),
        (_named_by_channel, r"b_T2w.nii.gz: name is not <case>_<channel:04d>.nii.gz; "),
        (_listed_out_of_order, r"named for channels 0001, 0000, 0002; "),
    ],
    ids=[
        "missing-adc",
        "only-t2w",
        "two-of-three-files",
        "4d-of-two",
        "4d-of-two-in-a-folder",
        "4d-among-3d",
        "extra-channel",
        "named-by-channel",
        "listed-out-of-order",
    ],
)
def test_every_channel_error_names_the_models_channel_order(tmp_path, make, says):
    with pytest.raises(PredictError) as err:
        collect_inputs(make(tmp_path), CHANNELS)
    assert re.search(says, str(err.value)), str(err.value)
    assert str(err.value).endswith(ORDER), str(err.value)


def test_a_path_that_does_not_exist_is_named_as_missing(tmp_path):
    files = _case(tmp_path / "in")
    with pytest.raises(PredictError, match=f"^{re.escape(str(tmp_path / 'scans'))}: no such file"):
        collect_inputs([tmp_path / "scans"], CHANNELS)
    gone = tmp_path / "in" / "a_0009.nii.gz"
    with pytest.raises(PredictError, match=f"^{re.escape(str(gone))}: no such file or folder$"):
        collect_inputs([files[0], gone, files[2]], CHANNELS)
    with pytest.raises(PredictError, match=f"^{re.escape(str(tmp_path / 'm'))}: no such model"):
        check_exists([tmp_path / "nowhere"], tmp_path / "m")  # the model first
    check_exists(files, tmp_path)  # all there: nothing said


def _cli(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "adseg", "predict", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_help_says_how_files_are_matched_to_the_models_channels():
    run = _cli("--help")
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert 'under "channel_names" in its model.json' in text
    assert "predict logs them and the label names at the start" in text
    assert "expects 3 channel(s), in this order: 0000 = T2w, 0001 = ADC, 0002 = DWI" in text
    assert "<case>_0000.nii.gz is channel 0000 (T2w above)" in text
    assert "by their names and their order only, never by content" in text
    assert "a swap (an ADC file named _0000) cannot be seen" in text


def test_a_wrong_model_or_input_path_is_named_before_anything_else(tmp_path):
    scans = _case(tmp_path / "in")
    no_model = _cli("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", tmp_path / "nowhere")
    assert no_model.returncode == 1
    assert f"adseg predict: error: {tmp_path / 'nowhere'}: no such model folder" in no_model.stderr
    (tmp_path / "model").mkdir()
    no_scan = _cli(
        "-i", scans[0], tmp_path / "b.nii.gz", "-o", tmp_path / "out", "-m", tmp_path / "model"
    )
    assert no_scan.returncode == 1
    assert f"error: {tmp_path / 'b.nii.gz'}: no such file or folder" in no_scan.stderr
    assert "Traceback" not in no_model.stderr + no_scan.stderr
    assert not (tmp_path / "out").exists()
