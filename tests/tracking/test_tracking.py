"""MLflow tracking against real stores (a sqlite file, an ``mlflow server`` process), queried
with ``MlflowClient`` as a researcher's script or the UI would."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adseg import tracking
from adseg.config import deep_merge, load_config
from adseg.evaluation.cases import METRIC_COLUMNS, evaluate_fold
from adseg.evaluation.summary import summarize
from adseg.inference.modelfolder import read_fold
from adseg.io import write_tsv
from adseg.tracking import store
from adseg.training.segmentation import train_fold

ROOT = Path(__file__).resolve().parents[2]


def _config(tiny_experiment, tmp_path, uri: str, **train) -> dict:
    cfg = copy.deepcopy(tiny_experiment["config"])
    cfg = deep_merge(cfg, {"results_dir": str(tmp_path / "results"), "experiment": "tiny"})
    cfg["mlflow"]["tracking_uri"] = uri
    cfg["train"].update(train)
    return cfg


def _train(tiny_experiment, cfg, scheme, fold, resume="auto", tracker=None) -> Path:
    out = Path(cfg["results_dir"]) / cfg["experiment"] / scheme / f"fold_{fold}"
    train_fold(
        cfg,
        scheme,
        fold,
        tiny_experiment["preprocessed"],
        tiny_experiment["splits"],
        out,
        resume,
        False,
        tracker or tracking.FoldRun(cfg),
    )
    return out


def _evaluate(tiny_experiment, cfg, fold_dir: Path) -> Path:
    metrics = fold_dir / "metrics.tsv"
    rows = evaluate_fold(
        fold_dir,
        tiny_experiment["preprocessed"],
        show_progress=False,
        overlays=fold_dir / "ov",
        detection=fold_dir / "detection",
    )
    write_tsv(metrics, rows, METRIC_COLUMNS)
    files = [metrics, *sorted((fold_dir / "ov").glob("*.png"))]
    tracking.log_evaluation(fold_dir, rows, files, cfg["evaluate"])
    return metrics


def _runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("adseg.role") == "parent"]
    folds = [r for r in runs if r.data.tags.get("adseg.role") == "fold"]
    return parents, folds


def _steps(client, run_id, key) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _artifacts(client, run_id, path) -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, path or None)}


def test_settings_that_define_a_model_are_the_params_and_the_identity():
    cfg = load_config(None)
    ce = tracking.model_settings(cfg, "ce")
    assert "adversarial" not in ce and "evaluate" not in ce and "mlflow" not in ce
    assert ce["train"]["threads"] == cfg["train"]["threads"]  # a param, not the identity
    assert "adversarial" in tracking.model_settings(cfg, "hybrid")
    flat = tracking.flatten(tracking.model_settings(cfg, "hybrid"))
    assert flat["train.network.features"] == json.dumps(cfg["train"]["network"]["features"])
    assert flat["adversarial.loss"] == "nonsaturating"
    assert flat["train.amp"] == "true"
    ref = tracking.parent_ref(cfg, "ce")
    other_threads = deep_merge(
        cfg, {"train": {"threads": 7, "val_every": 3}, "evaluate": {"tta": True}}
    )
    assert tracking.parent_ref(other_threads, "ce")["config_hash"] == ref["config_hash"]
    other_d = deep_merge(cfg, {"adversarial": {"d_lr": 0.5}})
    assert tracking.parent_ref(other_d, "ce")["config_hash"] == ref["config_hash"]
    assert (
        tracking.parent_ref(other_d, "hybrid")["config_hash"]
        != (tracking.parent_ref(cfg, "hybrid")["config_hash"])
    )


def test_tracking_uri_comes_from_config_then_environment_then_results_dir(monkeypatch, tmp_path):
    cfg = load_config(None, {"results_dir": str(tmp_path)})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking.tracking_uri(cfg) == "http://example:5000"
    cfg["mlflow"]["tracking_uri"] = "sqlite:////x/y.db"
    assert tracking.tracking_uri(cfg) == "sqlite:////x/y.db"


@pytest.mark.slow
def test_schemes_are_parents_and_folds_nested_runs_with_metrics_and_artifacts(
    tiny_experiment, tmp_path
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(tiny_experiment, tmp_path, uri)
    metric_files = []
    for scheme in ("ce", "hybrid"):
        fold_dir = _train(tiny_experiment, cfg, scheme, 0)
        metric_files.append(_evaluate(tiny_experiment, cfg, fold_dir))
    exp_dir = Path(cfg["results_dir"]) / "tiny"
    summarize(metric_files, exp_dir, "tiny")
    tracking.log_summary(exp_dir, metric_files, cfg)

    client = MlflowClient(uri)
    parents, folds = _runs(client, "tiny")
    assert sorted(r.data.tags["scheme"] for r in parents) == ["ce", "hybrid"]
    assert sorted(r.info.run_name for r in folds) == ["ce fold 0", "hybrid fold 0"]
    parent_of = {r.data.tags["scheme"]: r for r in parents}
    for run in folds:
        scheme = run.data.tags["scheme"]
        parent = parent_of[scheme]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == parent.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["fold"] == "0" and tags["device"] == "cpu" and tags["host"]
        assert tags["dataset"] == "synthetic (6 patients, seed 3)"
        assert set(tags["domain"].split("+")) <= {"A", "B"}
        assert len(tags["git_commit"].removesuffix("-dirty")) == 40
        assert tags["evaluate.checkpoint"] == '"final"'
        params = run.data.params
        assert params["train.lr"] == "0.005" and params["fold"] == "0"
        assert params["train.network.features"] == "[8, 16]"
        assert ("adversarial.d_lr" in params) == (scheme == "hybrid")
        assert parent.data.params["train.lr"] == "0.005" and "fold" not in parent.data.params
        # per-epoch metrics with step = epoch; the same names for every scheme
        for key in ("train/loss_s", "train/loss_ce", "train/lr_s", "val/dice"):
            assert _steps(client, run.info.run_id, key) == [1, 2], key
        has_d = "train/loss_d" in run.data.metrics
        assert has_d == (scheme == "hybrid")
        if has_d:
            for key in ("train/d_real", "train/d_fake", "train/grad_norm_d", "train/lr_d"):
                assert _steps(client, run.info.run_id, key) == [1, 2], key
        assert 0.0 <= run.data.metrics["test/lesion/dice"] <= 1.0
        assert "test/lesion/sensitivity" in run.data.metrics
        assert "test/lesion/specificity" in run.data.metrics
        assert {"model.json", "checkpoint_final.pt", "plans.json", "config.yaml"} <= (
            _artifacts(client, run.info.run_id, "model")
        )
        assert _artifacts(client, run.info.run_id, "training") == {
            "learning_curves.png",
            "training_log.tsv",
        }
        assert _artifacts(client, run.info.run_id, "data") == {"splits.json"}
        assert "config.yaml" in _artifacts(client, run.info.run_id, "")  # the whole config
        assert "metrics.tsv" in _artifacts(client, run.info.run_id, "evaluation")
        overlays = _artifacts(client, run.info.run_id, "evaluation/overlays")
        assert overlays == {"best.png", "median.png", "worst.png"}
    # the parent: statistics over patients and folds, tests against the other scheme
    hybrid = parent_of["hybrid"].data.metrics
    assert 0.0 <= hybrid["test/lesion/dice"] <= 1.0
    assert hybrid["test/lesion/dice_n"] >= 1
    assert {"test/lesion/dice_std", "test/lesion/dice_median"} <= hybrid.keys()
    assert "test/lesion/dice_p_vs_ce" in hybrid or "test/lesion/sensitivity_p_vs_ce" in hybrid
    # the primary endpoint (PI-CAI lesion AP from the detection maps), intervals, Holm
    assert 0.0 <= hybrid["test/lesion/lesion_ap"] <= 1.0
    assert "test/lesion/lesion_ap_p_vs_ce_holm" in hybrid
    assert hybrid["test/lesion/dice_ci_low"] <= hybrid["test/lesion/dice"]
    assert hybrid["test/lesion/dice"] <= hybrid["test/lesion/dice_ci_high"]
    summary = _artifacts(client, parent_of["hybrid"].info.run_id, "summary")
    assert {"summary.md", "summary.tsv", "tests.tsv", "plots"} <= summary
    assert "config.yaml" in _artifacts(client, parent_of["hybrid"].info.run_id, "")
    # a run leads to a usable model: its model artifacts load as a fold
    run = next(r for r in folds if r.data.tags["scheme"] == "hybrid")
    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "download"))
    model = read_fold(local)
    assert model.spec["scheme"] == "hybrid"
    model.segmentor()
    assert all(j.pending() == 0 for j in tracking.journals_under(exp_dir))


@pytest.mark.slow
def test_a_rerun_resumes_its_run_or_is_a_new_run_that_says_so(tiny_experiment, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(tiny_experiment, tmp_path, uri)
    client = MlflowClient(uri)
    first_dir = _train(tiny_experiment, cfg, "ce", 1)
    (first,) = _runs(client, "tiny")[1]
    # a finished checkpoint of the same settings: resumed, the same run
    _train(tiny_experiment, cfg, "ce", 1, resume="auto")
    (again,) = _runs(client, "tiny")[1]
    assert again.info.run_id == first.info.run_id
    assert again.data.tags["adseg.resumed"] == "1"
    assert _steps(client, first.info.run_id, "train/loss_s") == [1, 2]
    # trained afresh: a new run of the same parent, and each run says which replaced which;
    # the replaced run, left RUNNING by a process that died, is marked KILLED
    tracking.current_journal(first_dir).status("RUNNING")
    _train(tiny_experiment, cfg, "ce", 1, resume="no")
    parents, folds = _runs(client, "tiny")
    assert len(parents) == 1 and len(folds) == 2
    runs = {r.info.run_id: r for r in folds}
    second = next(r for r in folds if r.info.run_id != first.info.run_id)
    assert second.data.tags["adseg.attempt"] == "2"
    assert second.data.tags["adseg.rerun_of"] == first.info.run_id
    assert runs[first.info.run_id].data.tags["adseg.superseded_by"] == second.info.run_id
    assert runs[first.info.run_id].info.status == "KILLED"
    assert second.info.status == "FINISHED"
    # changed training settings: a new parent, and the old one points to it
    changed = _config(tiny_experiment, tmp_path, uri, lr=0.002)
    _train(tiny_experiment, changed, "ce", 1, resume="auto")
    parents, folds = _runs(client, "tiny")
    assert len(parents) == 2 and len(folds) == 3
    old = next(p for p in parents if p.data.params["train.lr"] == "0.005")
    new = next(p for p in parents if p.data.params["train.lr"] == "0.002")
    assert old.data.tags["adseg.superseded_by"] == new.info.run_id
    assert new.data.tags["adseg.supersedes"] == old.info.run_id
    newest = next(r for r in folds if r.data.params["train.lr"] == "0.002")
    assert newest.data.tags["mlflow.parentRunId"] == new.info.run_id
    assert newest.data.tags["adseg.attempt"] == "1"


def _journal(tmp_path, uri, fold=0) -> tracking.Journal:
    cfg = load_config(None, {"results_dir": str(tmp_path), "experiment": "unit"})
    cfg["mlflow"]["tracking_uri"] = uri
    out = tmp_path / "unit" / "ce" / f"fold_{fold}"
    return tracking.new_fold_journal(cfg, "ce", fold, out, {"device": "cpu"})


def test_a_line_cut_short_by_a_crash_hides_no_later_event(tmp_path):
    journal = _journal(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")
    journal.metrics({"m": 1.0}, step=1)
    with open(journal.events_file, "a") as f:
        f.write('{"op": "metrics", "metr')  # the process died mid-write
    journal.metrics({"m": 3.0}, step=3)
    journal.status("FINISHED")
    assert [e["op"] for e in journal.events()] == ["metrics", "metrics", "status"]
    assert journal.flush(force=True) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'a.db'}")
    assert _steps(client, journal.run_id(), "m") == [1, 3]


def test_a_store_that_lost_the_run_gets_it_anew_and_another_store_gets_a_copy(tmp_path):
    uri, other = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    journal = _journal(tmp_path, uri)
    journal.metrics({"train/loss_s": 1.0}, step=1)
    assert journal.flush(force=True) == 0
    client = MlflowClient(uri)
    gone = journal.run_id()
    client.delete_run(gone)
    # removed for good: the run id in state.json now names nothing
    subprocess.run(
        [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri, "--run-ids", gone],
        check=True,
        capture_output=True,
    )
    journal.metrics({"train/loss_s": 0.5}, step=2)
    assert journal.flush(force=True) == 0
    assert journal.run_id() != gone
    assert _steps(client, journal.run_id(), "train/loss_s") == [1, 2]
    # a copy into another store leaves the run's own store's bookkeeping alone
    assert tracking.sync([tmp_path / "unit"], other) == (1, 2, 0)
    assert _steps(MlflowClient(other), journal.run_id(other), "train/loss_s") == [1, 2]
    assert journal.pending() == 0 and journal.run_id(other) != journal.run_id()


def test_label_names_become_metric_names_mlflow_accepts(tmp_path):
    assert tracking.metric_key("test", "NCR+NET", "dice") == "test/NCR_NET/dice"
    assert tracking.metric_key("test", "edema (ED)", "dice") == "test/edema _ED_/dice"
    journal = _journal(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")
    journal.metrics({tracking.metric_key("test", "NCR+NET", "dice"): 0.5})
    journal.metrics({"bad+name": 1.0, "good": 2.0})  # refused by MLflow: reported, skipped
    journal.metrics({"after": 3.0})
    assert journal.flush(force=True) == 0
    metrics = MlflowClient(f"sqlite:///{tmp_path / 'a.db'}").get_run(journal.run_id()).data.metrics
    assert metrics == {"test/NCR_NET/dice": 0.5, "after": 3.0}


def test_a_failing_tracking_hook_never_stops_training(tmp_path, monkeypatch, caplog):
    run = tracking.FoldRun(load_config(None))
    run.journal = _journal(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracking.Journal, "metrics", broken)
    with caplog.at_level("WARNING", logger="adseg"):
        assert run.epoch({"epoch": 1, "loss_s": 0.3}, None) is None
    assert "MLflow tracking: epoch failed (OSError: disk full)" in caplog.text


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from adseg import tracking
    from adseg.config import load_config

    folder, uri, fold, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    cfg = load_config(None, {"results_dir": str(folder), "experiment": "parallel"})
    cfg["mlflow"]["tracking_uri"] = uri
    out = folder / "parallel" / "hybrid" / f"fold_{fold}"
    time.sleep(max(0.0, start - time.time()))  # all processes start together
    journal = tracking.new_fold_journal(cfg, "hybrid", fold, out, {"device": "cpu"})
    for epoch in range(1, 21):
        journal.metrics({f"train/m{k}": epoch * 100 + k for k in range(12)}, step=epoch)
        journal.flush(force=True)
    artifact = out / "learning_curves.png"
    artifact.write_bytes(bytes(range(256)) * 40)
    journal.artifact(artifact, "training")
    journal.status("FINISHED")
    sys.exit(journal.flush(force=True))
    """
)


