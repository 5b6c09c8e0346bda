"""An epoch is trained and logged once, wherever a job dies: its tracking event and its
checkpoint commit together (the event is sent after the checkpoint; an event logged but not
checkpointed is dropped on resume)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adseg import tracking
from adseg.config import deep_merge
from adseg.training import engine
from adseg.training.segmentation import train_fold


def _config(tiny_experiment, tmp_path, epochs: int) -> dict:
    cfg = copy.deepcopy(tiny_experiment["config"])
    cfg = deep_merge(cfg, {"results_dir": str(tmp_path / "results"), "experiment": "once"})
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg["train"].update(epochs=epochs, val_every=1)
    return cfg


def _train(tiny_experiment, cfg, out: Path, resume: str) -> None:
    train_fold(
        cfg,
        "ce",
        0,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        resume,
        False,
        tracking.FoldRun(cfg),
    )


@pytest.mark.parametrize("dies", ["before the checkpoint", "after the checkpoint"])
def test_a_job_killed_around_an_epochs_checkpoint_logs_each_epoch_once(
    tiny_experiment, tmp_path, monkeypatch, dies
):
    cfg = _config(tiny_experiment, tmp_path, epochs=3)
    out = tmp_path / "results" / "once" / "ce" / "fold_0"
    save = engine.save_checkpoint

    def killed_at_epoch_2(obj, path):
        if len(obj["history"]) == 2 and dies == "before the checkpoint":
            raise KeyboardInterrupt  # epoch 2 is in the journal, not in a checkpoint
        save(obj, path)
        if len(obj["history"]) == 2:
            raise KeyboardInterrupt  # epoch 2 is checkpointed, its events not yet sent

    monkeypatch.setattr(engine, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_experiment, cfg, out, "no")
    monkeypatch.setattr(engine, "save_checkpoint", save)
    _train(tiny_experiment, cfg, out, "yes")

    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    run_id = tracking.current_journal(out).run_id()
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("train/loss_s", "val/dice", "train/epoch_seconds"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == [1, 2, 3], (key, steps)
