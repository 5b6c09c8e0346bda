"""``main()``'s one place for errors the user can fix: a message, no traceback, exit status 1."""

from __future__ import annotations

import pytest

import adseg.cli
import adseg.config
from adseg.cli import main
from adseg.errors import AdsegError
from adseg.inference.modelfolder import ModelError
from adseg.training.engine import TrainingError


@pytest.fixture
def config_raises(monkeypatch):
    """Make ``adseg config`` raise the given error while reading its config."""
    monkeypatch.setattr(adseg.cli, "setup_logging", lambda verbose: None)

    def arrange(error: Exception) -> None:
        def load_config(*args, **kwargs):
            raise error

        monkeypatch.setattr(adseg.config, "load_config", load_config)

    return arrange


@pytest.mark.parametrize(
    "error, message",
    [
        (AdsegError("fix this"), "adseg config: error: fix this"),
        (ModelError("model.json: missing"), "adseg config: error: model.json: missing"),
        (TrainingError("non-finite loss"), "adseg config: training stopped: non-finite loss"),
        (ValueError("splits.json: invalid"), "adseg config: error: splits.json: invalid"),
        (FileNotFoundError("x.yaml: no such file"), "adseg config: error: x.yaml: no such file"),
    ],
)
def test_user_errors_end_with_their_message_and_status_1(config_raises, capsys, error, message):
    config_raises(error)
    assert main(["config"]) == 1
    assert capsys.readouterr().err == message + "\n"


def test_other_errors_keep_their_traceback(config_raises):
    config_raises(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["config"])
