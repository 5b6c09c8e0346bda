"""The cross-validation summary in the layout of Kohl et al. 2017's table, and more.

From the per-case metric files of every (scheme, fold):

- a patient's visits are averaged (lesion counts summed), so each patient counts once;
- per scheme: mean ± std over patients pooled over the folds (Kohl's table), the median, the
  number of patients with a defined value (n), and the mean of each fold;
- paired two-sided Wilcoxon signed-rank tests between every two schemes on the patients both
  have a value for (scipy);
- a box plot per metric.

Written as ``summary.md`` (for people), ``summary.tsv`` and ``tests.tsv`` (for programs), and
``plots/<label>_<metric>.png``.
"""

from __future__ import annotations

from pathlib import Path

from adseg.evaluation.statistics import (
    DERIVED,
    KOHL_METRICS,
    cell,
    label_tables,
    per_patient,
    tests_table,
)
from adseg.io import write_text, write_tsv
from adseg.plots import box_plot
from adseg.preprocessing.qc import read_tsv
from adseg.training.schemes import SCHEMES

STAT_COLUMNS = ("label", "scheme", "metric", "fold", "n", "mean", "std", "median")
TEST_COLUMNS = ("label", "metric", "scheme_a", "scheme_b", "n", "median_diff", "p")


def summarize(
    metric_files: list[str | Path], out: str | Path, title: str, hybrid_weight: float = 0.5
) -> Path:
    """Write summary.md, summary.tsv, tests.tsv and box plots into ``out``; return summary.md."""
    out = Path(out)
    rows = [r for f in metric_files for r in read_tsv(f)]
    if not rows:
        raise ValueError("no evaluated cases in " + ", ".join(map(str, metric_files)))
    patients = per_patient(rows)
    labels = sorted({k[0] for k in patients})
    found = {k[1] for k in patients}
    unknown = sorted(found - set(SCHEMES))
    if unknown:
        raise ValueError(
            f"results of unknown scheme(s) {', '.join(unknown)}; known: {', '.join(SCHEMES)}"
        )
    schemes = [s for s in SCHEMES if s in found]
    folds = sorted({p["fold"] for p in patients.values()})
    stats, tests = [], []
    for label in labels:
        values, label_stats, label_tests = label_tables(patients, label, schemes, DERIVED, folds)
        stats += label_stats
        tests += label_tests
        for m in DERIVED:
            box_plot(
                {s: list(values[(s, m)].values()) for s in schemes},
                m,
                out / "plots" / f"{label}_{m}.png",
                f"{label}: {m} per patient",
            )
    write_tsv(out / "summary.tsv", stats, STAT_COLUMNS)
    write_tsv(out / "tests.tsv", tests, TEST_COLUMNS)
    path = out / "summary.md"
    write_text(path, _markdown(stats, tests, labels, schemes, folds, title, hybrid_weight))
    return path


def _markdown(stats, tests, labels, schemes, folds, title, hybrid_weight) -> str:
    get = {(s["label"], s["scheme"], s["metric"], str(s["fold"])): s for s in stats}
    lines = [f"# {title}", ""]
    lines.append(
        f"{len(folds)}-fold patient-level cross-validation. Mean ± std over patients, pooled "
        "over the folds (a patient's visits averaged); n = patients with a defined value. "
        "Empty-mask conventions: adseg/evaluation/metrics.py."
    )
    for label in labels:
        lines += [
            "",
            f"## {label}",
            "",
            f"| training scheme | loss | {label} DSC | sensitivity | specificity |",
            "|---|---|---|---|---|",
        ]
        for s in schemes:
            name, loss = SCHEMES[s].label, SCHEMES[s].loss.replace("λ", f"{hybrid_weight:g}")
            cells = [
                f"{cell(get[(label, s, m, 'all')])} (n={get[(label, s, m, 'all')]['n']})"
                for m in KOHL_METRICS
            ]
            lines.append(f"| {name} | {loss} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Per fold (mean; n):",
            "",
            "| scheme | metric | all | median | " + " | ".join(f"fold {f}" for f in folds) + " |",
            "|---|---|---|---|" + "---|" * len(folds),
        ]
        for s in schemes:
            for m in DERIVED:
                a = get[(label, s, m, "all")]
                per = [get[(label, s, m, str(f))] for f in folds]
                fold_cells = [f"{p['mean']:.3f}; {p['n']}" if p["n"] else "–" for p in per]
                median = "–" if not a["n"] else f"{a['median']:.3f}"
                lines.append(
                    f"| {s} | {m} | {cell(a, 3)} (n={a['n']}) | {median} | "
                    + " | ".join(fold_cells)
                    + " |"
                )
        lines += ["", "Paired Wilcoxon signed-rank tests (two-sided, same patients):", ""]
        shown = (*KOHL_METRICS, "dice_with_lesion")
        lines += tests_table([t for t in tests if t["label"] == label and t["metric"] in shown])
    lines += [
        "",
        "Box plots: plots/<label>_<metric>.png. All statistics: summary.tsv, tests.tsv.",
        "lesion_detection = detected / expert lesions per patient; lesion_fp = false "
        "positive components per patient.",
        "",
    ]
    return "\n".join(lines)
