"""A store that cannot be reached: unforced sends wait for it, and it is reported once."""

from __future__ import annotations

import socket

from adseg import tracking
from adseg.config import load_config
from adseg.tracking import journal as journal_module
from adseg.tracking import store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_that_failed_is_waited_for_and_reported_once(tmp_path, monkeypatch, caplog):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cfg = load_config(None, {"results_dir": str(tmp_path), "experiment": "unit"})
    cfg["mlflow"]["tracking_uri"] = uri
    out = tmp_path / "unit" / "ce" / "fold_0"
    journal = tracking.new_fold_journal(cfg, "ce", 0, out, {"device": "cpu"})
    journal.metrics({"m": 1.0}, step=1)
    with caplog.at_level("WARNING", logger="adseg"):
        assert journal.flush(force=True) == 1
        assert store.backing_off(uri)

        def not_now(*args):
            raise AssertionError("an unforced send tried a store that failed lately")

        with monkeypatch.context() as m:
            m.setattr(journal_module, "store_for", not_now)
            assert journal.flush() == 1
        assert journal.flush(force=True) == 1  # forced: tried again
    assert caplog.text.count(f"MLflow tracking at {uri} failed") == 1
    assert journal.pending() == 1
    store.note_success(uri)
    assert not store.backing_off(uri)
