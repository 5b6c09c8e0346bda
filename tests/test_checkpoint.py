"""Checkpoints are data, never code: a pickled payload planted in a model folder never runs,
and a file that is not an adseg checkpoint is refused with its path and the reason."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adseg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adseg.training.segmentation import train_fold


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path, keep: dict | None = None) -> None:
    with open(path, "wb") as f:
        torch.save({**(keep or {}), "payload": Payload(marker)}, f, pickle_module=pickle)


@pytest.fixture(scope="module")
def model(tiny_experiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "ce" / "fold_1"
    config = copy.deepcopy(tiny_experiment["config"])
    config["train"]["epochs"] = 1
    train_fold(
        config,
        "ce",
        1,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        show_progress=False,
    )
    return out


def _adseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adseg", *args], capture_output=True, text=True, timeout=600
    )


def test_a_payload_in_checkpoint_last_never_runs_on_resume(tiny_experiment, model, tmp_path):
    folder = tmp_path / "fold_1"
    shutil.copytree(model, folder)
    marker = tmp_path / "pwned"
    _plant(folder / "checkpoint_last.pt", marker, {"history": [], "fingerprint": "x"})
    run = _adseg(
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
        str(folder),
        "--resume",
        "auto",
        "--no-progress",
        "--set",
        json.dumps({"train": {"epochs": 1}}),
    )
    assert run.returncode == 1, run.stderr
    assert f"{folder / 'checkpoint_last.pt'}: not an adseg checkpoint" in run.stderr
    assert "Traceback" not in run.stderr
    assert not marker.exists()


def test_a_payload_in_checkpoint_final_never_runs_on_evaluate(tiny_experiment, model, tmp_path):
    folder = tmp_path / "fold_1"
    shutil.copytree(model, folder)
    marker = tmp_path / "pwned"
    weights = torch.load(model / "checkpoint_final.pt", weights_only=True)
    _plant(folder / "checkpoint_final.pt", marker, weights)
    run = _adseg(
        "evaluate",
        str(folder),
        "--preprocessed",
        str(tiny_experiment["preprocessed"]),
        "-o",
        str(tmp_path / "metrics.tsv"),
        "--no-progress",
    )
    assert run.returncode == 1, run.stderr
    assert f"{folder / 'checkpoint_final.pt'}: not an adseg checkpoint" in run.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"not a checkpoint at all", "not an adseg checkpoint"),
    ],
)
def test_foreign_or_empty_files_are_named_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "checkpoint_final.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_and_wrong_shaped_checkpoints_are_refused(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint({"trainer": {"w": torch.zeros(100, 100)}, "history": []}, path)
    assert load_checkpoint(path, required=("trainer",))["history"] == []
    with pytest.raises(CheckpointError, match="no fingerprint"):
        load_checkpoint(path, required=("trainer", "fingerprint"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not an adseg checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)
