"""What the evaluation and summary commands log: a fold's test metrics on its run, and each
scheme's pooled statistics on its parent run."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from adseg.log import logger
from adseg.tracking import registry
from adseg.tracking.journal import JOURNALS, Journal, current_journal, sync
from adseg.tracking.runs import never_fails, report_pending
from adseg.tracking.settings import tracking_config


def _nanmean(values: list[float]) -> float | None:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts: label names such as ``NCR+NET`` or ``edema (ED)`` have
    their other characters replaced by ``_``."""
    return "/".join(re.sub(r"[^\w\-. :]", "_", str(p)) for p in parts)


@never_fails
def log_evaluation(fold_dir: str | Path, rows: list[dict], files: list[Path], settings: dict):
    """A fold's test metrics (means over its held-out patients) and files on its run."""
    from adseg.evaluation.statistics import DERIVED, per_patient

    patients = per_patient(rows)
    values = {}
    for label in sorted({k[0] for k in patients}):
        mine = [v for k, v in patients.items() if k[0] == label]
        for m in DERIVED:
            values[metric_key("test", label, m)] = _nanmean([float(p[m]) for p in mine])
        values[metric_key("test", label, "n_patients")] = len(mine)
    log_fold_results(fold_dir, values, files, settings)


@never_fails
def log_fold_results(
    fold_dir: str | Path, values: dict, files: list[Path], settings: dict | None = None
):
    """Test metrics and files of an evaluation on the fold's run.

    Each evaluation of the fold is one step (``adseg.evaluations``), so a rerun with other
    ``settings`` (logged as tags) adds a point instead of a duplicate.
    """
    journal = current_journal(fold_dir)
    if journal is None:
        logger.info("%s has no MLflow run (trained without tracking); not logged", fold_dir)
        return
    step = journal.count_tag("adseg.evaluations") + 1
    tags = {f"evaluate.{k}": json.dumps(v) for k, v in (settings or {}).items()}
    journal.tags({"adseg.evaluations": step} | tags)
    journal.metrics(values, step=step)
    for path in files:
        journal.artifact(path, "evaluation/overlays" if path.suffix == ".png" else "evaluation")
    report_pending(journal.flush(force=True), journal)


@never_fails
def log_summary(
    exp_dir: str | Path,
    metric_files: list[Path],
    config: dict,
    parent_metrics: Callable[[str], dict[str, float]] | None = None,
    files: tuple[str, ...] = ("summary.md", "summary.tsv", "tests.tsv"),
    register: bool | None = None,
) -> None:
    """Each scheme's parent run: pooled statistics, fold spread, p-values and the summary files.

    Sends first whatever the experiment's fold runs still hold. ``exp_dir`` holds the
    summary ``files`` and a folder per scheme; ``parent_metrics(scheme)`` gives a parent's
    metrics (default: from the scheme table's summary.tsv and tests.tsv). ``register``: each
    scheme's fold ensemble becomes a registered model version (:mod:`adseg.tracking.registry`);
    default: for the scheme table (no ``parent_metrics`` given), whose schemes predict uses.
    """
    from adseg.preprocessing.qc import read_tsv

    exp_dir = Path(exp_dir)
    sync([Path(f).parent for f in metric_files])
    register = parent_metrics is None if register is None else register
    stats = read_tsv(exp_dir / "summary.tsv") if register or parent_metrics is None else []
    if parent_metrics is None:
        tests = read_tsv(exp_dir / "tests.tsv")

        def parent_metrics(scheme: str) -> dict[str, float]:
            return _parent_metrics(scheme, stats, tests)

    parents: dict[str, dict] = {}
    found: dict[str, dict[int, list[Path]]] = {}
    for f in metric_files:
        fold_journal = current_journal(Path(f).parent)
        if fold_journal is not None:
            ref = fold_journal.ref["parent"]
            parents.setdefault(ref["scheme"], ref)
            # a learning-curve share's models (train.fraction < 1) are no scheme's model
            if ref["config_hash"] == parents[ref["scheme"]]["config_hash"] and _full_share(f):
                by_fold = found.setdefault(ref["scheme"], {})
                by_fold.setdefault(fold_journal.ref["fold"], []).append(Path(f).parent)
    primary = config.get("evaluate", {}).get("primary", "lesion_ap")
    plans = registry.plan(stats, primary, found) if register else {}
    for scheme, ref in parents.items():
        folder = exp_dir / scheme / JOURNALS / f"parent-{ref['config_hash']}"
        if (folder / "ref.json").is_file():
            journal = Journal(folder)
        else:
            journal = Journal.create(folder, ref)
        journal.config_artifact(tracking_config(config))
        step = journal.count_tag("adseg.summaries") + 1
        journal.tags({"adseg.summaries": step})
        values = parent_metrics(scheme)
        journal.metrics(values, step=step)
        for name in files:
            journal.artifact(exp_dir / name, "summary")
        for plot in sorted((exp_dir / "plots").glob("*.png")):
            journal.artifact(plot, "summary/plots")
        if scheme in plans:
            registry.log_request(journal, plans[scheme], values)
        journal.status("FINISHED")
        report_pending(journal.flush(force=True), journal)
        if scheme in plans:
            registry.try_register(journal)


