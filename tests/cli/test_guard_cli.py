"""No command runs over its inputs or deletes what adseg did not write: the issue's cases,
through the real ``adseg`` command, each leaving every input byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAIN

from adseg.guard import MARKER


def adseg(*args, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adseg", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        umask=umask,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file (its SHA-256) and folder under ``root``, and ``root`` itself."""
    found = {".": "folder"}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        found[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return found


def refused(run: subprocess.CompletedProcess, folder: Path) -> None:
    assert run.returncode == 1, run.stderr
    assert "refused" in run.stderr and str(folder) in run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Path]:
    """``data/raw`` (a synthetic cohort) beside ``data/notes.txt``; ``results/pre`` and
    ``results/splits.json`` made from it."""
    root = tmp_path_factory.mktemp("guard")
    raw, results = root / "data" / "raw", root / "results"
    run = adseg("synth-cohort", raw, "--n-patients", 4, "--seed", 5)
    assert run.returncode == 0, run.stderr
    (root / "data" / "notes.txt").write_text("the scanner protocol, by hand")
    settings = json.dumps({"preprocess": {"target_spacing": [2.0, 2.0, 3.0]}})
    run = adseg("preprocess", raw, "-o", results / "pre", "--set", settings)
    assert run.returncode == 0, run.stderr
    run = adseg("splits", results / "pre", "-o", results / "splits.json", "--folds", 2)
    assert run.returncode == 0, run.stderr
    return {"data": root / "data", "raw": raw, "pre": results / "pre", "results": results}


def test_preprocess_onto_its_own_cohort_is_refused(study):
    before = tree(study["data"])
    run = adseg("preprocess", study["raw"], "-o", study["raw"])
    refused(run, study["raw"])
    assert "the output folder is the input folder" in run.stderr
    assert tree(study["data"]) == before


def test_preprocess_into_the_cohorts_parent_is_refused(study):
    before = tree(study["data"])
    run = adseg("preprocess", study["raw"], "-o", study["data"])
    refused(run, study["data"])
    assert "the output folder contains the input folder" in run.stderr
    assert tree(study["data"]) == before
    assert (study["data"] / "notes.txt").read_text() == "the scanner protocol, by hand"


