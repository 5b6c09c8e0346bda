"""The training engine on a study of its own (a linear model on random data): the loop, its
checkpoint and log, resume, fingerprints and checkpoints read as data."""

from __future__ import annotations

import pickle

import pytest
import torch

from adseg.checkpoint import CheckpointError
from adseg.training import engine
from adseg.training.engine import Loop, TrainingError

COLUMNS = ("epoch", "loss", "seconds")


class LinearStudy:
    """Least squares by SGD: small enough to run a few epochs in milliseconds."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.net = torch.nn.Linear(3, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.fail_at = fail_at

    def train_epoch(self, epoch: int, seed: int) -> dict:
        x = torch.randn(16, 3)  # drawn after the engine's reseed: the same in a resumed run
        loss = ((self.net(x) - x.sum(1, keepdim=True)) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float("nan") if epoch == self.fail_at else float(loss.detach())}

    def end_epoch(self, epoch, row, epochs):
        return []

    def check(self, history):
        bad = engine.non_finite(history[-1])
        if bad:
            raise TrainingError(f"non-finite {', '.join(bad)}")

    def message(self, row, epochs):
        return engine.epoch_line(f"epoch {row['epoch']}/{epochs}", row, [("loss", "loss")])

    def tracked_row(self, row):
        return row, None

    def checkpoint(self):
        return {"trainer": {"net": self.net.state_dict(), "opt": self.opt.state_dict()}}

    def load(self, state):
        self.net.load_state_dict(state["trainer"]["net"])
        self.opt.load_state_dict(state["trainer"]["opt"])


def _run(out, epochs, resume="no", fail_at=None):
    key = engine.fingerprint({"epochs": epochs}, [])
    _, state = engine.begin(out, "cpu", "train.device", 1, 7, resume, key)
    study = LinearStudy(fail_at)
    history = []
    if state is not None:
        study.load(state)
        history = state["history"]
    engine.clear(out, state is None, [], [engine.CHECKPOINT, engine.LOG])
    engine.run_epochs(study, Loop("linear", epochs, 7, out, key, COLUMNS), history, show=False)
    return study, history


def test_each_epoch_is_logged_and_checkpointed(tmp_path):
    study, history = _run(tmp_path, 3)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    rows = (tmp_path / engine.LOG).read_text().splitlines()
    assert rows[0].split("\t") == list(COLUMNS) and len(rows) == 4
    saved = engine.load_checkpoint(tmp_path / engine.CHECKPOINT)
    assert len(saved["history"]) == 3 and saved["fingerprint"]
    assert torch.equal(saved["trainer"]["net"]["weight"], study.net.weight.detach())


def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    straight, _ = _run(tmp_path / "straight", 4)
    _run(tmp_path / "split", 2)
    key = engine.fingerprint({"epochs": 4}, [])
    # the first two epochs' checkpoint stands for a run of 4 killed after epoch 2
    state = engine.load_checkpoint(tmp_path / "split" / engine.CHECKPOINT)
    engine.save_checkpoint({**state, "fingerprint": key}, tmp_path / "split" / engine.CHECKPOINT)
    resumed, history = _run(tmp_path / "split", 4, resume="yes")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert torch.equal(resumed.net.weight, straight.net.weight)


def test_a_failed_check_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="non-finite loss"):
        _run(tmp_path, 4, fail_at=2)
    assert len(engine.load_checkpoint(tmp_path / engine.CHECKPOINT)["history"]) == 2
    # the log has the failing epoch, for the person who looks
    assert len((tmp_path / engine.LOG).read_text().splitlines()) == 1 + 3


def test_resume_refuses_another_fingerprint_or_starts_afresh(tmp_path):
    _run(tmp_path, 1)
    other = engine.fingerprint({"epochs": 5}, [])
    with pytest.raises(ValueError, match="checkpoint from another config"):
        engine.resume_state(tmp_path, "yes", other)
    assert engine.resume_state(tmp_path, "auto", other) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        engine.resume_state(tmp_path / "none", "yes", other)


def test_fingerprint_follows_settings_and_file_contents(tmp_path):
    data = tmp_path / "case.bin"
    data.write_bytes(b"a")
    base = engine.fingerprint({"lr": 1}, [data])
    assert engine.fingerprint({"lr": 1}, [data]) == base
    assert engine.fingerprint({"lr": 2}, [data]) != base
    data.write_bytes(b"b")
    assert engine.fingerprint({"lr": 1}, [data]) != base


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_resume_reads_a_checkpoint_as_data_and_never_runs_code(tmp_path):
    marker = tmp_path / "payload-ran"
    payload = {"trainer": {}, "history": [], "fingerprint": "x", "payload": _Payload(marker)}
    torch.save(payload, tmp_path / engine.CHECKPOINT, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="not an adseg checkpoint"):
        engine.resume_state(tmp_path, "auto", "x")
    assert not marker.exists()


def test_epoch_seeds_differ_by_run_and_epoch():
    seeds = {engine.epoch_seed(s, e) for s in range(3) for e in range(100)}
    assert len(seeds) == 300
