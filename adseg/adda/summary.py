"""The ADDA study's table: source-only, ADDA (feature level, output space) and the target
oracle on the held-out patients of every fold, by domain, with paired tests and the
domain classifier's AUC before and after adaptation.

From the per-case metric files of ``adseg evaluate`` (every held-out case of a fold, both
domains) and the ``domain_auc.json`` of each adapted fold. Patients are summarised as in
:mod:`adseg.evaluation.summary`, with :mod:`adseg.evaluation.statistics` (visits averaged,
mean ± std over patients pooled over the folds).

Written as ``summary.md``, ``summary.tsv`` (``domain`` column added), ``tests.tsv``,
``domain_auc.tsv`` and ``plots/<domain>_<label>_<metric>.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from adseg.evaluation.html import write_html_twin
from adseg.evaluation.statistics import (
    DERIVED,
    KOHL_METRICS,
    cell,
    describe,
    label_tables,
    per_patient,
    tests_table,
)
from adseg.io import write_text, write_tsv
from adseg.plots import box_plot
from adseg.preprocessing.qc import read_tsv
from adseg.training.schemes import ADDA_MODELS

MODEL_NAMES = {
    "source-only": ("source only", "{source} labelled"),
    "adda-feature": ("ADDA, feature level", "{source} labelled + {target} unlabelled"),
    "adda-output": ("ADDA, output space", "{source} labelled + {target} unlabelled"),
    "oracle": ("target oracle (upper bound)", "{target} labelled"),
}
STAT_COLUMNS = ("domain", "label", "scheme", "metric", "fold", "n", "mean", "std", "median")
TEST_COLUMNS = ("domain", "label", "metric", "scheme_a", "scheme_b", "n", "median_diff", "p")
AUC_COLUMNS = ("scheme", "fold", "domain_auc")


def read_aucs(auc_files: list[str | Path]) -> list[dict]:
    """Domain AUC per (model, fold): ``before`` of an adapted fold is the source-only model's
    (M_s on both domains), ``after`` the adapted model's."""
    rows, before = [], {}
    for f in auc_files:
        path = Path(f)
        data = json.loads(path.read_text())
        model, fold = path.parent.parent.name, int(path.parent.name.removeprefix("fold_"))
        if data.get("after") is not None:
            rows.append({"scheme": model, "fold": fold, "domain_auc": data["after"]})
        if data.get("before") is not None:
            before[fold] = data["before"]  # the same M_s in every variant of a fold
    rows += [{"scheme": "source-only", "fold": k, "domain_auc": v} for k, v in before.items()]
    return sorted(rows, key=lambda r: (ADDA_MODELS.index(r["scheme"]), r["fold"]))


def summarize_adda(
    metric_files: list[str | Path],
    auc_files: list[str | Path],
    out: str | Path,
    source: str,
    target: str,
    title: str,
) -> Path:
    """Write the ADDA study's files into ``out`` (``<experiment>/adda``); return summary.md."""
    out = Path(out)
    rows = [r for f in metric_files for r in read_tsv(f)]
    if not rows:
        raise ValueError("no evaluated cases in " + ", ".join(map(str, metric_files)))
    unknown = sorted({r["scheme"] for r in rows} - set(ADDA_MODELS))
    if unknown:
        raise ValueError(f"not models of the ADDA study: {', '.join(unknown)}")
    domains = [d for d in (target, source) if any(r["domain"] == d for r in rows)]
    models = [m for m in ADDA_MODELS if any(r["scheme"] == m for r in rows)]
    folds = sorted({int(r["fold"]) for r in rows})
    stats, tests = [], []
    labels = sorted({r["label"] for r in rows})
    for domain in domains:
        patients = per_patient([r for r in rows if r["domain"] == domain])
        for label in labels:
            values, label_stats, label_tests = label_tables(patients, label, models, DERIVED, folds)
            stats += [{"domain": domain} | s for s in label_stats]
            tests += [{"domain": domain} | t for t in label_tests]
            for m in KOHL_METRICS:
                box_plot(
                    {s: list(values[(s, m)].values()) for s in models},
                    m,
                    out / "plots" / f"{domain}_{label}_{m}.png",
                    f"{label} on domain {domain}: {m} per patient",
                )
    aucs = read_aucs(auc_files)
    write_tsv(out / "summary.tsv", stats, STAT_COLUMNS)
    write_tsv(out / "tests.tsv", tests, TEST_COLUMNS)
    write_tsv(out / "domain_auc.tsv", aucs, AUC_COLUMNS)
    path = out / "summary.md"
    text = _markdown(stats, tests, aucs, labels, models, domains, folds, source, target, title)
    write_text(path, text)
    write_html_twin(path)  # for the Snakemake report
    return path


