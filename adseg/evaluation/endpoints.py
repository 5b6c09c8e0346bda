"""The summary's uncertainty: patient-bootstrap intervals, the spread between training seeds,
the PI-CAI cohort metrics per scheme, the declared primary endpoint and Holm's correction.

Every interval resamples patients (all of a patient's scans together), with one set of draws
shared by all schemes, so a difference between two schemes keeps their pairing. A patient's
value is the mean over its visits and then over the training seeds; with several seeds a
per-patient mean's draw also resamples the seeds of each drawn patient (so the interval
covers both sources), and a cohort metric (AP, AUROC) is the mean of the seeds' values on the
drawn patients. ``seed_std`` is the standard deviation, between seeds, of the value on all
patients.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from adseg.evaluation.statistics import holm, interval, number

COHORT_METRICS = (
    "lesion_ap",
    "patient_auroc",
    "ranking_score",
    "froc_sens_fp0.5",
    "froc_sens_fp1",
    "froc_sens_fp2",
)
# picai_eval's Metrics are recomputed for each draw, about 70 ms for 40 scans of the default
# run (its counts loop over every candidate's confidence): 200 draws keep the summary within
# a minute on 2 cores; the intervals' ends move by about 0.01 between draw seeds then
COHORT_DRAWS = 200


def seed_of(row: dict) -> int:
    """A metrics row's training seed (0 for files written before seeds were recorded)."""
    return int(number(row.get("seed", "0") or "0"))


def patient_draws(patients: list[str], draws: int, seed: int = 0) -> np.ndarray:
    """``draws`` resamples of the patients' indices, with replacement, shared by all schemes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(patients), size=(draws, len(patients)))


def mean_draws(
    by_seed: dict[str, list[float]], patients: list[str], index: np.ndarray, seed: int = 1
) -> np.ndarray:
    """Bootstrap draws of a per-patient mean: ``by_seed[patient]`` is the patient's value per
    training seed; each draw takes the drawn patients (``index``, draws × patients) and, for
    each, its seeds resampled with replacement. Undefined values (NaN) are left out."""
    n_seeds = max((len(by_seed.get(p, [])) for p in patients), default=0) or 1
    values = np.full((len(patients), n_seeds), np.nan)
    for i, p in enumerate(patients):
        v = by_seed.get(p, [])
        values[i, : len(v)] = v
    counts = np.maximum((~np.isnan(values)).sum(axis=1), 1)
    if n_seeds == 1:
        drawn = values[index, 0]
    else:
        # each drawn patient's seeds drawn among its own defined ones
        rng = np.random.default_rng(seed)
        order = np.argsort(np.isnan(values), axis=1, kind="stable")  # defined seeds first
        picks = (rng.random((*index.shape, n_seeds)) * counts[index][..., None]).astype(int)
        chosen = np.take_along_axis(order[index], picks, axis=2)
        seeds = np.take_along_axis(values[index], chosen, axis=2)
        ok = ~np.isnan(seeds)
        k = ok.sum(axis=2)
        drawn = np.where(k > 0, np.where(ok, seeds, 0.0).sum(axis=2) / np.maximum(k, 1), np.nan)
    defined = ~np.isnan(drawn)
    total = np.where(defined, drawn, 0.0).sum(axis=1)
    n = defined.sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def seed_std(by_seed: dict[str, list[float]]) -> float:
    """The std between seeds of the mean over patients (NaN with one seed)."""
    n_seeds = max((len(v) for v in by_seed.values()), default=0)
    if n_seeds < 2:
        return math.nan
    means = []
    for s in range(n_seeds):
        defined = [v[s] for v in by_seed.values() if len(v) > s and not math.isnan(v[s])]
        if defined:
            means.append(float(np.mean(defined)))
    return float(np.std(means, ddof=1)) if len(means) > 1 else math.nan


def detection_inputs(metric_files: list[Path]) -> dict[str, dict[int, list[Path]]]:
    """scheme → seed → the detection folders its evaluated folds wrote beside metrics.tsv."""
    from adseg.preprocessing.qc import read_tsv

    found: dict[str, dict[int, list[Path]]] = {}
    for f in metric_files:
        folder = Path(f).parent / "detection"
        rows = read_tsv(f)
        if rows and folder.is_dir():
            found.setdefault(rows[0]["scheme"], {}).setdefault(seed_of(rows[0]), []).append(folder)
    return found


def cohort_endpoints(
    folders: dict[str, dict[int, list[Path]]], draws: int = COHORT_DRAWS, seed: int = 0
) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """The PI-CAI cohort metrics of each scheme with their patient-bootstrap intervals.

    Returns:
        scheme → metric → ``{"value", "ci_low", "ci_high", "seed_std", "n"}`` (n: patients),
        and scheme → metric → the draws (shared patient draws: for paired differences).
    """
    from adseg.evaluation.detection import detection_map, evaluate_detections, summarise
    from adseg.evaluation.detection import load_detection_inputs as load

    matched: dict[str, list] = {}
    cases_of: dict[str, list[str]] = {}
    for scheme, by_seed in folders.items():
        matched[scheme] = []
        for _, seed_folders in sorted(by_seed.items()):
            cases = load(seed_folders)
            metrics = evaluate_detections(
                [c[2] for c in cases],
                [c[3] for c in cases],
                [c[0] for c in cases],
                postprocess=detection_map,  # candidates extracted in picai_eval's threads
            )
            matched[scheme].append(metrics)
            for case_id, patient, _, _ in cases:
                cases_of.setdefault(patient, [])
                if case_id not in cases_of[patient]:
                    cases_of[patient].append(case_id)
    patients = sorted(cases_of)
    index = patient_draws(patients, draws, seed)
    table: dict[str, dict] = {}
    drawn: dict[str, dict[str, np.ndarray]] = {}
    for scheme, per_seed in matched.items():
        point = [summarise(m) for m in per_seed]
        samples = np.full((len(index), len(COHORT_METRICS)), math.nan)
        for d, row in enumerate(index):
            ids = [c for i in row for c in cases_of[patients[i]]]
            values = [summarise(m, ids) for m in per_seed]
            samples[d] = [_mean_defined([v[k] for v in values]) for k in COHORT_METRICS]
        table[scheme], drawn[scheme] = {}, {}
        for j, k in enumerate(COHORT_METRICS):
            estimates = [p[k] for p in point]
            low, high = interval(samples[:, j])
            spread = float(np.std(estimates, ddof=1)) if len(estimates) > 1 else math.nan
            table[scheme][k] = {
                "value": _mean_defined(estimates),
                "ci_low": low,
                "ci_high": high,
                "seed_std": spread,
                "n": len(patients),
            }
            drawn[scheme][k] = samples[:, j]
    return table, drawn


def _mean_defined(values: list[float]) -> float:
    """The mean of the defined values; NaN (silently) when none is (AP without a lesion)."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def with_holm(tests: list[dict], family: str) -> list[dict]:
    """The tests of one family with ``p_holm``, Holm's correction over all of them."""
    adjusted = holm([t["p"] for t in tests])
    return [t | {"family": family, "p_holm": a} for t, a in zip(tests, adjusted, strict=True)]
