"""`adseg predict` never runs a file, never loses an input, never passes off an old mask.

Through the real command, as a user meets it: each refusal exits 1 with a message naming the
file, before any output folder is made, and leaves every input byte for byte as it was.
"""

from __future__ import annotations

import copy
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from adseg.inference.inputs import PredictError, collect_inputs
from adseg.inference.predict import PredictOptions, predict
from adseg.inference.provenance import is_stale_temp
from adseg.training.segmentation import train_fold

CHANNELS = ["T2w", "ADC", "DWI"]
SHAPE = (40, 44, 8)


@pytest.fixture(scope="module")
def model(tiny_experiment, tmp_path_factory):
    """A hybrid model (segmentor and discriminator) of two folds, one epoch each."""
    root = tmp_path_factory.mktemp("safety_model") / "hybrid"
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


def _affine(shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = np.array([-16.0, -15.0, -12.0]) + shift_mm
    return affine


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = _affine() if affine is None else affine
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def _case(folder: Path, case: str, seed: int = 0, names=None) -> list[Path]:
    """A case's three channel files (nnU-Net names unless ``names``)."""
    rng = np.random.default_rng(seed)
    names = names or [f"{case}_{k:04d}.nii.gz" for k in range(3)]
    return [
        _write(folder / name, rng.normal(300 + 50 * k, 30, SHAPE)) for k, name in enumerate(names)
    ]


def _cli(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "adseg", "predict", "--no-progress", "--device", "cpu"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def _refused(run: subprocess.CompletedProcess, *named: object) -> None:
    assert run.returncode == 1, run.stderr
    assert "adseg predict:" in run.stderr and "Traceback" not in run.stderr, run.stderr
    for thing in named:
        assert str(thing) in run.stderr, run.stderr


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


# -- the output folder ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["the input folder", "the scan's folder, --overwrite"])
def test_an_output_that_is_or_holds_an_input_is_refused(model, tmp_path, where):
    files = _case(tmp_path / "in", "a")
    before = _snapshot(tmp_path / "in")
    if where == "the input folder":
        run = _cli("-i", tmp_path / "in", "-o", tmp_path / "in", "-m", model)
        _refused(run, tmp_path / "in", "is the input")
    else:
        run = _cli("-i", *files, "-o", tmp_path / "in", "-m", model, "--overwrite")
        _refused(run, tmp_path / "in", files[0], "contains the input")
    assert _snapshot(tmp_path / "in") == before  # nothing replaced, nothing added


# -- scans a model cannot segment -------------------------------------------------------------


def _shifted_adc(folder: Path) -> Path:
    files = _case(folder, "a")
    data = np.asanyarray(nib.load(files[1]).dataobj)
    return _write(files[1], data, _affine((200.0, 0.0, 0.0)))


def _zero_t2w(folder: Path) -> Path:
    return _write(_case(folder, "a")[0], np.zeros(SHAPE))


def _extra_channel(folder: Path) -> Path:
    _case(folder, "a")
    return _write(folder / "a_0003.nii.gz", np.ones(SHAPE))


def _duplicate_channel(folder: Path) -> Path:
    files = _case(folder, "a")
    copy_ = folder / "a_0001.nii"
    nib.save(nib.load(files[1]), copy_)
    return copy_


def _truncated_scan(folder: Path) -> Path:
    files = _case(folder, "a")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    return files[2]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_shifted_adc, "ADC overlaps only 0 % of T2w"),
        (_zero_t2w, "T2w: image is empty"),
        (_extra_channel, "the model does not take"),
        (_duplicate_channel, "a second file for channel 0001"),
        (_truncated_scan, "truncated or corrupt"),
    ],
    ids=["shifted-adc-200mm", "all-zero-t2w", "extra-channel", "duplicate-channel", "truncated"],
)
def test_a_scan_that_cannot_be_segmented_is_refused_before_any_output(model, tmp_path, make, says):
    bad = make(tmp_path / "in")
    before = _snapshot(tmp_path / "in")
    run = _cli("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model)
    _refused(run, bad, says)
    assert not (tmp_path / "out").exists()
    assert _snapshot(tmp_path / "in") == before


def test_a_channel_shifted_by_more_than_a_voxel_is_a_warning(model, tmp_path, caplog):
    files = _case(tmp_path / "in", "a")
    data = np.asanyarray(nib.load(files[1]).dataobj)
    # 6 mm: more than a voxel of either channel (0.8 x 0.7 x 3 mm), yet mostly overlapping
    _write(files[1], data, _affine((6.0, 0.0, 0.0)))
    predict([tmp_path / "in"], tmp_path / "out", model, PredictOptions(show_progress=False))
    assert (tmp_path / "out" / "a.nii.gz").is_file()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(files[1]) in m and "ADC is shifted 6.0 mm against T2w" in m for m in warned)


