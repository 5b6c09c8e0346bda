"""The statistics and table pieces the study summaries share.

Patients count once (:func:`per_patient` averages a patient's visits); a set of per-patient
values is summarised by :func:`describe` (n, mean, std, median) and two sets are compared by
:func:`paired_test` (two-sided Wilcoxon signed-rank test on the patients both have). Used by
:mod:`adseg.evaluation.summary`, :mod:`adseg.adda.summary`, :mod:`adseg.gan.summary` and the
MLflow runs of :mod:`adseg.tracking`, so the tables and the runs show the same numbers.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
from scipy.stats import wilcoxon

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


def number(v: str) -> float:
    """A TSV cell as a float; an empty cell or ``nan`` is NaN."""
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
            values = [number(v[m]) for v in visits]
            defined = [x for x in values if not math.isnan(x)]
            agg[m] = float(np.mean(defined)) if defined else math.nan
        for m in COUNTS:
            agg[m] = sum(int(number(v[m])) for v in visits)
        # Dice over patients with an expert lesion only: lesion-free patients score 1 or 0 by
        # convention, which can dominate the mean
        with_lesion = [number(v["dice"]) for v in visits if number(v["volume_true_ml"]) > 0]
        agg["dice_with_lesion"] = float(np.mean(with_lesion)) if with_lesion else math.nan
        tp, fn = agg["lesion_tp"], agg["lesion_fn"]
        agg["lesion_detection"] = tp / (tp + fn) if tp + fn else math.nan
        out[key] = agg
    return out


def describe(values: list[float]) -> dict:
    """n, mean, std (ddof 1) and median of the defined values (NaN where there are too few)."""
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


def label_tables(
    patients: dict[tuple, dict], label: str, schemes: list[str], metrics, folds: list[int]
) -> tuple[dict, list[dict], list[dict]]:
    """One label's tables from :func:`per_patient`'s values: the values by (scheme, metric)
    (patient → value), their :func:`describe` rows per fold (``all``: pooled over the folds)
    and the :func:`paired_test` rows between every two schemes."""
    values = {
        (s, m): {k[2]: float(v[m]) for k, v in patients.items() if k[:2] == (label, s)}
        for s in schemes
        for m in metrics
    }
    fold_of = {k[2]: v["fold"] for k, v in patients.items() if k[0] == label}
    stats = []
    for (s, m), by_patient in values.items():
        key = {"label": label, "scheme": s, "metric": m}
        stats.append(key | {"fold": "all"} | describe(list(by_patient.values())))
        for f in folds:
            in_fold = [v for p, v in by_patient.items() if fold_of[p] == f]
            stats.append(key | {"fold": f} | describe(in_fold))
    tests = [
        {"label": label, "metric": m, "scheme_a": a, "scheme_b": b}
        | paired_test(values[(a, m)], values[(b, m)])
        for m in metrics
        for a, b in itertools.combinations(schemes, 2)
    ]
    return values, stats, tests


def cell(s: dict, digits: int = 2) -> str:
    """``mean ± std`` of a :func:`describe` row; ``–`` where nothing is defined."""
    if s["n"] == 0:
        return "–"
    std = "–" if math.isnan(s["std"]) else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std}"


def tests_table(tests: list[dict]) -> list[str]:
    """The markdown table of :func:`label_tables`' test rows (header included)."""
    lines = ["| metric | A | B | n pairs | median A − B | p |", "|---|---|---|---|---|---|"]
    for t in tests:
        p = "–" if math.isnan(t["p"]) else f"{t['p']:.3g}"
        diff = "–" if math.isnan(t["median_diff"]) else f"{t['median_diff']:+.3f}"
        lines.append(
            f"| {t['metric']} | {t['scheme_a']} | {t['scheme_b']} | {t['n']} | {diff} | {p} |"
        )
    return lines
