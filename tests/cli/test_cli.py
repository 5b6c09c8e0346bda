"""The CLI as a user calls it: the real entry points, in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["synth-cohort", "validate", "preprocess", "splits", "qc", "config"]


def adseg(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_console_script_and_module_help():
    script = shutil.which("adseg")
    assert script, "the adseg console script is not installed"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out
    assert "Example:" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(command):
    run = adseg(command, "--help")
    assert run.returncode == 0
    assert "Example:\n  adseg " + command in run.stdout


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "raw"
    run = adseg("synth-cohort", out, "--n-patients", 4, "--seed", 5, "--no-progress")
    assert run.returncode == 0, run.stderr
    return out


def test_validate_preprocess_splits_qc_chain(cohort, tmp_path):
    report = tmp_path / "validation.json"
    run = adseg("validate", cohort, "--report", report, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert json.loads(report.read_text())["n_cases"] >= 4
    settings = json.dumps({"preprocess": {"target_spacing": [2.0, 2.0, 3.0]}})
    pre = tmp_path / "pre"
    run = adseg(
        "preprocess", cohort, "-o", pre, "--set", settings, "--validation", report, "--no-progress"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((pre / "plans.json").read_text())["target_spacing"] == [2.0, 2.0, 3.0]
    run = adseg("splits", pre, "-o", tmp_path / "splits.json", "--folds", 2, "--seed", 1)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("fold  test patients  cases")
    assert "inner train/val patients" in run.stdout.splitlines()[0]
    assert len(json.loads((tmp_path / "splits.json").read_text())["folds"]) == 2
    run = adseg("qc", pre, "-o", tmp_path / "qc", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "qc" / "overview.png").exists()


def test_preprocess_stops_on_a_broken_cohort_and_writes_nothing(cohort, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    victim = sorted((broken / "imagesTr").glob("*_0001.nii.gz"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    run = adseg("preprocess", broken, "-o", tmp_path / "pre", "--no-progress")
    assert run.returncode == 1
    assert victim.name in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "pre").exists()


def test_config_errors_exit_1_with_the_problem():
    run = adseg("config", "--set", '{"dataset": {"sorce": "msd"}}')
    assert run.returncode == 1
    assert "dataset: unknown key(s) 'sorce'; allowed:" in run.stderr
    run = adseg("config", "--set", "{not json")
    assert run.returncode == 1 and "--set: not valid JSON" in run.stderr
    run = adseg("config")
    assert run.returncode == 0 and "experiment: default" in run.stdout


def test_splits_rejects_a_bad_user_file(cohort, tmp_path):
    pre = tmp_path / "pre"
    settings = json.dumps({"preprocess": {"target_spacing": [3.0, 3.0, 3.0]}})
    assert (
        adseg("preprocess", cohort, "-o", pre, "--set", settings, "--no-progress").returncode == 0
    )
    given = tmp_path / "given.json"
    given.write_text(json.dumps([{"train": [], "val": ["nobody"]}]))
    run = adseg("splits", pre, "-o", tmp_path / "s.json", "--file", given)
    assert run.returncode == 1
    assert (
        "given.json: invalid splits" in run.stderr and "'nobody' is not in the cohort" in run.stderr
    )
    assert not (tmp_path / "s.json").exists()


def test_malformed_inputs_get_messages_not_tracebacks(cohort, tmp_path):
    run = adseg("config", "--set", "[1]")
    assert run.returncode == 1 and "--set: expected a JSON object" in run.stderr
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"fold0": {}}))
    run = adseg("preprocess", cohort, "-o", tmp_path / "pre", "--validation", notes)
    assert (
        run.returncode == 1 and "notes.json: not a report written by 'adseg validate'" in run.stderr
    )
    run = adseg("splits", cohort, "-o", tmp_path / "s.json")  # a raw folder, not a preprocessed one
    assert run.returncode == 1 and "no 'cases' with patient ids and label volumes" in run.stderr
    assert "Traceback" not in run.stderr