def test_the_files_of_one_case_must_be_its_channels_each_once_in_order(model, tmp_path):
    files = _case(tmp_path / "in", "a")
    with pytest.raises(PredictError, match="a_0000.nii.gz: given twice"):
        collect_inputs([files[0], files[0], files[2]], CHANNELS)
    with pytest.raises(PredictError, match="named for channels 0001, 0000, 0002"):
        collect_inputs([files[1], files[0], files[2]], CHANNELS)
    with pytest.raises(PredictError, match=r"4 channel file\(s\) \(.*a_0000.nii.gz"):
        collect_inputs(
            [*files, shutil.copy(files[0], files[0].with_name("b_0003.nii.gz"))], CHANNELS
        )
    copied = shutil.copy(files[0], tmp_path / "t2w_again.nii.gz")
    with pytest.raises(
        PredictError, match="t2w_again.nii.gz: the same bytes as .*a_0000.*ADC and T2w .*0001 = ADC"
    ):
        predict([files[0], copied, files[2]], tmp_path / "out", model, PredictOptions())
    assert not (tmp_path / "out").exists()


# -- model files ------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: loading it as code would create the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _truncated(path: Path, tmp: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _a_list(path: Path, tmp: Path) -> None:
    torch.save([1, 2], path)


def _text(path: Path, tmp: Path) -> None:
    path.write_text("these are not the weights you are looking for\n")


def _empty(path: Path, tmp: Path) -> None:
    path.write_bytes(b"")


def _other_weights(path: Path, tmp: Path) -> None:
    torch.save({"segmentor": {"conv.weight": torch.zeros(2, 2)}}, path)


def _payload(path: Path, tmp: Path) -> None:
    torch.save({"segmentor": _Payload(tmp / "PWNED")}, path)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_truncated, "not an adseg checkpoint"),
        (_a_list, "not an adseg checkpoint (holds a list"),
        (_text, "not an adseg checkpoint"),
        (_empty, "not an adseg checkpoint (empty file)"),
        (_other_weights, "weights do not fit the network in model.json"),
        (_payload, "not an adseg checkpoint (it holds objects other than tensors"),
    ],
    ids=["truncated", "foreign-list", "text-file", "empty", "other-network", "pickled-payload"],
)
def test_a_bad_checkpoint_is_refused_naming_it_before_any_output(model, tmp_path, spoil, says):
    folder = tmp_path / "model"
    shutil.copytree(model / "fold_0", folder)
    checkpoint = folder / "checkpoint_final.pt"
    spoil(checkpoint, tmp_path)
    _case(tmp_path / "in", "a")
    before = _snapshot(tmp_path / "in", folder)
    run = _cli("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", folder)
    _refused(run, checkpoint, says)
    assert not (tmp_path / "PWNED").exists()  # the payload never ran
    assert not (tmp_path / "out").exists()
    assert _snapshot(tmp_path / "in", folder) == before


# -- reruns -----------------------------------------------------------------------------------


def test_a_rerun_with_another_model_is_refused_unless_overwrite(model, tmp_path):
    _case(tmp_path / "in", "a")
    _case(tmp_path / "in", "b", seed=1)
    out = tmp_path / "out"
    first = _cli("-i", tmp_path / "in", "-o", out, "-m", model / "fold_0")
    assert first.returncode == 0, first.stderr
    assert "(fold(s) 0) expects 3 channel(s), in this order: 0000 = T2w, 0001 = ADC" in first.stderr
    rows = _rows(out / "predictions.csv")
    given = [tmp_path / "in" / f"a_{k:04d}.nii.gz" for k in range(3)]
    assert rows["a"]["input_files"] == "; ".join(map(str, given))
    masks, inputs = _snapshot(out), _snapshot(tmp_path / "in")
    other = _cli("-i", tmp_path / "in", "-o", out, "-m", model / "fold_1")
    _refused(other, "case 'a'", "case 'b'", "made from another model", model / "fold_1")
    assert _snapshot(out) == masks  # the old masks stand, marked as what they are
    redo = _cli("-i", tmp_path / "in", "-o", out, "-m", model / "fold_1", "--overwrite")
    assert redo.returncode == 0, redo.stderr
    new = _rows(out / "predictions.csv")
    assert new["a"]["model_sha256"] != rows["a"]["model_sha256"]
    assert new["a"]["input_sha256"] == rows["a"]["input_sha256"]
    assert _snapshot(tmp_path / "in") == inputs


def test_another_patients_files_under_the_same_case_id_are_refused(model, tmp_path):
    names = ["t2w.nii.gz", "adc.nii.gz", "dwi.nii.gz"]
    one = _case(tmp_path / "patient1", "", seed=1, names=names)
    two = _case(tmp_path / "patient2", "", seed=2, names=names)
    out = tmp_path / "out"
    first = _cli("-i", *one, "-o", out, "-m", model)
    assert first.returncode == 0, first.stderr
    masks, inputs = _snapshot(out), _snapshot(tmp_path / "patient1", tmp_path / "patient2")
    second = _cli("-i", *two, "-o", out, "-m", model)
    _refused(second, "case 't2w'", "made from other files", *one, *two)
    assert _snapshot(out) == masks
    assert _snapshot(tmp_path / "patient1", tmp_path / "patient2") == inputs


