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
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import wilcoxon

KOHL_METRICS = ("dice", "sensitivity", "specificity")
SUMMARY_METRICS = ("dice", "sensitivity", "specificity", "precision", "hd95_mm", "volume_pred_ml")
# per-case endpoints of lesion detection and calibration (adseg.evaluation.metrics); files
# written before them lack the columns, and their values are undefined
DETECTION_COLUMNS = ("patient_specificity", "gland_specificity", "ece", "brier")
COUNTS = ("lesion_tp", "lesion_fn", "lesion_fp")
# per-patient values summarised: the metrics plus Dice on patients with a lesion and lesion-wise
# detection rate and false positives
DERIVED = (
    "dice",
    "dice_with_lesion",
    *SUMMARY_METRICS[1:],
    "lesion_detection",
    "lesion_fp",
    *DETECTION_COLUMNS,
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
        for m in (*SUMMARY_METRICS, *DETECTION_COLUMNS):
            values = [number(v.get(m, "")) for v in visits]
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


def average_seeds(by_seed: dict[int, dict[tuple, dict]]) -> dict[tuple, dict]:
    """:func:`per_patient`'s values of each training seed → their mean over the seeds (each
    seed's value of a patient counts once; counts such as ``lesion_fp`` are averaged too)."""
    keys = sorted({k for patients in by_seed.values() for k in patients})
    out = {}
    for key in keys:
        seeds = [patients[key] for patients in by_seed.values() if key in patients]
        agg = {"fold": seeds[0]["fold"]}
        for m in seeds[0]:
            if m != "fold":
                defined = [float(v[m]) for v in seeds if not math.isnan(float(v[m]))]
                agg[m] = float(np.mean(defined)) if defined else math.nan
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
    """Two-sided Wilcoxon signed-rank test on the patients where both values are defined.

    ``n`` is the number of pairs the test used: pairs with a zero difference (both Dice 1 on
    a lesion-free patient) carry no sign and are dropped (Wilcoxon's own rule), so ``n`` may
    be smaller than ``n_pairs``, the patients both values are defined for.
    """
    common = sorted(p for p in a.keys() & b.keys() if not (math.isnan(a[p]) or math.isnan(b[p])))
    x = np.array([a[p] for p in common])
    y = np.array([b[p] for p in common])
    diff = x - y
    used = int(np.count_nonzero(diff))
    if len(common) < 2 or not used:
        p = math.nan if len(common) < 2 else 1.0
    else:
        p = float(wilcoxon(x, y).pvalue)
    median = float(np.median(diff)) if len(common) else math.nan
    return {"n": used, "n_pairs": len(common), "median_diff": median, "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (NaN stays NaN, uncounted).

    The k-th smallest of m p-values is multiplied by m − k + 1, capped at 1, and made no
    smaller than the adjusted value before it: the family-wise error rate is held at any
    level for any dependence between the tests (Holm 1979).
    """
    defined = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(defined, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(defined) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


BOOTSTRAP_DRAWS = 2000
CI_LEVEL = 0.95


def interval(draws: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The percentile interval of the defined draws (NaN, NaN if none is)."""
    defined = draws[~np.isnan(draws)]
    if not len(defined):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def difference(a: np.ndarray, b: np.ndarray, level: float = CI_LEVEL) -> dict:
    """Paired draws of A and B → the difference's interval and a two-sided bootstrap p (twice
    the share of draws on the far side of zero, at least one draw's worth)."""
    d = a - b
    d = d[~np.isnan(d)]
    if not len(d):
        return {"ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    low, high = interval(d, level)
    p = max(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))), 1 / len(d))
    return {"ci_low": low, "ci_high": high, "p": float(p)}


def bootstrap(
    units: Sequence[str],
    statistic: Callable[[list[str]], float],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> dict:
    """Percentile bootstrap of ``statistic`` over ``units`` (patients) drawn with replacement.

    ``statistic`` gets a list of unit ids (with repeats) and returns a number: a mean of
    per-patient values, or a cohort metric such as average precision recomputed on the drawn
    patients' cases. Draws where it is undefined (NaN) are left out of the interval.

    Returns:
        ``estimate`` (on all units), ``low``, ``high`` (the ``level`` interval) and
        ``draws`` (the bootstrap values, for paired comparisons).
    """
    units = list(units)
    estimate = float(statistic(units)) if units else math.nan
    if len(units) < 2:
        return {"estimate": estimate, "low": math.nan, "high": math.nan, "draws": np.array([])}
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(units), size=(draws, len(units)))
    values = np.array([statistic([units[i] for i in row]) for row in index], float)
    low, high = interval(values, level)
    return {"estimate": estimate, "low": low, "high": high, "draws": values}


def mean_over(values: dict[str, float | Sequence[float]]) -> Callable[[list[str]], float]:
    """The statistic "mean over the drawn patients" for :func:`bootstrap`; a patient's value
    may be a list over training seeds, then averaged first (each patient weighs the same)."""

    def mean(units: list[str]) -> float:
        return float(np.mean([np.mean(values[u]) for u in units]))

    return mean


def bootstrap_mean(values: dict[str, float | Sequence[float]], **kwargs) -> dict:
    """:func:`bootstrap` of the mean of per-patient values (NaN values left out)."""
    defined = {u: v for u, v in values.items() if not np.isnan(np.mean(v))}
    return bootstrap(sorted(defined), mean_over(defined), **kwargs)


def paired_bootstrap(
    units: Sequence[str],
    statistic_a: Callable[[list[str]], float],
    statistic_b: Callable[[list[str]], float],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> dict:
    """The difference A − B of two statistics on the same patients, bootstrapped by drawing
    the patients once for both (so their pairing is kept).

    Returns ``diff`` (on all patients), its ``low``/``high`` interval and a two-sided ``p``:
    twice the share of draws on the far side of zero (at least 1/draws), the percentile
    bootstrap's test of "no difference".
    """

    def a_minus_b(drawn: list[str]) -> float:
        return statistic_a(drawn) - statistic_b(drawn)

    result = bootstrap(units, a_minus_b, draws, seed, level)
    drawn = result["draws"]
    p = difference(drawn, np.zeros_like(drawn), level)["p"]
    return {
        "diff": result["estimate"],
        "low": result["low"],
        "high": result["high"],
        "p": p,
        "n": len(units),
    }


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
