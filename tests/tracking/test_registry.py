"""The model registry against real sqlite stores: each scheme's fold ensemble a registered
model version, the champion alias, fetching a version back as a model folder predict reads."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from adseg import tracking
from adseg.checkpoint import load_checkpoint, save_checkpoint
from adseg.config import load_config
from adseg.evaluation.summary import STAT_COLUMNS, TEST_COLUMNS
from adseg.inference.modelfolder import FORMAT, FORMAT_VERSION, read_model
from adseg.io import write_json, write_tsv
from adseg.preprocessing.case import Plan
from adseg.tracking.fetch import RECORD
from adseg.tracking.registry import DIGEST_TAG, REQUEST
from adseg.training.networks import build_segmentor

NETWORK = {"name": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    net = build_segmentor(**NETWORK, features=[4, 8])
    save_checkpoint({"segmentor": net.state_dict()}, folder / "checkpoint_final.pt")


def _fold(cfg: dict, scheme: str, fold: int, seed: int = 0) -> Path:
    """A complete model folder with a fold run (nothing trained: weights drawn from ``seed``)."""
    out = Path(cfg["results_dir"]) / cfg["experiment"] / scheme / f"fold_{fold}"
    out.mkdir(parents=True)
    spec = {"format": FORMAT, "format_version": FORMAT_VERSION, "scheme": scheme, "fold": fold}
    write_json(out / "model.json", spec | {"network": NETWORK | {"features": [4, 8]}})
    plan = Plan(["T2w"], {"background": 0, "lesion": 1}, 0, "RAS", [1.0, 1.0, 3.0], ["zscore"])
    write_json(out / "plans.json", plan.to_dict())
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    _weights(out, seed)
    (out / "training_log.tsv").write_text("epoch\n1\n")  # not part of the ensemble
    tracking.new_fold_journal(cfg, scheme, fold, out, {"device": "cpu"})
    (out / "metrics.tsv").write_text("case\n")
    return out / "metrics.tsv"


def _summary(exp_dir: Path, ap: dict[str, float]) -> None:
    """summary.tsv and tests.tsv with each scheme's lesion AP (the primary endpoint)."""
    rows = []
    for scheme, value in ap.items():
        for metric, mean in (("lesion_ap", value), ("dice", 0.5)):
            for fold, n in (("all", 4), (0, 2), (1, 2)):
                rows.append(
                    {"label": "lesion", "scheme": scheme, "metric": metric, "fold": fold}
                    | {"n": n, "mean": mean, "std": 0.1, "median": mean, "n_seeds": 1}
                )
    write_tsv(exp_dir / "summary.tsv", rows, STAT_COLUMNS)
    write_tsv(exp_dir / "tests.tsv", [], TEST_COLUMNS)
    (exp_dir / "summary.md").write_text("# tiny\n")


@pytest.fixture
def experiment(tmp_path):
    """Schemes ce and hybrid, two folds each, tracked to a sqlite store in ``tmp_path``."""
    cfg = load_config(None, {"results_dir": str(tmp_path / "results"), "experiment": "unit"})
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = [_fold(cfg, s, k, seed=k) for s in ("ce", "hybrid") for k in (0, 1)]
    return cfg, files, Path(cfg["results_dir"]) / "unit"


def _versions(client: MlflowClient, name: str) -> list:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _aliases(client: MlflowClient) -> dict[str, dict]:
    return {m.name: dict(m.aliases) for m in client.search_registered_models()}