def test_a_file_of_someone_elses_is_never_replaced_even_with_overwrite(model, tmp_path):
    _case(tmp_path / "in", "a")
    theirs = _write(tmp_path / "out" / "a.nii.gz", np.ones(SHAPE))  # a mask of the user's
    before = _snapshot(tmp_path / "out")
    opts = PredictOptions(overwrite=True, show_progress=False)
    with pytest.raises(PredictError, match=f"{theirs}: in a folder adseg did not create"):
        predict([tmp_path / "in"], tmp_path / "out", model, opts)
    assert _snapshot(tmp_path / "out") == before


def test_a_rerun_removes_only_the_temporary_files_a_killed_run_left(model, tmp_path):
    _case(tmp_path / "in", "a")
    out = tmp_path / "out"
    opts = PredictOptions(folds=[0], show_progress=False)
    predict([tmp_path / "in"], out, model, opts)
    stale = [".a.k3j_x9q2.nii.gz", ".predictions.ab12cd34.csv", "..q1w2e3r4", ".adseg-write-test"]
    kept = [".notes.txt", ".DS_Store", ".backup.abcd1234.txt", "a.k3j_x9q2.nii.gz"]
    for name in stale + kept:
        (out / name).write_bytes(b"x")
    predict([tmp_path / "in"], out, model, opts)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".adseg", "a.nii.gz", "predictions.csv", *kept]
    )
    assert all(is_stale_temp(n) for n in stale) and not any(is_stale_temp(n) for n in kept)


@pytest.mark.slow
def test_killed_at_random_points_a_rerun_gives_the_uninterrupted_result(model, tmp_path):
    cases = [f"c{i}" for i in range(10)]
    for i, case in enumerate(cases):
        _case(tmp_path / "in", case, seed=i)
    before = _snapshot(tmp_path / "in")
    log = tmp_path / "stderr.log"

    def start(out: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "adseg", "predict", "--no-progress", "--device", "cpu"]
        cmd += ["-i", str(tmp_path / "in"), "-m", str(model), "--save-probabilities"]
        with open(log, "w") as err:
            return subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=err)

    def masks(out: Path) -> int:
        return sum((out / f"{c}.nii.gz").is_file() for c in cases)

    def after_masks(proc: subprocess.Popen, out: Path, k: int) -> None:
        """Wait until the run has written ``k`` more masks (0: until it first writes in
        ``out``, its checks over), or has ended."""
        stamp, goal = (out.stat().st_mtime_ns if out.exists() else None), masks(out) + k
        while proc.poll() is None:
            if (masks(out) >= goal) if k else (out.exists() and out.stat().st_mtime_ns != stamp):
                return
            time.sleep(0.001)

    reference = tmp_path / "reference"
    proc = start(reference)
    after_masks(proc, reference, 0)
    began = time.monotonic()
    after_masks(proc, reference, 1)
    first, began = time.monotonic() - began, time.monotonic()  # the first case warms up
    after_masks(proc, reference, len(cases) - 1)
    per_case = (time.monotonic() - began) / (len(cases) - 1)
    assert proc.wait(timeout=300) == 0, log.read_text()

    # kill at a random point of a random case's work: after k more masks, within a case's time
    out, rng, killed = tmp_path / "out", random.Random(20240607), 0
    for _ in range(8):
        left = len(cases) - masks(out)
        if left == 0 or killed == 4:
            break
        proc = start(out)
        k = rng.randint(0, left - 1)
        after_masks(proc, out, k)
        time.sleep(rng.uniform(0.0, per_case if k else first))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), log.read_text()
    assert killed >= 2
    assert start(out).wait(timeout=300) == 0, log.read_text()

    for case in cases:
        for name in (f"{case}.nii.gz", f"{case}_probabilities.nii.gz"):
            got, want = nib.load(out / name), nib.load(reference / name)
            np.testing.assert_array_equal(got.affine, want.affine)
            np.testing.assert_allclose(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))
        assert np.array_equal(
            np.asanyarray(nib.load(out / f"{case}.nii.gz").dataobj),
            np.asanyarray(nib.load(reference / f"{case}.nii.gz").dataobj),
        )
    rows, want = _rows(out / "predictions.csv"), _rows(reference / "predictions.csv")
    assert sorted(rows) == cases
    for case in cases:
        for key in ("model_sha256", "input_sha256", "lesion_ml"):
            assert rows[case][key] == want[case][key]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".adseg"]
    assert _snapshot(tmp_path / "in") == before
