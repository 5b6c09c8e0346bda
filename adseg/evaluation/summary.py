"""The cross-validation summary: a declared primary endpoint, then Kohl et al. 2017's table and
the rest, each number with its uncertainty.

From the per-case metric files of every (scheme, fold, training seed), and the detection
inputs evaluation wrote beside them:

- a patient's visits are averaged (lesion counts summed), then its seeds, so each patient
  counts once;
- the primary endpoint (``evaluate.primary``, declared in the config before the run) leads:
  each scheme's value with a patient-bootstrap 95 % interval and the spread between seeds,
  and every two schemes' difference with its interval and test, Holm-corrected over the
  primary comparisons;
- the PI-CAI cohort metrics (lesion-level AP, patient-level AUROC, ranking score, FROC
  sensitivity; :mod:`adseg.evaluation.detection`), each with its interval;
- per scheme and metric: mean ± std over patients, the interval, the seeds' spread, the
  median, n (patients with a defined value) and the mean of each fold;
- every other comparison is secondary: paired Wilcoxon tests (n = the pairs the test used)
  and bootstrap tests of the cohort metrics, Holm-corrected as one family;
- whether training converged and D learned, from the training logs beside the metrics
  (:mod:`adseg.evaluation.convergence`; left out where there are none): per scheme, the
  inner-validation Dice of the last two validation epochs, and D's loss beside its chance level
  and σ(D(real)) − σ(D(fake)) over the last epochs;
- a box plot per metric;
- a reliability diagram: each scheme's probability bins pooled over its cases, folds and seeds
  (:mod:`adseg.evaluation.calibration`; left out where evaluation wrote none).

Written as ``summary.md`` (for people), ``summary.tsv``, ``tests.tsv``, ``training.tsv``
(one row per trained run: epochs, last two validation Dice, D's loss and score gap; for
programs) and ``reliability.tsv`` (the pooled bins), ``plots/<label>_<metric>.png``,
``plots/training_curves.png`` and ``plots/reliability.png``. How intervals are drawn:
:mod:`adseg.evaluation.endpoints`.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from adseg.evaluation.calibration import write_reliability
from adseg.evaluation.convergence import write_training
from adseg.evaluation.endpoints import (
    COHORT_DRAWS,
    COHORT_METRICS,
    cohort_endpoints,
    detection_inputs,
    mean_draws,
    patient_draws,
    seed_of,
    seed_std,
    with_holm,
)
from adseg.evaluation.html import write_html_twin
from adseg.evaluation.report import markdown
from adseg.evaluation.statistics import (
    BOOTSTRAP_DRAWS,
    DERIVED,
    average_seeds,
    difference,
    interval,
    label_tables,
    per_patient,
)
from adseg.io import write_text, write_tsv
from adseg.plots import box_plot
from adseg.preprocessing.qc import read_tsv
from adseg.training.schemes import SCHEMES

STAT_COLUMNS = (
    "label",
    "scheme",
    "metric",
    "fold",
    "n",
    "mean",
    "std",
    "median",
    "ci_low",
    "ci_high",
    "seed_std",
    "n_seeds",
)
TEST_COLUMNS = (
    "family",
    "label",
    "metric",
    "scheme_a",
    "scheme_b",
    "test",
    "n",
    "n_pairs",
    "diff",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
)


def summarize(
    metric_files: list[str | Path],
    out: str | Path,
    title: str,
    hybrid_weight: float = 0.5,
    primary: str = "lesion_ap",
    draws: int = BOOTSTRAP_DRAWS,
) -> Path:
    """Write summary.md (and its HTML twin), summary.tsv, tests.tsv, training.tsv,
    reliability.tsv and the plots into ``out``; return summary.md. The training logs and
    probability bins are read from each metrics file's folder.

    ``primary``: the declared primary endpoint, a per-patient metric (:data:`DERIVED`) or a
    cohort one (:data:`adseg.evaluation.endpoints.COHORT_METRICS`, which needs the detection
    inputs ``adseg evaluate`` writes); ``draws``: patient-bootstrap draws (the cohort metrics
    take at most :data:`adseg.evaluation.endpoints.COHORT_DRAWS`).

    Raises:
        ValueError: no evaluated case, an unknown scheme, or a cohort primary endpoint without
            detection inputs.
    """
    out = Path(out)
    rows = [r for f in metric_files for r in read_tsv(f)]
    if not rows:
        raise ValueError("no evaluated cases in " + ", ".join(map(str, metric_files)))
    seeds = sorted({seed_of(r) for r in rows})
    by_seed = {s: per_patient([r for r in rows if seed_of(r) == s]) for s in seeds}
    patients = average_seeds(by_seed)
    labels = sorted({k[0] for k in patients})
    found = {k[1] for k in patients}
    unknown = sorted(found - set(SCHEMES))
    if unknown:
        raise ValueError(
            f"results of unknown scheme(s) {', '.join(unknown)}; known: {', '.join(SCHEMES)}"
        )
    schemes = [s for s in SCHEMES if s in found]
    folds = sorted({p["fold"] for p in patients.values()})
    main = "lesion" if "lesion" in labels else labels[0]
    stats, tests, patient_level = [], [], {}
    for label in labels:
        values, label_stats, label_tests = label_tables(patients, label, schemes, DERIVED, folds)
        drawn = _uncertainty(label, schemes, by_seed, label_stats, draws)
        patient_level[label] = drawn
        pooled = {(r["scheme"], r["metric"]): r for r in label_stats if r["fold"] == "all"}
        for t in label_tests:
            a, b, m = t["scheme_a"], t["scheme_b"], t["metric"]
            wilcoxon_p = t["p"]
            t.pop("median_diff")
            t |= {"test": "wilcoxon", "diff": pooled[(a, m)]["mean"] - pooled[(b, m)]["mean"]}
            # the difference of the means with its bootstrap interval; p stays Wilcoxon's
            t |= difference(drawn[(a, m)], drawn[(b, m)]) | {"p": wilcoxon_p}
        stats += label_stats
        tests += label_tests
        for m in DERIVED:
            box_plot(
                {s: list(values[(s, m)].values()) for s in schemes},
                m,
                out / "plots" / f"{label}_{m}.png",
                f"{label}: {m} per patient",
            )
    folders = detection_inputs([Path(f) for f in metric_files])
    cohort, cohort_draws = {}, {}
    if folders:
        cohort, cohort_draws = cohort_endpoints(folders, min(draws, COHORT_DRAWS))
        for s in schemes:
            for k, v in cohort.get(s, {}).items():
                stats.append(_cohort_row(main, s, k, v, len(seeds)))
    elif primary in COHORT_METRICS:
        raise ValueError(
            f"the primary endpoint {primary} needs the detection inputs `adseg evaluate` writes "
            "beside metrics.tsv (detection/); none found"
        )
    pooled = {(r["label"], r["scheme"], r["metric"]): r for r in stats if r["fold"] == "all"}
    primary_tests = _pairs(primary, main, schemes, pooled, patient_level, cohort_draws)
    primary_tests = with_holm(primary_tests, "primary")
    secondary = [t for t in tests if not (t["label"] == main and t["metric"] == primary)]
    secondary += [
        t
        for k in COHORT_METRICS
        if k != primary
        for t in _pairs(k, main, schemes, pooled, patient_level, cohort_draws)
    ]
    tests = primary_tests + with_holm(secondary, "secondary")
    write_tsv(out / "summary.tsv", stats, STAT_COLUMNS)
    write_tsv(out / "tests.tsv", tests, TEST_COLUMNS)
    training = write_training(metric_files, out)
    reliability = write_reliability(metric_files, out, schemes)
    path = out / "summary.md"
    text = markdown(
        stats,
        tests,
        labels,
        schemes,
        folds,
        seeds,
        title,
        hybrid_weight,
        primary,
        main,
        draws,
        training,
        reliability,
    )
    write_text(path, text)
    write_html_twin(path)  # for the Snakemake report
    return path


def _uncertainty(label, schemes, by_seed, label_stats, draws) -> dict:
    """Add the bootstrap interval, seed spread and seed count to a label's pooled rows;
    return the draws by (scheme, metric), one set of patient draws for all schemes."""
    patients = sorted({k[2] for patients in by_seed.values() for k in patients if k[0] == label})
    index = patient_draws(patients, draws)
    drawn = {}
    for row in label_stats:
        if row["fold"] != "all":
            continue
        s, m = row["scheme"], row["metric"]
        per_seed = {
            p: [
                float(by_seed[seed][(label, s, p)][m])
                for seed in by_seed
                if (label, s, p) in by_seed[seed]
            ]
            for p in patients
        }
        drawn[(s, m)] = mean_draws(per_seed, patients, index)
        low, high = interval(drawn[(s, m)])
        row |= {
            "ci_low": low,
            "ci_high": high,
            "seed_std": seed_std(per_seed),
            "n_seeds": len(by_seed),
        }
    return drawn


def _cohort_row(label: str, scheme: str, metric: str, v: dict, n_seeds: int) -> dict:
    return {
        "label": label,
        "scheme": scheme,
        "metric": metric,
        "fold": "all",
        "n": v["n"],
        "mean": v["value"],
        "std": math.nan,
        "median": math.nan,
        "ci_low": v["ci_low"],
        "ci_high": v["ci_high"],
        "seed_std": v["seed_std"],
        "n_seeds": n_seeds,
    }


def _pairs(metric, label, schemes, pooled, patient_level, cohort_draws) -> list[dict]:
    """Bootstrap comparisons of every two schemes on ``metric`` (a cohort or a per-patient
    one) from the shared patient draws: the difference of the values on all patients, its
    interval and p."""
    tests = []
    for a, b in itertools.combinations(schemes, 2):
        if (label, a, metric) not in pooled or (label, b, metric) not in pooled:
            continue
        if metric in COHORT_METRICS:
            da, db = cohort_draws[a][metric], cohort_draws[b][metric]
        else:
            da, db = patient_level[label][(a, metric)], patient_level[label][(b, metric)]
        ra, rb = pooled[(label, a, metric)], pooled[(label, b, metric)]
        n = min(int(ra["n"]), int(rb["n"]))
        row = {
            "label": label,
            "metric": metric,
            "scheme_a": a,
            "scheme_b": b,
            "test": "bootstrap",
            "n": n,
            "n_pairs": n,
            "diff": ra["mean"] - rb["mean"],
        }
        tests.append(row | difference(da, db))
    return tests
