"""Patient-level cross-validation folds, stratified by lesion presence and scanner domain.

All scans (visits) of one patient land in the same fold, so a model is never validated on a
patient it saw in training. ``splits.json`` holds, per fold, the training and validation case
ids (the nnU-Net ``splits_final.json`` shape) plus the patients, so it is readable by both.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from adseg.log import logger

STRATA = ("lesion", "domain")


@dataclass(frozen=True)
class CaseMeta:
    """What splitting needs to know of a case."""

    case_id: str
    patient_id: str
    domain: str
    positive: bool  # has foreground (the lesion label, if the cohort has one)


def case_meta_from_dataset(dataset: dict) -> list[CaseMeta]:
    """Case metadata from a preprocessed ``dataset.json`` (see :mod:`adseg.preprocessing.cohort`).

    A case is positive if its ``lesion`` label (or, without one, any foreground label) has a
    non-zero volume.
    """
    cases = dataset.get("cases")
    if not isinstance(cases, dict) or not all("label_ml" in m for m in cases.values()):
        raise ValueError(
            "dataset.json has no 'cases' with patient ids and label volumes; "
            "give the folder written by 'adseg preprocess'"
        )
    metas = []
    for case_id, meta in sorted(dataset["cases"].items()):
        volumes = meta.get("label_ml", {})
        keys = ["lesion"] if "lesion" in volumes else list(volumes)
        positive = any(volumes[k] > 0 for k in keys)
        metas.append(CaseMeta(case_id, meta["patient_id"], meta["domain"], positive))
    return metas


def make_splits(cases: list[CaseMeta], n_folds: int = 4, seed: int = 0, stratify=STRATA) -> dict:
    """Assign patients to ``n_folds`` folds, balancing the strata across folds.

    Patients are grouped by stratum (lesion present in any visit; domain of the first visit),
    shuffled with ``seed``, and each goes to the fold that has the fewest patients of its
    stratum, then the fewest patients, then the fewest cases: a deterministic greedy version of
    stratified group k-fold.

    Raises:
        ValueError: fewer patients than folds, or an unknown stratification key.
    """
    unknown = set(stratify) - set(STRATA)
    if unknown:
        raise ValueError(
            f"stratify keys {sorted(unknown)} unknown; choose from {', '.join(STRATA)}"
        )
    by_patient: dict[str, list[CaseMeta]] = defaultdict(list)
    for case in cases:
        by_patient[case.patient_id].append(case)
    if len(by_patient) < n_folds:
        raise ValueError(f"{len(by_patient)} patients cannot fill {n_folds} folds")
    if all(c.patient_id == c.case_id for c in cases):
        logger.warning(
            "no patient ids: each case counts as its own patient, so two scans of one patient "
            "could land in different folds; list them in dataset.json 'cases' or set "
            "dataset.patient_regex"
        )
    strata: dict[tuple, list[str]] = defaultdict(list)
    for patient, visits in sorted(by_patient.items()):
        strata[_stratum(visits, stratify)].append(patient)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    per_stratum = defaultdict(Counter)
    patients_in, cases_in = Counter(), Counter()
    for key in sorted(strata):
        patients = list(strata[key])
        rng.shuffle(patients)
        for patient in patients:
            fold = min(
                range(n_folds), key=lambda f: (per_stratum[key][f], patients_in[f], cases_in[f], f)
            )
            fold_of[patient] = fold
            per_stratum[key][fold] += 1
            patients_in[fold] += 1
            cases_in[fold] += len(by_patient[patient])
    return _splits_dict(by_patient, fold_of, n_folds, seed, list(stratify))


def _stratum(visits: list[CaseMeta], stratify) -> tuple:
    key = []
    if "lesion" in stratify:
        key.append(any(v.positive for v in visits))
    if "domain" in stratify:
        key.append(sorted(visits, key=lambda v: v.case_id)[0].domain)
    return tuple(key)


def _splits_dict(
    by_patient: dict[str, list[CaseMeta]],
    fold_of: dict[str, int],
    n_folds: int,
    seed: int,
    stratify: list,
) -> dict:
    folds = []
    for fold in range(n_folds):
        val_patients = sorted(p for p, f in fold_of.items() if f == fold)
        train_patients = sorted(p for p, f in fold_of.items() if f != fold)
        folds.append(
            {
                "fold": fold,
                "train": sorted(c.case_id for p in train_patients for c in by_patient[p]),
                "val": sorted(c.case_id for p in val_patients for c in by_patient[p]),
                "train_patients": train_patients,
                "val_patients": val_patients,
            }
        )
    return {
        "n_folds": n_folds,
        "seed": seed,
        "stratify": stratify,
        "unit": "patient",
        "folds": folds,
    }


def _fold_lists(splits, source: str) -> list[dict]:
    """The folds of adseg's or nnU-Net's splits format, checked for shape."""
    folds = splits.get("folds") if isinstance(splits, dict) else splits
    ok = (
        isinstance(folds, list)
        and folds
        and all(
            isinstance(f, dict)
            and all(
                isinstance(f.get(k), list) and all(isinstance(c, str) for c in f[k])
                for k in ("train", "val")
            )
            for f in folds
        )
    )
    if not ok:
        raise ValueError(
            f"{source}: expected a list of folds, each with 'train' and 'val' lists of case ids "
            "(adseg's splits.json or nnU-Net's splits_final.json)"
        )
    return folds


def validate_splits(splits, cases: list[CaseMeta], source: str = "splits") -> dict:
    """Check a user-given splits file against the cohort and return it in adseg's form.

    Accepts adseg's ``splits.json`` or nnU-Net's ``splits_final.json`` (a list of
    ``{"train": [...], "val": [...]}``). The user's lists are kept as given. Every problem
    is reported at once: unknown cases, cases of the cohort a fold leaves out, a case or
    patient in both train and val of a fold, a case not validated exactly once, a patient
    validated in more than one fold.

    Raises:
        ValueError: listing every problem, naming ``source``.
    """
    folds = _fold_lists(splits, source)
    known = {c.case_id: c for c in cases}
    problems = []
    validated_in: dict[str, list[int]] = defaultdict(list)
    patient_folds: dict[str, set[int]] = defaultdict(set)
    for i, fold in enumerate(folds):
        train, val = set(fold["train"]), set(fold["val"])
        problems += [
            f"fold {i}: case {c!r} is not in the cohort" for c in sorted((train | val) - set(known))
        ]
        problems += [f"fold {i}: case {c!r} is in both train and val" for c in sorted(train & val)]
        missing = sorted(set(known) - train - val)
        if missing:
            problems.append(
                f"fold {i}: {len(missing)} case(s) in neither train nor val: "
                + ", ".join(missing[:5])
            )
        train_p = {known[c].patient_id for c in train if c in known}
        val_p = {known[c].patient_id for c in val if c in known}
        problems += [
            f"fold {i}: patient {p!r} has cases in both train and val"
            for p in sorted(train_p & val_p)
        ]
        for c in val & set(known):
            validated_in[c].append(i)
            patient_folds[known[c].patient_id].add(i)
    for cid in sorted(known):
        if len(validated_in[cid]) != 1:
            problems.append(
                f"case {cid!r} is validated in {len(validated_in[cid])} folds (expected exactly 1)"
            )
    for patient, in_folds in sorted(patient_folds.items()):
        if len(in_folds) > 1:
            problems.append(
                f"patient {patient!r} is validated in folds {sorted(in_folds)} (expected one)"
            )
    if problems:
        raise ValueError(f"{source}: invalid splits:\n  " + "\n  ".join(problems))
    out = []
    for i, fold in enumerate(folds):
        out.append(
            {
                "fold": i,
                "train": list(fold["train"]),
                "val": list(fold["val"]),
                "train_patients": sorted({known[c].patient_id for c in fold["train"]}),
                "val_patients": sorted({known[c].patient_id for c in fold["val"]}),
            }
        )
    seed = splits.get("seed") if isinstance(splits, dict) else None
    return {
        "n_folds": len(folds),
        "seed": seed,
        "stratify": ["user-given"],
        "unit": "patient",
        "folds": out,
    }


def describe_splits(splits: dict, cases: list[CaseMeta]) -> str:
    """A table of folds: patients, cases, positive share and domains in each validation fold."""
    known = {c.case_id: c for c in cases}
    lines = ["fold  patients  cases  positive  domains"]
    for fold in splits["folds"]:
        val = [known[c] for c in fold["val"]]
        domains = Counter(c.domain for c in val)
        share = sum(c.positive for c in val) / max(len(val), 1)
        lines.append(
            f"{fold['fold']:>4}  {len(fold['val_patients']):>8}  {len(val):>5}  {share:>8.0%}  "
            + ", ".join(f"{d}={n}" for d, n in sorted(domains.items()))
        )
    return "\n".join(lines)
