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

import itertools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from adseg.io import write_text, write_tsv
from adseg.plots import box_plot
from adseg.preprocessing.qc import read_tsv

SCHEME_NAMES = {
    "ce": ("cross-entropy", "L_mce"),
    "dicece": ("Dice + cross-entropy", "L_dice + L_mce"),
    "adversarial": ("adversarial", "L_S & L_D"),
    "hybrid": ("hybrid", "λ·L_mce + L_S & L_D"),
}
KOHL_METRICS = ("dice", "sensitivity", "specificity")
SUMMARY_METRICS = ("dice", "sensitivity", "specificity", "precision", "hd95_mm", "volume_pred_ml")
COUNTS = ("lesion_tp", "lesion_fn", "lesion_fp")
# per-patient values summarised: the metrics plus Dice on patients with a lesion and lesion-wise
# detection rate and false positives
DERIVED = (
    "dice",
    "dice_with_lesion",
    *SUMMARY_METRICS[1:],
    "lesion_detection",
    "lesion_fp",
)
STAT_COLUMNS = ("label", "scheme", "metric", "fold", "n", "mean", "std", "median")
TEST_COLUMNS = ("label", "metric", "scheme_a", "scheme_b", "n", "median_diff", "p")


def _num(v: str) -> float:
    return float(v) if v not in ("", "nan") else math.nan


def per_patient(rows: list[dict]) -> dict[tuple, dict]:
    """(label, scheme, patient) → metrics averaged over the patient's visits, and its fold."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["scheme"], r["patient_id"])].append(r)
    out = {}
    for key, visits in groups.items():
        agg = {"fold": int(visits[0]["fold"])}
        for m in SUMMARY_METRICS:
            values = [_num(v[m]) for v in visits]
            defined = [x for x in values if not math.isnan(x)]
            agg[m] = float(np.mean(defined)) if defined else math.nan
        for m in COUNTS:
            agg[m] = sum(int(_num(v[m])) for v in visits)
        # Dice over patients with an expert lesion only: lesion-free patients score 1 or 0 by
        # convention, which can dominate the mean
        with_lesion = [_num(v["dice"]) for v in visits if _num(v["volume_true_ml"]) > 0]
        agg["dice_with_lesion"] = float(np.mean(with_lesion)) if with_lesion else math.nan
        tp, fn = agg["lesion_tp"], agg["lesion_fn"]
        agg["lesion_detection"] = tp / (tp + fn) if tp + fn else math.nan
        out[key] = agg
    return out


def _stats(values: list[float]) -> dict:
    x = np.array([v for v in values if not math.isnan(v)], float)
    if not len(x):
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan}
    std = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return {"n": len(x), "mean": float(x.mean()), "std": std, "median": float(np.median(x))}


def paired_test(a: dict[str, float], b: dict[str, float]) -> dict:
    """Two-sided Wilcoxon signed-rank test on the patients where both values are defined."""
    common = sorted(p for p in a.keys() & b.keys() if not (math.isnan(a[p]) or math.isnan(b[p])))
    x = np.array([a[p] for p in common])
    y = np.array([b[p] for p in common])
    diff = x - y
    if len(common) < 2 or not np.any(diff):
        p = math.nan if len(common) < 2 else 1.0
    else:
        p = float(wilcoxon(x, y).pvalue)
    median = float(np.median(diff)) if len(common) else math.nan
    return {"n": len(common), "median_diff": median, "p": p}


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
    schemes = [s for s in SCHEME_NAMES if any(k[1] == s for k in patients)]
    folds = sorted({p["fold"] for p in patients.values()})
    metrics = DERIVED
    stats, tests = [], []
    for label in labels:
        values = {
            (s, m): {k[2]: float(v[m]) for k, v in patients.items() if k[:2] == (label, s)}
            for s in schemes
            for m in metrics
        }
        fold_of = {k[2]: v["fold"] for k, v in patients.items() if k[0] == label}
        for (s, m), by_patient in values.items():
            stats.append(
                {"label": label, "scheme": s, "metric": m, "fold": "all"}
                | _stats(list(by_patient.values()))
            )
            for f in folds:
                in_fold = [v for p, v in by_patient.items() if fold_of[p] == f]
                stats.append(
                    {"label": label, "scheme": s, "metric": m, "fold": f} | _stats(in_fold)
                )
        for m in metrics:
            for a, b in itertools.combinations(schemes, 2):
                tests.append(
                    {"label": label, "metric": m, "scheme_a": a, "scheme_b": b}
                    | paired_test(values[(a, m)], values[(b, m)])
                )
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


def _cell(s: dict, digits: int = 2) -> str:
    if s["n"] == 0:
        return "–"
    std = "–" if math.isnan(s["std"]) else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std}"


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
            name, loss = SCHEME_NAMES[s]
            loss = loss.replace("λ", f"{hybrid_weight:g}")
            cells = [
                f"{_cell(get[(label, s, m, 'all')])} (n={get[(label, s, m, 'all')]['n']})"
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
                    f"| {s} | {m} | {_cell(a, 3)} (n={a['n']}) | {median} | "
                    + " | ".join(fold_cells)
                    + " |"
                )
        lines += [
            "",
            "Paired Wilcoxon signed-rank tests (two-sided, same patients):",
            "",
            "| metric | A | B | n pairs | median A − B | p |",
            "|---|---|---|---|---|---|",
        ]
        for t in tests:
            if t["label"] != label or t["metric"] not in (*KOHL_METRICS, "dice_with_lesion"):
                continue
            p = "–" if math.isnan(t["p"]) else f"{t['p']:.3g}"
            diff = "–" if math.isnan(t["median_diff"]) else f"{t['median_diff']:+.3f}"
            lines.append(
                f"| {t['metric']} | {t['scheme_a']} | {t['scheme_b']} | {t['n']} | {diff} | {p} |"
            )
    lines += [
        "",
        "Box plots: plots/<label>_<metric>.png. All statistics: summary.tsv, tests.tsv.",
        "lesion_detection = detected / expert lesions per patient; lesion_fp = false "
        "positive components per patient.",
        "",
    ]
    return "\n".join(lines)
