"""The workflow on a real Slurm cluster, through the profile users run on theirs.

These tests need a running cluster: ``.ci/slurm-cluster start`` makes a single-node one on
this machine (CI does), with its config where every Slurm command looks. Without one they
are skipped.
Jobs log to an ``mlflow server`` on 127.0.0.1 over HTTP, as cluster nodes log to a team's.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import snakemake
from mlflow.tracking import MlflowClient

from adseg import tracking

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "workflow/profiles/slurm"
# a test cluster answers at once; status checks every few seconds instead of the profile's
FAST_POLLING = [
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "3",
    "--latency-wait",
    "5",
]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        run = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return False
    return run.returncode == 0 and bool(run.stdout.strip())


CLUSTER_UP = _cluster_up()
if not CLUSTER_UP and os.environ.get("ADSEG_REQUIRE_SLURM"):
    # CI started a cluster: a skip would hide that it is not there
    raise RuntimeError("ADSEG_REQUIRE_SLURM is set, but no Slurm cluster answers sinfo")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not CLUSTER_UP,
        reason="no Slurm cluster answers sinfo (start one: .ci/slurm-cluster start)",
    ),
]


def slurm_snakemake(*args: str) -> subprocess.CompletedProcess:
    """snakemake with the tracking store of each test's config, not the environment's."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return snakemake(*args, timeout=1500, env=env)


def slurm_jobs(run: subprocess.CompletedProcess) -> list[int]:
    """The Slurm job ids of a run (a resubmission is a new one), from the executor's log."""
    found = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", run.stderr)
    return [int(slurm_id) for slurm_id in found]