def test_synth_cohort_onto_a_folder_of_a_users_files_is_refused(tmp_path):
    mine = tmp_path / "mine"
    (mine / "scans").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "scans" / "a.nii.gz").write_bytes(b"\x1f\x8b not really")
    before = tree(mine)
    run = adseg("synth-cohort", mine, "--n-patients", 1)
    refused(run, mine)
    assert "adseg did not create" in run.stderr
    assert tree(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left


def test_train_into_the_preprocessed_folder_is_refused(study):
    before, raw = tree(study["results"]), tree(study["raw"])
    run = adseg(
        "train",
        "--scheme",
        "ce",
        "--fold",
        0,
        "--preprocessed",
        study["pre"],
        "--splits",
        study["results"] / "splits.json",
        "-o",
        study["pre"],
        "--set",
        json.dumps(TINY_TRAIN),
    )
    refused(run, study["pre"])
    assert "the output folder is the input folder" in run.stderr
    assert tree(study["results"]) == before and tree(study["raw"]) == raw


def test_files_are_not_written_into_or_over_inputs(study):
    before, raw = tree(study["results"]), tree(study["raw"])
    run = adseg("splits", study["pre"], "-o", study["pre"] / "splits.json")
    refused(run, study["pre"] / "splits.json")
    assert "the output file lies inside the input folder" in run.stderr
    run = adseg("validate", study["raw"], "--report", study["raw"] / "dataset.json")
    refused(run, study["raw"] / "dataset.json")
    run = adseg("qc", study["pre"], "-o", study["pre"] / "qc")
    refused(run, study["pre"] / "qc")
    assert tree(study["results"]) == before and tree(study["raw"]) == raw


def test_overwrite_writes_into_a_foreign_folder_and_keeps_its_files(study, tmp_path):
    shared = tmp_path / "shared"
    (shared / "samples").mkdir(parents=True)
    (shared / "notes.txt").write_text("mine")
    (shared / "samples" / "keep.png").write_bytes(b"png")
    mine = tree(shared)
    args = ["train", "--scheme", "ce", "--fold", 0, "--preprocessed", study["pre"]]
    args += ["--splits", study["results"] / "splits.json", "-o", shared]
    args += ["--set", json.dumps({**TINY_TRAIN, "train": {**TINY_TRAIN["train"], "epochs": 1}})]
    inputs = tree(study["results"]), tree(study["raw"])
    run = adseg(*args)
    refused(run, shared)
    assert "pass --overwrite" in run.stderr and tree(shared) == mine
    run = adseg(*args, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert (shared / "model.json").is_file()
    now = tree(shared)
    assert {k: now[k] for k in mine} == mine  # the user's files, byte for byte
    assert json.loads((shared / MARKER).read_text())["foreign"] == ["notes.txt", "samples"]
    # the model's files are never an evaluation's output
    run = adseg("evaluate", shared, "--preprocessed", study["pre"], "-o", shared / "model.json")
    refused(run, shared / "model.json")
    assert "the output file is the input file" in run.stderr
    # adseg writes here now, but a command that replaces its whole folder still refuses it
    run = adseg("qc", study["pre"], "-o", shared)
    refused(run, shared)
    assert "holds files adseg did not write (notes.txt, samples)" in run.stderr
    now = tree(shared)
    assert {k: now[k] for k in mine} == mine
    assert (tree(study["results"]), tree(study["raw"])) == inputs


def test_a_rerun_replaces_adseg_own_output_with_the_users_umask(study, tmp_path):
    out = tmp_path / "qc"
    for _ in range(2):  # the second run replaces the folder the first one marked
        run = adseg("qc", study["pre"], "-o", out, umask=0o002)
        assert run.returncode == 0, run.stderr
    assert (out / MARKER).is_file() and (out / "overview.png").is_file()
    # group-shared results: what adseg writes is as readable and writable as umask 002 says
    for path in (out, out / "cases"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o775, path
    for path in (out / "overview.png", out / MARKER, *(out / "cases").iterdir()):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o664, path


def test_summarize_writes_beside_the_results_it_tabulates_and_nowhere_foreign(tmp_path):
    from adseg.evaluation.cases import METRIC_COLUMNS
    from adseg.io import write_tsv

    exp = tmp_path / "exp"  # as the workflow leaves it: logs and more beside the models
    (exp / "logs").mkdir(parents=True)
    (exp / "logs" / "train.log").write_text("log")
    metrics = []
    for scheme in ("ce", "hybrid"):
        path = exp / scheme / "fold_0" / "metrics.tsv"
        rows = [
            {
                **dict.fromkeys(METRIC_COLUMNS, 0.5),
                "scheme": scheme,
                "fold": 0,
                "case_id": f"c{i}",
                "patient_id": f"P{i}",
                "domain": "A",
                "label": "lesion",
                **{k: int(k == "lesion_tp") for k in ("lesion_tp", "lesion_fn", "lesion_fp")},
            }
            for i in range(4)
        ]
        write_tsv(path, rows, METRIC_COLUMNS)
        metrics.append(path)
    inputs = tree(exp)
    # hand-written metrics have no detection maps: a per-patient primary endpoint
    dice = ("--set", '{"evaluate": {"primary": "dice"}}')
    run = adseg("summarize", *metrics, "-o", exp, *dice)
    assert run.returncode == 0, run.stderr
    assert (exp / "summary.md").is_file()
    now = tree(exp)
    assert {k: now[k] for k in inputs} == inputs
    elsewhere = tmp_path / "documents"
    elsewhere.mkdir()
    (elsewhere / "summary.md").write_text("my own summary")
    run = adseg("summarize", *metrics, "-o", elsewhere, *dice)
    refused(run, elsewhere)
    assert (elsewhere / "summary.md").read_text() == "my own summary"
    run = adseg("summarize", *metrics, "-o", metrics[0].parent.parent, *dice)  # not all inside
    refused(run, metrics[0].parent.parent)