@pytest.mark.slow
def test_parallel_fold_jobs_log_to_one_fresh_store_without_loss_or_lock_errors(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # no database yet: its creation races too
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time() + 12  # after every interpreter has imported adseg
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), uri, str(fold), str(start)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for fold in range(6)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    assert not any("Traceback" in e or "failed" in e for e in errors), errors
    client = MlflowClient(uri)
    parents, folds = _runs(client, "parallel")
    assert len(parents) == 1
    assert sorted(int(r.data.tags["fold"]) for r in folds) == list(range(6))
    for run in folds:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        for k in (0, 11):
            history = client.get_metric_history(run.info.run_id, f"train/m{k}")
            assert sorted((m.step, m.value) for m in history) == [
                (e, e * 100 + k) for e in range(1, 21)
            ]
        assert _artifacts(client, run.info.run_id, "training") == {"learning_curves.png"}


@pytest.mark.slow
def test_training_goes_on_when_the_server_stops_and_sync_sends_the_rest(
    tiny_experiment, tmp_path, server, caplog
):
    cfg = _config(tiny_experiment, tmp_path, server.uri, epochs=4)
    tracker = tracking.FoldRun(cfg)
    commit = tracker.commit

    def commit_then_stop():
        commit()
        if tracker.epochs_logged == 1:
            server.stop()  # the server goes away mid-run, once epoch 1 is sent

    tracker.commit = commit_then_stop
    with caplog.at_level("WARNING", logger="adseg"):
        out = _train(tiny_experiment, cfg, "ce", 2, tracker=tracker)
    assert (out / "model.json").is_file()  # training went on
    journal = tracking.current_journal(out)
    assert journal.pending() > 0
    assert "events are kept" in caplog.text and "adseg mlflow-sync" in caplog.text

    exp_dir = out.parent.parent
    store._down_until.clear()
    runs, sent, pending = tracking.sync([exp_dir])
    assert (runs, sent, pending) == (1, 0, journal.pending())  # still down: nothing lost

    server.start()  # same database and artifact folder
    run_id = journal.run_id()
    client = MlflowClient(server.uri)
    assert _steps(client, run_id, "train/loss_s") == [1]  # only what was sent before the stop
    sync = [sys.executable, "-m", "adseg", "mlflow-sync", str(exp_dir), "--no-progress"]
    kept = journal.pending()
    up = subprocess.run(sync, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert f"sent {kept} events of 1 runs; 0 pending" in up.stderr, up.stderr
    assert journal.pending() == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id, "train/loss_s") == [1, 2, 3, 4]
    assert _steps(client, run_id, "val/dice") == [1, 2, 3, 4]
    assert "checkpoint_final.pt" in _artifacts(client, run_id, "model")
    # sending again changes nothing: no second run, no duplicated history
    assert tracking.sync([exp_dir], server.uri) == (1, 0, 0)
    assert len(_runs(client, "tiny")[1]) == 1
    assert _steps(client, run_id, "train/loss_s") == [1, 2, 3, 4]