def slurm_records(job_ids) -> dict[int, dict[str, str]]:
    """Slurm's own record of each job (finished ones stay for MinJobAge): state, GPU
    request, rule (the executor puts it in the job's comment)."""
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "job"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    wanted, jobs = set(job_ids), {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if int(fields["JobId"]) not in wanted:
            continue
        jobs[int(fields["JobId"])] = {
            "state": fields["JobState"],
            "gpus": fields.get("TresPerJob", ""),
            "rule": fields.get("Comment", ""),
        }
    return jobs


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def tiny_run(results: Path, settings: dict, *extra: str) -> subprocess.CompletedProcess:
    """config/tiny.yaml into ``results``, with ``settings`` laid over it."""
    overlay = results.parent / f"{results.name}-overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results_dir": str(results), **settings}))
    return slurm_snakemake("--configfile", "config/tiny.yaml", str(overlay), *extra)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The tiny workflow run locally: ADSEG_LOCAL_TINY_RUN names one CI already made."""
    given = os.environ.get("ADSEG_LOCAL_TINY_RUN")
    if given:
        return Path(given)
    results = tmp_path_factory.mktemp("local") / "results"
    run = tiny_run(results, {"mlflow": {"enabled": False}}, "--cores", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    return results / "tiny"


def test_tiny_workflow_runs_as_slurm_jobs_logs_over_http_and_matches_a_local_run(
    tmp_path, server, local_run
):
    results = tmp_path / "results"
    logs = tmp_path / "slurm_logs"
    run = tiny_run(
        results,
        {"mlflow": {"tracking_uri": server.uri}},
        "--profile",
        PROFILE,
        "--jobs",
        "4",
        "--slurm-logdir",
        str(logs),
        *FAST_POLLING,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    exp = results / "tiny"

    # every job of the workflow was a Slurm job: 5 preparation jobs, a train and an evaluate
    # job per scheme and fold, 1 summary (the target rules run nothing)
    tiny = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    schemes, models = len(tiny["schemes"]), len(tiny["schemes"]) * tiny["folds"]["n"]
    submitted = slurm_jobs(run)
    assert len(submitted) == 5 + models + models + 1, run.stderr[-4000:]
    jobs = slurm_records(submitted)
    assert set(jobs) == set(submitted)
    assert {j["state"] for j in jobs.values()} == {"COMPLETED"}
    rules = [re.fullmatch(r"rule_(.+?)(_wildcards_.*)?", j["rule"]).group(1) for j in jobs.values()]
    assert sorted(set(rules)) == [
        "evaluate",
        "preprocess",
        "qc",
        "splits",
        "summarize",
        "synth_cohort",
        "train",
        "validate_cohort",
    ]
    # gpu=1 in a rule became a GPU request; rules without it asked for none
    for job in jobs.values():
        wants_gpu = job["rule"].startswith(("rule_train_", "rule_evaluate_"))
        assert job["gpus"] == ("gres:gpu:1" if wants_gpu else ""), job
    # ... and Slurm gave each such job a GPU of the node (simulated: torch sees no CUDA)
    train_log = (exp / "logs" / "train_hybrid_fold_0.log").read_text()
    assert re.search(r"running on cpu although CUDA_VISIBLE_DEVICES=\d", train_log), train_log
    assert len(list(logs.rglob("*.log"))) == len(submitted)

    # the same files as the local run: cohort, preprocessing, folds, models' metrics
    assert filecmp.cmp(exp / "splits.json", local_run / "splits.json", shallow=False)
    pre, local_pre = exp / "preprocessed", local_run / "preprocessed"
    names = sorted(p.relative_to(pre) for p in pre.rglob("*.nii.gz"))
    assert names == sorted(p.relative_to(local_pre) for p in local_pre.rglob("*.nii.gz"))
    mismatch = filecmp.cmpfiles(pre, local_pre, [str(n) for n in names], shallow=False)[1]
    assert not mismatch
    for scheme in ("ce", "adversarial", "hybrid"):
        for fold in (0, 1):
            here = exp / scheme / f"fold_{fold}"
            there = local_run / scheme / f"fold_{fold}"
            logged = [
                {k: v for k, v in row.items() if k != "seconds"}
                for row in read_tsv(here / "training_log.tsv")
            ]
            assert logged == [
                {k: v for k, v in row.items() if k != "seconds"}
                for row in read_tsv(there / "training_log.tsv")
            ], (scheme, fold)
            assert read_tsv(here / "metrics.tsv") == read_tsv(there / "metrics.tsv")
    assert read_tsv(exp / "summary.tsv") == read_tsv(local_run / "summary.tsv")

    # the jobs on the nodes logged to the server: a parent per scheme, a run per fold, the
    # models uploaded through the server into its artifact store
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    roles = sorted(r.data.tags["adseg.role"] for r in runs)
    assert roles == ["fold"] * models + ["parent"] * schemes
    uploaded = list((server.folder / "artifacts").rglob("checkpoint_final.pt"))
    assert len([p for p in uploaded if p.parent.name == "model"]) == models  # the fold runs'
    # and each scheme's fold ensemble on its parent, the registered version's source
    assert len([p for p in uploaded if "ensemble" in p.parts]) == models
    # nothing waited in the fold jobs' journals: every event reached the server from the nodes
    journals, sent, pending = tracking.sync([exp])
    assert journals >= 6 and (sent, pending) == (0, 0)


def test_a_training_job_killed_at_its_time_limit_resumes_from_its_checkpoint(tmp_path):
    """Slurm ends a job at its time limit (SIGTERM, then SIGKILL); the profile resubmits it
    and `adseg train --resume auto` continues after the last finished epoch."""
    results = tmp_path / "results"
    # more than a minute of training: fold 0 fits on its inner training patients only (2-3
    # of the tiny cohort's), so 500 epochs no longer outlasted the one-minute limit
    epochs = 1500
    target = results / "tiny" / "ce" / "fold_0" / "model.json"
    run = tiny_run(
        results,
        {"mlflow": {"enabled": False}, "train": {"epochs": epochs}},
        "--profile",
        PROFILE,
        "--set-resources",
        "train:runtime=1",
        "--retries",
        "6",
        "--slurm-logdir",
        str(tmp_path / "slurm_logs"),
        *FAST_POLLING,
        "--",
        str(target),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    train_jobs = {
        j: info
        for j, info in slurm_records(slurm_jobs(run)).items()
        if info["rule"].startswith("rule_train_")
    }
    states = [train_jobs[j]["state"] for j in sorted(train_jobs)]
    # killed at the limit at least once, then finished by a resubmission
    assert "TIMEOUT" in states and states[-1] == "COMPLETED", states
    log = (results / "tiny" / "logs" / "train_ce_fold_0.log").read_text()
    resumed = [int(n) for n in re.findall(r"resuming ce fold 0 after epoch (\d+)", log)]
    assert resumed and all(n > 0 for n in resumed), log[-3000:]
    # no epoch was trained twice into the history: 1..epochs, once each
    history = read_tsv(target.parent / "training_log.tsv")
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))
    spec = json.loads(target.read_text())
    assert spec["fold"] == 0
