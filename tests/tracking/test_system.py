"""System metrics on a fold's run, under MLflow's names, through the journal."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from adseg import tracking
from adseg.config import load_config
from adseg.io import write_json

NAMES = (
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/network_receive_megabytes",
)


def _job(tmp_path: Path) -> SimpleNamespace:
    """What :meth:`FoldRun.start` reads of a training job."""
    pre = tmp_path / "preprocessed"
    write_json(pre / "dataset.json", {"cases": {"c1": {"domain": "A"}, "c2": {"domain": "B"}}})
    out = tmp_path / "results" / "unit" / "ce" / "fold_0"
    out.mkdir(parents=True)
    spec = {"train_cases": ["c1"], "val_cases": ["c2"]}
    return SimpleNamespace(out=out, name="ce", fold=0, preprocessed=pre, spec=spec)


def _trained(cfg: dict, job, resumed_after: int | None, seconds: float) -> tracking.FoldRun:
    run = tracking.FoldRun(cfg)
    job.config = cfg
    run.start(job, resumed_after, "cpu", job.out / "splits.json")
    time.sleep(seconds)
    run.finish({"epochs_trained": 1, "best_val_dice": None, "best_epoch": None})
    return run


def _config(tmp_path: Path, **mlflow) -> dict:
    cfg = load_config(None, {"results_dir": str(tmp_path / "results"), "experiment": "unit"})
    cfg["mlflow"] |= {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"} | mlflow
    return cfg


def test_a_fold_run_records_the_machine_under_mlflows_names(tmp_path):
    cfg = _config(tmp_path, system_metrics_interval=0.2)
    assert load_config(None)["mlflow"]["system_metrics_interval"] == 10
    job = _job(tmp_path)
    run = _trained(cfg, job, None, 1.0)
    assert run.system is None  # stopped by finish
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    run_id = run.journal.run_id()
    metrics = client.get_run(run_id).data.metrics
    assert set(NAMES) <= metrics.keys()
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    assert metrics["system/system_memory_usage_megabytes"] > 0
    # the job's own peak, this process's; no GPU figure on a CPU
    assert 50 < metrics["train/peak_memory_mb"] < metrics["system/system_memory_usage_megabytes"]
    assert "train/peak_gpu_memory_mb" not in metrics
    steps = sorted(m.step for m in client.get_metric_history(run_id, NAMES[0]))
    assert steps == list(range(len(steps))) and len(steps) >= 3
    # resumed: the same run, and the samples go on counting
    again = _trained(cfg, job, 1, 0.5)
    assert again.journal.run_id() == run_id
    more = sorted(m.step for m in client.get_metric_history(run_id, NAMES[0]))
    assert more == list(range(len(more))) and len(more) > len(steps)


def test_system_metrics_can_be_turned_off(tmp_path):
    cfg = _config(tmp_path, system_metrics=False, system_metrics_interval=0.1)
    run = _trained(cfg, _job(tmp_path), None, 0.3)
    metrics = MlflowClient(cfg["mlflow"]["tracking_uri"]).get_run(run.journal.run_id()).data
    assert not [k for k in metrics.metrics if k.startswith("system/")]
    assert "train/epochs_trained" in metrics.metrics


def test_an_epoch_trained_again_drops_its_metrics_but_keeps_the_machines(tmp_path):
    journal = tracking.new_fold_journal(
        _config(tmp_path), "ce", 0, tmp_path / "unit" / "ce" / "fold_0", {"device": "cpu"}
    )
    journal.metrics({"train/loss_s": 1.0}, step=3)
    journal.metrics({"system/cpu_utilization_percentage": 5.0}, step=7, system=True)
    assert journal.discard_after(2) == 1
    assert [e["step"] for e in journal.events()] == [7]
    assert journal.next_system_step() == 8