def test_each_scheme_is_a_registered_model_and_the_best_is_the_champion(experiment):
    cfg, files, exp_dir = experiment
    _summary(exp_dir, {"ce": 0.4, "hybrid": 0.6})
    tracking.log_summary(exp_dir, files, cfg)
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    assert _aliases(client) == {"adseg-unit-ce": {}, "adseg-unit-hybrid": {"champion": 1}}
    (version,) = _versions(client, "adseg-unit-hybrid")
    parent = client.get_run(version.run_id)
    assert parent.data.tags["adseg.role"] == "parent" and parent.data.tags["scheme"] == "hybrid"
    assert version.source.startswith(parent.info.artifact_uri + "/ensemble/")
    tags = version.tags
    assert tags["experiment"] == "unit" and tags["scheme"] == "hybrid"
    assert tags["settings_hash"] == parent.data.tags["adseg.config_hash"]
    assert tags["git_commit"] == parent.data.tags["git_commit"]
    assert tags["n_folds"] == "2" and tags["folds"] == "0,1"
    assert (tags["primary_endpoint"], tags["primary_label"]) == ("lesion_ap", "lesion")
    assert float(tags["primary_value"]) == 0.6
    # the parent's summary metrics, as tags: a version has no metrics of its own
    for key, value in parent.data.metrics.items():
        assert float(tags[f"metric.{key}"]) == value, key
    assert parent.data.metrics["test/lesion/lesion_ap"] == 0.6
    model = client.get_registered_model("adseg-unit-hybrid")
    assert model.tags["scheme"] == "hybrid" and model.tags[DIGEST_TAG] == tags[DIGEST_TAG]
    # the version's files are the ensemble predict reads, and nothing else of the folds
    digest = tags[DIGEST_TAG]
    listed = [a.path for a in client.list_artifacts(version.run_id, "ensemble")]
    assert listed == [f"ensemble/{digest}"]
    folds = client.list_artifacts(version.run_id, f"ensemble/{digest}")
    assert [a.path.rsplit("/", 1)[-1] for a in folds] == ["fold_0", "fold_1"]
    fold0 = client.list_artifacts(version.run_id, f"ensemble/{digest}/fold_0")
    fold0 = {a.path.rsplit("/", 1)[-1] for a in fold0}
    assert fold0 == {"model.json", "plans.json", "config.yaml", "checkpoint_final.pt"}


def test_a_rerun_reuses_the_version_and_a_changed_model_is_a_new_one(experiment, tmp_path):
    cfg, files, exp_dir = experiment
    uri = cfg["mlflow"]["tracking_uri"]
    client = MlflowClient(uri)
    _summary(exp_dir, {"ce": 0.4, "hybrid": 0.6})
    tracking.log_summary(exp_dir, files, cfg)
    tracking.log_summary(exp_dir, files, cfg)  # the same models: the same versions
    assert [len(_versions(client, f"adseg-unit-{s}")) for s in ("ce", "hybrid")] == [1, 1]
    # hybrid's fold 1 trained again: a new version, and the alias moves to it
    _weights(exp_dir / "hybrid" / "fold_1", seed=7)
    tracking.log_summary(exp_dir, files, cfg)
    first, second = _versions(client, "adseg-unit-hybrid")
    assert first.tags[DIGEST_TAG] != second.tags[DIGEST_TAG]
    assert _aliases(client)["adseg-unit-hybrid"] == {"champion": 2}
    assert len(_versions(client, "adseg-unit-ce")) == 1
    # the first version still points at its own files
    old = tracking.fetch_model("models:/adseg-unit-hybrid/1", uri, tmp_path / "cache")
    new = tracking.fetch_model("models:/adseg-unit-hybrid@champion", uri, tmp_path / "cache")
    assert (old.name, new.name) == ("1", "2")
    a, b = (load_checkpoint(f / "fold_1" / "checkpoint_final.pt") for f in (old, new))
    assert not torch.equal(*(next(iter(x["segmentor"].values())) for x in (a, b)))
    # ce now best on the primary endpoint: the alias goes over to it
    _summary(exp_dir, {"ce": 0.7, "hybrid": 0.6})
    tracking.log_summary(exp_dir, files, cfg)
    assert _aliases(client) == {"adseg-unit-ce": {"champion": 1}, "adseg-unit-hybrid": {}}
    # an undefined primary endpoint never wins: hybrid's NaN leaves ce the champion
    _summary(exp_dir, {"ce": 0.7, "hybrid": float("nan")})
    tracking.log_summary(exp_dir, files, cfg)
    assert _aliases(client)["adseg-unit-ce"] == {"champion": 1}


