"""The mode-coverage study as a job per loss, a table, MLflow runs and a command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from adseg.config import resolve_config
from adseg.gan.modes import run_modes_job, summarize_modes
from adseg.preprocessing.qc import read_tsv


def modes_config(tmp_path, **modes) -> dict:
    settings = {"losses": ["nonsaturating", "wgan-gp"], "seeds": [0, 1], "steps": 30} | modes
    return resolve_config(
        {
            "experiment": "modes",
            "results_dir": str(tmp_path / "results"),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "gan": {"modes": settings},
        }
    )


def test_a_loss_job_writes_its_result_and_mlflow_runs(tmp_path):
    config = modes_config(tmp_path)
    out = tmp_path / "modes"
    summary = run_modes_job(config, "nonsaturating", out, show=False, track=True)
    result = json.loads((out / "nonsaturating" / "result.json").read_text())
    assert result["summary"] == summary and summary["seeds"] == [0, 1]
    assert [r["seed"] for r in result["seeds"]] == [0, 1]
    assert result["settings"]["steps"] == 30 and result["settings"]["lr_scale"] == 5.0
    assert summary["modes_covered"] == [r["modes_covered"] for r in result["seeds"]]
    assert (out / "nonsaturating" / "samples.png").stat().st_size > 0

    client = MlflowClient(config["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("modes").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {
        "modes-nonsaturating",
        "modes-nonsaturating seed 0",
        "modes-nonsaturating seed 1",
    }
    parent = by_name["modes-nonsaturating"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["modes/modes_covered_mean"] == summary["modes_covered_mean"]
    assert parent.data.params["gan.modes.losses"] == '["nonsaturating"]'
    child = by_name["modes-nonsaturating seed 1"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics["modes/modes_covered"] == result["seeds"][1]["modes_covered"]
    assert len(client.get_metric_history(child.info.run_id, "train/loss_d")) > 1
    assert [a.path for a in client.list_artifacts(child.info.run_id, "samples")] == [
        "samples/samples.png"
    ]


def test_the_table_gathers_every_loss_and_names_a_missing_one(tmp_path):
    config = modes_config(tmp_path, seeds=[3])
    out = tmp_path / "modes"
    for loss in ("nonsaturating", "wgan-gp"):
        run_modes_job(config, loss, out, show=False)
    table = summarize_modes(out).read_text()
    assert "| nonsaturating |" in table and "| wgan-gp |" in table
    rows = read_tsv(out / "modes.tsv")
    assert [(r["loss"], r["seed"]) for r in rows] == [("nonsaturating", "3"), ("wgan-gp", "3")]
    lines = (out / "modes.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == ["nonsaturating", "wgan-gp"]
    assert (out / "modes.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="hinge/result.json: missing"):
        summarize_modes(out, ["hinge", "wgan-gp"])


def test_command_checks_the_losses_before_training(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "adseg", "gan", "modes", "--losses", "vanilla", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "gan.modes.losses" in run.stderr and "'vanilla'" in run.stderr
    assert not any(tmp_path.iterdir())
