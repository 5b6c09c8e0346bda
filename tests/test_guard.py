"""The output guard: outputs apart from inputs, foreign folders refused, adseg's marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adseg.guard import (
    MARKER,
    OutputError,
    check_file,
    check_output,
    claim,
    foreign,
    holds_files,
    only_names,
    owned,
    within,
    writing,
)


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    raw = tmp_path / "data" / "raw"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "imagesTr" / "a_0000.nii.gz").write_bytes(b"image")
    (raw / "dataset.json").write_text("{}")
    return raw


def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused(cohort):
    with pytest.raises(OutputError, match=r"raw: the output folder is the input folder .*raw"):
        check_output(cohort, [cohort], replaces=True)
    parent = cohort.parent
    with pytest.raises(OutputError, match="the output folder contains the input folder"):
        check_output(parent, [cohort], overwrite=True)
    with pytest.raises(OutputError, match="the output folder lies inside the input folder"):
        check_output(cohort / "imagesTr" / "new", [cohort])
    config = cohort.parent / "config.yaml"
    config.write_text("x: 1\n")
    with pytest.raises(OutputError, match="contains the input file .*config.yaml"):
        check_output(parent, [None, config])
    # beside an input, not in it: fine
    assert check_output(parent / "pre", [cohort, None]) == (parent / "pre").resolve()


def test_a_symlinked_alias_of_an_input_is_the_input(cohort):
    alias = cohort.parent / "alias"
    alias.symlink_to(cohort, target_is_directory=True)
    with pytest.raises(OutputError, match="alias: the output folder is the input folder"):
        check_output(alias, [cohort])


def test_a_file_is_not_an_output_folder(tmp_path):
    path = tmp_path / "results"
    path.write_text("not a folder")
    with pytest.raises(OutputError, match="results: exists and is not a folder"):
        check_output(path, [])


def test_a_folder_of_anyone_elses_needs_overwrite_and_is_never_replaced(tmp_path):
    out = tmp_path / "shared"
    (out / "empty" / "deeper").mkdir(parents=True)
    assert not holds_files(out)
    check_output(out, [], replaces=True)  # only empty folders: nothing to lose
    (out / "notes.txt").write_text("mine")
    assert holds_files(out) and not owned(out)
    with pytest.raises(
        OutputError, match="shared: a folder that adseg did not create.*--overwrite"
    ):
        check_output(out, [])
    assert check_output(out, [], overwrite=True) == out.resolve()
    with pytest.raises(OutputError, match="replaces its whole output folder"):
        check_output(out, [], overwrite=True, replaces=True)
    assert foreign(out) == ["notes.txt"]


def test_an_adseg_folder_is_known_by_its_marker_or_its_own_files(tmp_path):
    marked = claim(tmp_path / "marked", "qc")
    info = json.loads((marked / MARKER).read_text())
    assert info["command"] == "qc" and info["foreign"] == []
    (marked / "overview.png").write_bytes(b"png")
    assert owned(marked)
    check_output(marked, [], replaces=True)
    # written before the marker existed: recognised by a file only adseg writes
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "plans.json").write_text("{}")
    (legacy / "imagesTr").mkdir()
    assert owned(legacy) and foreign(legacy) == []
    check_output(legacy, [], replaces=True)
    # or by the dataset.json of a cohort adseg wrote
    cohort = tmp_path / "raw"
    cohort.mkdir()
    (cohort / "dataset.json").write_text(json.dumps({"name": "adseg-synthetic-prostate"}))
    assert owned(cohort)
    (cohort / "dataset.json").write_text(json.dumps({"name": "Prostate"}))
    assert not owned(cohort)
    with pytest.raises(OutputError, match="adseg did not create"):
        check_output(cohort, [], replaces=True)


def test_a_marker_keeps_what_was_there_before_adseg_wrote(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "empty").mkdir()
    claim(out, "train")  # after --overwrite
    assert json.loads((out / MARKER).read_text())["foreign"] == ["notes.txt"]
    (out / "plans.json").write_text("{}")
    assert owned(out)
    check_output(out, [])  # adseg's to write into again, without --overwrite
    with pytest.raises(OutputError, match=r"holds files adseg did not write \(notes.txt\)"):
        check_output(out, [], replaces=True)
    (out / "notes.txt").unlink()
    check_output(out, [], replaces=True)
    # a second claim leaves the marker as it is
    claim(out, "adda", before=["x"])
    assert json.loads((out / MARKER).read_text())["command"] == "train"


def test_an_output_file_is_neither_an_input_nor_inside_one(cohort, tmp_path):
    with pytest.raises(OutputError, match="the output file is the input file"):
        check_file(cohort / "dataset.json", [cohort / "dataset.json"])
    with pytest.raises(OutputError, match="the output file lies inside the input folder"):
        check_file(cohort / "splits.json", [cohort])
    with pytest.raises(OutputError, match="raw: a folder; give the path of the file"):
        check_file(cohort, [])
    assert check_file(tmp_path / "splits.json", [cohort]) == (tmp_path / "splits.json").resolve()


def test_writing_marks_a_new_folder_only_once_the_command_made_it(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), writing(out, "train", []):
        raise RuntimeError("bad input, before any file")
    assert not out.exists()
    with pytest.raises(KeyboardInterrupt), writing(out, "train", []):
        out.mkdir()
        (out / "config.yaml").write_text("")
        raise KeyboardInterrupt  # stopped: the rerun resumes in a folder it knows
    assert owned(out) and foreign(out) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    with writing(existing, "gan modes", []) as target:
        assert (target / MARKER).is_file()  # claimed before any work


def test_within_and_only_names(tmp_path):
    study = tmp_path / "exp"
    metrics = [study / "ce" / "fold_0" / "metrics.tsv", study / "ce" / "fold_1" / "metrics.tsv"]
    assert within(metrics, study) and not within([], study)
    assert not within([*metrics, tmp_path / "other.tsv"], study)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "sample_0000.nii.gz").write_bytes(b"")
    (samples / "samples.png").write_bytes(b"")
    assert only_names(samples, ("sample_*.nii.gz", "samples.png"))
    (samples / "mine.nii.gz").write_bytes(b"")
    assert not only_names(samples, ("sample_*.nii.gz", "samples.png"))