def auc_stats(aucs: list[dict], model: str) -> dict:
    """Mean ± std of a model's domain AUC over the folds."""
    return describe([r["domain_auc"] for r in aucs if r["scheme"] == model])


def _markdown(stats, tests, aucs, labels, models, domains, folds, source, target, title) -> str:
    get = {(s["domain"], s["label"], s["scheme"], s["metric"], str(s["fold"])): s for s in stats}
    lines = [f"# {title}", ""]
    lines.append(
        f"{len(folds)}-fold patient-level cross-validation; in each fold the models train on "
        f"the training patients (labelled {source}, and for ADDA unlabelled {target}) and are "
        f"tested on the held-out patients of both domains. Target labels are used only here. "
        "Mean ± std over patients pooled over the folds; n = patients with a defined value."
    )

    def pooled(domain, label, model, metric):
        s = get.get((domain, label, model, metric, "all"))
        return "–" if s is None else f"{cell(s)} (n={s['n']})"

    for label in labels:
        head = f"| model | trained on | {label} DSC | sensitivity | specificity | domain AUC |"
        lines += [
            "",
            f"## {label} on the target domain {target}",
            "",
            head,
            "|---|---|---|---|---|---|",
        ]
        for m in models:
            name, data = MODEL_NAMES[m]
            a = auc_stats(aucs, m)
            auc = "–" if not a["n"] else cell(a)
            metrics = " | ".join(pooled(target, label, m, k) for k in KOHL_METRICS)
            lines.append(
                f"| {name} | {data.format(source=source, target=target)} | {metrics} | {auc} |"
            )
        lines += [
            "",
            "Domain AUC: a logistic-regression domain classifier on the encoder's bottleneck "
            f"features, fitted on the fold's training patients and scored on its held-out ones "
            f"({source} features from the source encoder, {target} features from the model's "
            "encoder); 0.5 = the domains are indistinguishable. Mean ± std over folds.",
            "",
            "Per domain (mean ± std; n):",
            "",
            "| model | domain | DSC | sensitivity | specificity | DSC, patients with a lesion |",
            "|---|---|---|---|---|---|",
        ]
        for m in models:
            for d in domains:
                cells = [pooled(d, label, m, k) for k in (*KOHL_METRICS, "dice_with_lesion")]
                lines.append(f"| {m} | {d} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Per fold, target domain (mean DSC; n):",
            "",
            "| model | " + " | ".join(f"fold {f}" for f in folds) + " |",
            "|---|" + "---|" * len(folds),
        ]
        for m in models:
            per = [get.get((target, label, m, "dice", str(f))) for f in folds]
            lines.append(
                f"| {m} | "
                + " | ".join(f"{p['mean']:.3f}; {p['n']}" if p and p["n"] else "–" for p in per)
                + " |"
            )
        lines += [
            "",
            f"Paired Wilcoxon signed-rank tests on the {target} patients (two-sided):",
            "",
        ]
        lines += tests_table(
            [
                t
                for t in tests
                if t["domain"] == target and t["label"] == label and t["metric"] in KOHL_METRICS
            ]
        )
    lines += [
        "",
        "Box plots: plots/<domain>_<label>_<metric>.png. All statistics: summary.tsv, "
        "tests.tsv, domain_auc.tsv.",
        "",
    ]
    return "\n".join(lines)
