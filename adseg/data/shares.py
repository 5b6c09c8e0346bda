"""Shares of a fold's training patients, for the learning-curve study
(``learning_curve.fractions``): nested, stratified, seeded. Light enough for the workflow to
import (numpy only)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from adseg.data.splits import STRATA, CaseMeta, stratum


def share_name(fraction: float) -> str:
    """A share's folder, below each scheme and below ``learning_curve/``: frac_25 for 0.25."""
    return f"frac_{round(100 * fraction)}"


def training_share(
    entry: dict, cases: list[CaseMeta], fraction: float, seed: int, stratify=STRATA
) -> dict:
    """``entry`` (:func:`fold_cases`) with its ``train`` cases cut to ``fraction`` of their
    patients, for the learning-curve study; ``val`` and ``test`` are kept whole.

    Patients are ranked once per (``seed``, fold), independently of ``fraction``, and a share
    takes the first ceil(fraction × n) of them (at least one), so the shares are nested: the
    patients of 25 % are among those of 50 %. Each stratum is shuffled and the strata are
    interleaved in proportion, so every prefix keeps the training patients' mix of positive
    patients and domains.
    """
    if fraction >= 1:
        return entry
    meta = {c.case_id: c for c in cases}
    by_patient: dict[str, list[CaseMeta]] = defaultdict(list)
    for case_id in entry["train"]:
        by_patient[meta[case_id].patient_id].append(meta[case_id])
    rng = np.random.default_rng([seed, entry["fold"]])
    strata: dict[tuple, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        strata[stratum(by_patient[patient], stratify)].append(patient)
    ranked = []
    for key in sorted(strata):
        members = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        # a patient's place within its stratum, as a share, orders the interleaving
        ranked += [((i + 0.5) / len(members), rng.random(), p) for i, p in enumerate(members)]
    order = [patient for *_, patient in sorted(ranked)]
    kept = set(order[: max(1, math.ceil(fraction * len(order)))])
    return entry | {"train": [c for c in entry["train"] if meta[c].patient_id in kept]}