def test_a_fetched_model_is_downloaded_once_and_loads_as_a_model_folder(experiment, tmp_path):
    cfg, files, exp_dir = experiment
    _summary(exp_dir, {"ce": 0.4, "hybrid": 0.6})
    tracking.log_summary(exp_dir, files, cfg)
    uri, cache = cfg["mlflow"]["tracking_uri"], tmp_path / "cache"
    folder = tracking.fetch_model("models:/adseg-unit-hybrid@champion", uri, cache)
    assert folder == cache / "adseg-unit-hybrid" / "1"
    models = read_model(folder)
    assert [m.spec["fold"] for m in models] == [0, 1]
    for m in models:
        m.segmentor()
        assert not (m.folder / "training_log.tsv").exists()
    mine = folder / "fold_0" / "note.txt"
    mine.write_text("still here")  # a second download would replace the folder
    assert tracking.fetch_model("models:/adseg-unit-hybrid/1", uri, cache) == folder
    assert mine.read_text() == "still here" and (folder / RECORD).is_file()
    # a version cached here is used as it is while the store cannot be reached
    offline = f"http://127.0.0.1:{_free_port()}"
    assert tracking.fetch_model("models:/adseg-unit-hybrid/1", offline, cache) == folder
    with pytest.raises(tracking.RegistryError, match="cannot be reached"):
        tracking.fetch_model("models:/adseg-unit-hybrid@champion", offline, cache)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".1.") and p.is_dir()]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "models:/adseg-unit-hybrid@nope",
            "has no alias 'nope'; it has versions 1; aliases champion (version 1)",
        ),
        ("models:/adseg-unit-hybrid/9", "has no version 9"),
        ("models:/adseg-unit-other@champion", "no registered model 'adseg-unit-other'"),
        ("runs:/abc/model", "give models:/<name>@<alias>"),
    ],
)
def test_an_unknown_model_alias_or_version_is_a_clear_error(experiment, tmp_path, uri, message):
    cfg, files, exp_dir = experiment
    _summary(exp_dir, {"ce": 0.4, "hybrid": 0.6})
    tracking.log_summary(exp_dir, files, cfg)
    with pytest.raises(tracking.RegistryError) as err:
        tracking.fetch_model(uri, cfg["mlflow"]["tracking_uri"], tmp_path / "cache")
    assert message in str(err.value)


def test_a_store_that_cannot_be_reached_is_a_clear_error(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(tracking.RegistryError, match="no MLflow store at"):
        tracking.fetch_model("models:/m@champion", missing, tmp_path / "cache")
    assert not (tmp_path / "none.db").exists()


def test_an_unreachable_store_leaves_the_request_and_mlflow_sync_registers(tmp_path, caplog):
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store's folder should be")
    cfg = load_config(None, {"results_dir": str(tmp_path / "results"), "experiment": "unit"})
    cfg["mlflow"]["tracking_uri"] = uri = f"sqlite:///{blocked / 'mlflow.db'}"
    files = [_fold(cfg, s, k, seed=k) for s in ("ce", "hybrid") for k in (0, 1)]
    exp_dir = Path(cfg["results_dir"]) / "unit"
    _summary(exp_dir, {"ce": 0.4, "hybrid": 0.6})
    with caplog.at_level("WARNING", logger="adseg"):
        tracking.log_summary(exp_dir, files, cfg)  # goes on
    assert "MLflow model adseg-unit-hybrid not registered yet" in caplog.text
    requests = sorted(exp_dir.glob(f"*/tracking/*/{REQUEST}"))
    assert [p.parents[2].name for p in requests] == ["ce", "hybrid"]
    blocked.unlink()  # the store is back
    sync = subprocess.run(
        [sys.executable, "-m", "adseg", "mlflow-sync", str(exp_dir)],
        capture_output=True,
        text=True,
    )
    assert sync.returncode == 0, sync.stderr
    client = MlflowClient(uri)
    assert _aliases(client) == {"adseg-unit-ce": {}, "adseg-unit-hybrid": {"champion": 1}}
    (version,) = _versions(client, "adseg-unit-hybrid")
    local = tracking.fetch_model("models:/adseg-unit-hybrid@champion", uri, tmp_path / "c")
    assert len(read_model(local)) == 2
    assert version.tags["primary_value"] == "0.6"
    assert tracking.register_pending([exp_dir]) == (2, 0)  # done: nothing made again
    assert len(_versions(client, "adseg-unit-hybrid")) == 1