def _full_share(metric_file: str | Path) -> bool:
    """Whether the fold beside ``metric_file`` was trained on all its training patients."""
    from adseg.io import read_json

    spec = Path(metric_file).parent / "model.json"
    return not spec.is_file() or read_json(spec).get("train_fraction", 1.0) >= 1


def adda_parent_metrics(exp_dir: Path, model: str) -> dict[str, float]:
    """An ADDA model's parent metrics: per domain and label the pooled mean, std and n, the
    p-values against the other models, and the mean domain AUC over folds."""
    from adseg.evaluation.statistics import describe, number
    from adseg.preprocessing.qc import read_tsv

    values: dict[str, float] = {}
    for s in read_tsv(exp_dir / "summary.tsv"):
        if s["scheme"] == model and s["fold"] == "all":
            name = metric_key("test", s["domain"], s["label"], s["metric"])
            values |= {name: number(s["mean"]), f"{name}_std": number(s["std"])}
            values[f"{name}_n"] = float(s["n"])
    for t in read_tsv(exp_dir / "tests.tsv"):
        if model in (t["scheme_a"], t["scheme_b"]):
            other = t["scheme_b"] if t["scheme_a"] == model else t["scheme_a"]
            key = metric_key("test", t["domain"], t["label"], f"{t['metric']}_p_vs_{other}")
            values[key] = number(t["p"])
    aucs = [
        number(r["domain_auc"])
        for r in read_tsv(exp_dir / "domain_auc.tsv")
        if r["scheme"] == model
    ]
    spread = describe(aucs)
    if spread["n"]:
        values["domain_auc"] = spread["mean"]
    return {k: v for k, v in values.items() if not math.isnan(v)}


def _parent_metrics(scheme: str, stats: list[dict], tests: list[dict]) -> dict[str, float]:
    from adseg.evaluation.statistics import describe, number

    values: dict[str, float] = {}
    fold_means: dict[str, list[float]] = {}
    for s in stats:
        if s["scheme"] != scheme:
            continue
        name = metric_key("test", s["label"], s["metric"])
        if s["fold"] == "all":
            values[name] = number(s["mean"])
            values[f"{name}_std"] = number(s["std"])
            values[f"{name}_median"] = number(s["median"])
            values[f"{name}_n"] = float(s["n"])
            # the patient-bootstrap interval and the spread between training seeds
            for key in ("ci_low", "ci_high", "seed_std"):
                values[f"{name}_{key}"] = number(s.get(key, ""))
        else:
            fold_means.setdefault(name, []).append(number(s["mean"]))
    for name, means in fold_means.items():
        spread = describe(means)  # over the folds with a defined mean
        if spread["n"]:
            values[f"{name}_fold_mean"] = spread["mean"]
        if spread["n"] > 1:
            values[f"{name}_fold_std"] = spread["std"]
    for t in tests:
        if scheme in (t["scheme_a"], t["scheme_b"]):
            other = t["scheme_b"] if t["scheme_a"] == scheme else t["scheme_a"]
            key = metric_key("test", t["label"], f"{t['metric']}_p_vs_{other}")
            values[key] = number(t["p"])
            if "p_holm" in t:
                values[f"{key}_holm"] = number(t["p_holm"])
    return {k: v for k, v in values.items() if not math.isnan(v)}
