"""Config: one schema, defaults filled, unknown keys rejected with the allowed ones listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from adseg.config import ConfigError, load_config, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled():
    config = resolve_config({})
    assert config["experiment"] == "default"
    assert config["results_dir"] == "results"
    assert config["dataset"]["source"] == "synthetic"
    assert config["dataset"]["synthetic"]["n_patients"] == 40
    assert config["preprocess"]["normalization"]["default"] == "zscore-nonzero"
    assert config["folds"] == {"n": 4, "seed": 0, "stratify": ["lesion", "domain"], "file": None}
    assert config["schemes"] == ["ce", "adversarial", "hybrid"]
    assert config["mlflow"]["tracking_uri"] is None


def test_shipped_configs_are_valid(tmp_path):
    for path in sorted((ROOT / "config").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        # configs for real data name a folder the user provides; stand one in
        real = raw.get("dataset", {}).get("source", "synthetic") != "synthetic"
        config = load_config(path, {"dataset": {"path": str(tmp_path)}} if real else None)
        assert config["experiment"], path


def test_unknown_keys_list_allowed_ones():
    with pytest.raises(ConfigError) as err:
        resolve_config({"dataset": {"sorce": "msd"}, "epochs": 3})
    message = str(err.value)
    assert (
        "<top level>: unknown key(s) 'epochs'; allowed: adda, adversarial, dataset, evaluate, "
        "experiment, folds" in message
    )
    assert (
        "dataset: unknown key(s) 'sorce'; allowed: anisotropy_warning, grid_tolerance, path"
        in message
    )


def test_bad_values_are_named():
    with pytest.raises(ConfigError) as err:
        resolve_config(
            {"schemes": ["ce", "gan"], "folds": {"n": 1}, "preprocess": {"target_spacing": [1, 2]}}
        )
    message = str(err.value)
    assert "schemes.1: 'gan' is not allowed; choose from ce, dicece, adversarial, hybrid" in message
    assert "folds.n: 1 is less than the minimum of 2" in message
    assert "preprocess.target_spacing: [1, 2] is not valid" in message


def test_real_dataset_needs_an_existing_path(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path: required when dataset.source is 'msd'"):
        resolve_config({"dataset": {"source": "msd"}})
    with pytest.raises(ConfigError, match="dataset.path: folder 'nowhere' does not exist"):
        resolve_config({"dataset": {"source": "nnunet", "path": "nowhere"}}, base_dir=tmp_path)
    (tmp_path / "data").mkdir()
    config = resolve_config({"dataset": {"source": "nnunet", "path": "data"}}, base_dir=tmp_path)
    assert config["dataset"]["path"] == "data"


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"experiment": "bad name!"}))
    with pytest.raises(
        ConfigError, match=r"exp.yaml: invalid configuration:\n  experiment: 'bad name!'"
    ):
        load_config(path)
    path.write_text("experiment: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_merge_deeply(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"experiment": "x", "folds": {"n": 5, "seed": 7}}))
    config = load_config(path, {"folds": {"seed": 9}})
    assert config["folds"]["n"] == 5 and config["folds"]["seed"] == 9


def test_patient_regex_is_checked_up_front():
    with pytest.raises(ConfigError, match=r"needs a group \(\.\.\.\) for the patient id"):
        resolve_config({"dataset": {"patient_regex": "^p\\d+"}})
    with pytest.raises(ConfigError, match="is not a regular expression"):
        resolve_config({"dataset": {"patient_regex": "^(p"}})
    assert resolve_config({"dataset": {"patient_regex": "^(p\\d+)_"}})["dataset"]["patient_regex"]


def test_result_neutral_settings_are_marked_once_in_the_schema():
    from adseg.config import result_neutral, without_result_neutral

    marked = set(result_neutral())
    assert {("train", "threads"), ("train", "device"), ("preprocess", "workers")} <= marked
    assert ("train", "lr") not in marked
    config = resolve_config({})
    train = without_result_neutral(config, "train")
    assert "lr" in train and not {"threads", "workers", "device", "amp", "val_every"} & set(train)
    gan = without_result_neutral(config)["gan"]
    assert "device" not in gan and "sample_every" not in gan["synthesis"]
    assert config["train"]["threads"] == 1  # the copy left the config alone


def test_a_workflow_job_takes_result_neutral_settings_of_its_own_sections(monkeypatch):
    """A job's --set holds what it trains; how it runs comes from the workflow's config, and
    only for the sections the job was given (a job checks the whole config it runs under)."""
    from adseg.config import ENV_CONFIG

    workflow = resolve_config({"train": {"workers": 3, "device": "cpu", "epochs": 7}})
    monkeypatch.setenv(ENV_CONFIG, json.dumps(workflow))
    job = load_config(None, {"train": {"lr": 0.01}})
    assert (job["train"]["workers"], job["train"]["device"], job["train"]["lr"]) == (3, "cpu", 0.01)
    assert job["train"]["epochs"] == 40  # not neutral: only what --set gave (the default)
    cohort_job = load_config(None, {"dataset": {"source": "synthetic"}})
    assert cohort_job["train"]["workers"] == 0


def test_the_adda_switch_is_the_workflows_not_a_jobs():
    """adda.enabled needs an encoder-splitting network; a job given the adda section without
    the train section (adda-summary) must not see it, so the workflow leaves it out."""
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert 'chosen.get("adda", {}).pop("enabled", None)' in text
    with pytest.raises(ConfigError, match="adda.enabled"):
        resolve_config({"adda": {"enabled": True}})
