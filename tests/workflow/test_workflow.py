"""The real Snakemake workflow, end to end on the tiny config."""

from __future__ import annotations

import json
import os

import pytest
import SimpleITK as sitk
from conftest import assert_roles_disjoint, snakemake, with_msd_keys
from mlflow.tracking import MlflowClient

from adseg.preprocessing.qc import read_tsv


@pytest.mark.slow
def test_tiny_workflow_end_to_end(tmp_path):
    results = tmp_path / "results"
    args = [
        "--cores",
        "2",
        "--configfile",
        "config/tiny.yaml",
        "--config",
        f"results_dir={results}",
    ]
    # the default store: sqlite under results_dir
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    run = snakemake(*args, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    exp = results / "tiny"
    validation = json.loads((exp / "validation.json").read_text())
    assert not [p for p in validation["problems"] if p["level"] == "error"]
    dataset = json.loads((exp / "preprocessed" / "dataset.json").read_text())
    n_cases = dataset["numTraining"]
    assert n_cases >= 8
    assert len(list((exp / "preprocessed" / "imagesTr").glob("*.nii.gz"))) == 3 * n_cases
    plans = json.loads((exp / "preprocessed" / "plans.json").read_text())
    assert plans["target_spacing"] == [2.0, 2.0, 3.0]
    assert plans["channel_names"] == ["T2w", "ADC", "DWI"]
    splits = json.loads((exp / "splits.json").read_text())
    assert len(splits["folds"]) == 2
    assert sorted(c for f in splits["folds"] for c in f["val"]) == sorted(dataset["cases"])
    assert (exp / "qc" / "overview.png").stat().st_size > 10_000
    assert len(list((exp / "qc" / "cases").glob("*.png"))) == n_cases
    for rule in ("synth_cohort", "validate_cohort", "preprocess", "splits", "qc", "summarize"):
        assert (exp / "logs" / f"{rule}.log").exists(), rule
    for scheme in ("ce", "adversarial", "hybrid"):
        for fold in range(2):
            folder = exp / scheme / f"fold_{fold}"
            spec = json.loads((folder / "model.json").read_text())
            assert (spec["scheme"], spec["fold"], spec["epochs_trained"]) == (scheme, fold, 2)
            # selected on inner validation patients, tested on the held-out ones, disjoint
            entry = splits["folds"][fold]
            assert sorted(spec["test_cases"]) == sorted(entry["val"])
            assert sorted(spec["val_cases"]) == sorted(entry["inner_val"])
            assert_roles_disjoint(spec, dataset)
            metrics = (folder / "metrics.tsv").read_text().splitlines()
            assert len(metrics) == 1 + len(splits["folds"][fold]["val"])
            log = (exp / "logs" / f"train_{scheme}_fold_{fold}.log").read_text()
            assert "epoch 2/2" in log
    summary = (exp / "summary.md").read_text()
    for name in ("| cross-entropy | L_mce |", "| adversarial | L_S & L_D |", "| hybrid |"):
        assert name in summary
    assert (exp / "plots" / "lesion_dice.png").is_file()
    assert f"results table in {exp / 'summary.md'}" in run.stdout + run.stderr
    # MLflow: 6 fold jobs, 2 at a time, into one store; each scheme a parent of its folds
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = {r.data.tags["scheme"]: r for r in runs if r.data.tags["adseg.role"] == "parent"}
    folds = [r for r in runs if r.data.tags["adseg.role"] == "fold"]
    assert sorted(parents) == ["adversarial", "ce", "hybrid", "threshold"] and len(folds) == 8
    for run_ in folds:
        parent = parents[run_.data.tags["scheme"]]
        assert run_.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run_.info.status == "FINISHED" and "test/lesion/dice" in run_.data.metrics
        if run_.data.tags["scheme"] != "threshold":  # a rule is fitted, not trained by epochs
            assert len(client.get_metric_history(run_.info.run_id, "train/loss_s")) == 2
        # params: the workflow's whole config, though the job got only its sections
        assert run_.data.params["dataset.synthetic.n_patients"] == "8"
    assert parents["hybrid"].info.status == "FINISHED"
    assert "test/lesion/dice_p_vs_ce" in parents["hybrid"].data.metrics
    again = snakemake(*args, "--dry-run")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # the small-data study on top: the shares are trained, the full share is the run's own
    curve_args = [*args[:3], "config/tiny.yaml", "config/learning-curve.yaml", *args[4:]]
    curve = snakemake(*curve_args, env=env)
    assert curve.returncode == 0, curve.stderr[-3000:]
    assert "rule train:" in curve.stderr + curve.stdout
    assert "run=fold_" not in curve.stdout + curve.stderr  # no full-share job again
    schemes = ("ce", "adversarial", "hybrid", "threshold")
    table = read_tsv(exp / "learning_curve" / "learning_curve.tsv")
    assert {(r["scheme"], float(r["fraction"])) for r in table} == {
        (s, f) for s in schemes for f in (0.25, 0.5, 1.0)
    }
    for scheme in schemes:
        for fold in range(2):
            specs = [
                json.loads((exp / scheme / run / f"fold_{fold}" / "model.json").read_text())
                for run in ("frac_25", "frac_50", ".")
            ]
            trains = [set(s["train_cases"]) for s in specs]
            assert trains[0] <= trains[1] <= trains[2] and trains[0]  # nested shares
            assert {json.dumps([s["val_cases"], s["test_cases"]]) for s in specs} == {
                json.dumps([specs[2]["val_cases"], specs[2]["test_cases"]])
            }
            assert [s.get("train_fraction", 1.0) for s in specs] == [0.25, 0.5, 1.0]
    assert (exp / "learning_curve" / "learning_curve.png").stat().st_size > 10_000
    assert "| cross-entropy |" in (exp / "learning_curve" / "learning_curve.md").read_text()
    # an MLflow parent per scheme and share, its folds nested in it
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    names = sorted(r.info.run_name for r in runs if r.data.tags["adseg.role"] == "parent")
    assert "hybrid (25 % training patients)" in names and "hybrid" in names, names
    assert len(names) == 3 * len(schemes), names

    # the HTML report: one self-contained file with the tables and figures
    report = tmp_path / "report.html"
    made = snakemake(*curve_args, "--report", str(report), env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    html = report.read_text()
    for text in ("Primary endpoint", "Quality control", "Training curves", "Overlays"):
        assert text in html, text
    assert "learning curve" in html.lower()
    assert 'src="http' not in html  # nothing to fetch: self-contained


def test_workflow_rejects_unknown_config_keys():
    run = snakemake("--cores", "1", "--dry-run", "--config", "epochs=3", timeout=120)
    assert run.returncode != 0
    assert (
        "unknown key(s) 'epochs'; allowed: adda, adversarial, dataset, evaluate, experiment"
        in run.stdout + run.stderr
    )


def test_workflow_lint_is_clean():
    run = snakemake("--lint", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def one_epoch_config(tmp_path, experiment: str, dataset: dict, folds: dict):
    """A config file for a real cohort: the ce scheme, one epoch of a tiny 2-D U-Net."""
    config = tmp_path / f"{experiment}.yaml"
    settings = {
        "experiment": experiment,
        "results_dir": str(tmp_path / "results"),
        "dataset": dataset,
        "preprocess": {"target_spacing": [1.2, 1.2, 3.0]},
        "folds": folds,
        "schemes": ["ce"],
        "train": {
            "network": {"features": [4, 8]},
            "patch_size": [4, 4],
            "batch_size": 2,
            "samples_per_case": 1,
            "epochs": 1,
        },
    }
    config.write_text(json.dumps(settings))
    return config


@pytest.mark.slow
def test_workflow_on_a_decathlon_task_with_given_splits(msd_cohort, tmp_path):
    root = msd_cohort(case_ids=[f"prostate_{i:02d}" for i in range(4)])
    given = tmp_path / "splits_final.json"
    cases = [f"prostate_{i:02d}" for i in range(4)]
    folds = [{"train": [c for c in cases if c != v], "val": [v]} for v in cases]
    given.write_text(json.dumps(folds))
    config = one_epoch_config(
        tmp_path, "msd", {"source": "msd", "path": str(root)}, {"n": 4, "file": str(given)}
    )
    exp = tmp_path / "results" / "msd"
    # up to one evaluated fold: enough to see a real cohort with two labels through training
    target = exp / "ce" / "fold_0" / "metrics.tsv"
    # (targets before --configfile, which takes several values)
    run = snakemake(str(target), str(exp / "qc"), "--cores", "2", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (exp / "raw").exists()  # a real cohort is read in place
    splits = json.loads((exp / "splits.json").read_text())
    assert [f["val"] for f in splits["folds"]] == [[c] for c in cases]
    plans = json.loads((exp / "preprocessed" / "plans.json").read_text())
    assert plans["channel_names"] == ["T2", "ADC"] and plans["labels"]["TZ"] == 2
    # two foreground labels: one metrics row per held-out case and label
    metrics = (exp / "ce" / "fold_0" / "metrics.tsv").read_text().splitlines()
    assert [line.split("\t")[6] for line in metrics[1:]] == ["PZ", "TZ"]
    # a label fixed in place makes the stages that read it out of date
    label = root / "labelsTr" / "prostate_02.nii.gz"
    image = sitk.ReadImage(str(label))
    image[0, 0, 0] = 1
    sitk.WriteImage(image, str(label))
    again = snakemake("--cores", "1", "--configfile", str(config), "--dry-run")
    assert again.returncode == 0
    assert "validate_cohort" in again.stdout and "preprocess" in again.stdout


def test_workflow_reports_cohort_errors_in_the_log(nnunet_cohort, tmp_path):
    root = nnunet_cohort(case_ids=("a", "b", "c", "d"))
    (root / "imagesTr" / "b_0001.nii.gz").unlink()
    results = tmp_path / "results"
    run = snakemake(
        "--cores",
        "1",
        "--config",
        "dataset={source: nnunet, path: " + str(root) + "}",
        f"results_dir={results}",
        timeout=300,
    )
    assert run.returncode != 0
    log = (results / "default" / "logs" / "validate_cohort.log").read_text()
    assert "case 'b' lacks channel 1 (ADC): b_0001.nii.gz" in log
    assert not (results / "default" / "preprocessed").exists()


@pytest.mark.slow
def test_workflow_on_a_cohort_whose_dataset_json_fits_both_layouts(nnunet_cohort, tmp_path):
    """A converted nnU-Net folder that also carries MSD's keys, read as nnU-Net: every stage
    after preprocessing reads the cases preprocessing recorded and never detects the layout
    again (auto-detection would read it as MSD, with case ids ``<case>_0000``)."""
    cases = [f"case_{i:03d}" for i in range(4)]
    root = nnunet_cohort(case_ids=cases)
    with_msd_keys(root)
    config = one_epoch_config(
        tmp_path, "mixed", {"source": "nnunet", "path": str(root)}, {"n": 2, "stratify": []}
    )
    exp = tmp_path / "results" / "mixed"
    target = exp / "ce" / "fold_0" / "metrics.tsv"
    run = snakemake(str(target), "--cores", "2", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    log = (exp / "logs" / "validate_cohort.log").read_text()
    assert "layout: nnU-Net v2, as requested (dataset.source: nnunet)" in log
    assert "would also fit Medical Segmentation Decathlon" in log
    held_out = json.loads((exp / "splits.json").read_text())["folds"][0]["val"]
    rows = target.read_text().splitlines()
    # a row per held-out case and foreground label (lesion, zone), under nnU-Net's case ids
    assert sorted(line.split("\t")[3] for line in rows[1:]) == sorted(2 * held_out)
    assert set(held_out) <= set(cases)
