"""Config: one schema, defaults filled, unknown keys rejected with the allowed ones listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adseg.config import ConfigError, load_config, resolve_config, without_result_neutral

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled():
    config = resolve_config({})
    assert config["experiment"] == "default"
    assert config["results_dir"] == "results"
    assert config["dataset"]["source"] == "synthetic"
    assert config["dataset"]["synthetic"]["n_patients"] == 40
    assert config["preprocess"]["normalization"]["default"] == "zscore-nonzero"
    assert config["folds"] == {
        "n": 4,
        "seed": 0,
        "stratify": ["lesion", "domain"],
        "file": None,
        "inner_val_fraction": 0.2,
    }
    assert config["schemes"] == ["ce", "adversarial", "hybrid", "threshold"]
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
    allowed = "ce, dicece, wce, adversarial, hybrid, hybrid-frozen, threshold"
    assert f"schemes.1: 'gan' is not allowed; choose from {allowed}" in message
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


def test_the_embedded_default_writes_out_the_schema_defaults():
    """config/config.yaml and the schema agree, so `resolve_config({})` (library), `adseg
    config` (CLI) and `snakemake` (workflow) start from one set of values."""
    assert load_config(None) == resolve_config({})


def test_a_config_file_is_laid_over_the_embedded_default(tmp_path, monkeypatch):
    """Snakemake's rule, in the CLI too: mappings merge key by key, lists are replaced."""
    from adseg import config as config_module

    base = {
        "train": {"epochs": 7, "network": {"features": [4, 8]}},
        "preprocess": {"normalization": {"default": "none"}},
    }
    monkeypatch.setattr(config_module, "embedded_default", lambda: base)
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  network:\n    features: [2, 4, 8]\nschemes: [ce]\n")
    config = load_config(mine)
    assert config["train"]["epochs"] == 7  # from the default, not the schema's 30
    assert config["train"]["network"]["features"] == [2, 4, 8]
    assert config["preprocess"]["normalization"]["default"] == "none"
    assert config["schemes"] == ["ce"]


def _readme_own_data_config() -> dict:
    """The YAML example of the README's "Your own data" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own data") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```\n", 10)]
    return yaml.safe_load(block)


def test_the_readmes_own_data_config_resolves_as_the_readme_says(tmp_path, nnunet_cohort):
    """`adseg config --config` and `snakemake --configfile` resolve the README's example to the
    same values: the user's keys, the embedded default's CPU-sized network for the rest."""
    from conftest import snakemake

    raw = _readme_own_data_config()
    root = nnunet_cohort(channels=("T2w", "ADC"), name="Dataset158_Prostate")
    raw["dataset"]["path"] = str(root)
    raw["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "prostate158.yaml"
    path.write_text(yaml.safe_dump(raw))
    printed = subprocess.run(
        [sys.executable, "-m", "adseg", "config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    config = yaml.safe_load(printed.stdout)
    assert config["experiment"] == "prostate158"
    assert config["dataset"]["source"] == "nnunet"
    assert config["preprocess"]["target_spacing"] == "auto"
    assert config["preprocess"]["reference_channel"] == "T2w"
    embedded = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["train"]["network"] == {
        **resolve_config({})["train"]["network"],
        **embedded["train"]["network"],
    }
    assert config["train"]["epochs"] == embedded["train"]["epochs"]
    assert config["schemes"] == embedded["schemes"]
    # the workflow's own reading: the settings it hands the preprocessing and training jobs
    run = snakemake("--dry-run", "--printshellcmds", "--configfile", str(path), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    given = {}
    for line in run.stdout.splitlines():
        if "python -m adseg " in line and "--set '" in line:
            given.update(json.loads(line.split("--set '")[1].split("'")[0]))
    assert {"dataset", "preprocess", "train"} <= set(given)
    for section in ("dataset", "preprocess", "train"):
        expected = without_result_neutral(config, section)
        expected.pop("seeds", None)  # the workflow's list; each job gets its own train.seed
        if expected.get("fraction") == 1:  # all training patients: not passed, as before shares
            expected.pop("fraction")
        assert given[section] == expected, section
