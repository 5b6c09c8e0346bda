"""Patient-level cross-validation folds, stratified by lesion presence and scanner domain.

All scans (visits) of one patient land in the same fold, so a model is never tested on a
patient it saw in training. ``splits.json`` holds, per fold, the training and held-out case
ids under ``train`` and ``val`` (the nnU-Net ``splits_final.json`` shape, so nnU-Net can run
the same cross-validation) plus the patients, and the inner split of the training patients:
``inner_train`` (what a model fits) and ``inner_val`` (what selects its checkpoint, stops it
or tunes it). A job reads a fold's three roles through :func:`fold_cases`: ``train``,
``val`` (inner validation) and ``test`` (the held-out patients), pairwise disjoint.
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


def make_splits(
    cases: list[CaseMeta],
    n_folds: int = 4,
    seed: int = 0,
    stratify=STRATA,
    inner_val_fraction: float = 0.2,
) -> dict:
    """Assign patients to ``n_folds`` folds, balancing the strata across folds.

    Patients are grouped by stratum (lesion present in any visit; domain of the first visit),
    shuffled with ``seed``, and each goes to the fold that has the fewest patients of its
    stratum, then the fewest patients, then the fewest cases: a deterministic greedy version of
    stratified group k-fold. Each fold's training patients are then split again
    (:func:`add_inner_splits`).

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
        strata[stratum(visits, stratify)].append(patient)
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
    splits = _splits_dict(by_patient, fold_of, n_folds, seed, list(stratify))
    return add_inner_splits(splits, cases, inner_val_fraction, seed, stratify)


def add_inner_splits(
    splits: dict, cases: list[CaseMeta], fraction: float, seed: int, stratify=STRATA
) -> dict:
    """Split each fold's training patients into ``inner_train`` and ``inner_val``.

    ``round(fraction × patients)`` patients (at least one, and one fewer than all) go to
    inner validation, shared out over the strata in proportion (largest remainders), plus one
    of any scanner domain left without one that has two or more patients; each stratum's
    patients are shuffled with a generator seeded by (``seed``, fold): the same cohort and
    settings give the same split, and a user-given outer split gets one too.

    Raises:
        ValueError: a fold with fewer than 2 training patients.
    """
    by_patient: dict[str, list[CaseMeta]] = defaultdict(list)
    for case in cases:
        by_patient[case.patient_id].append(case)
    for fold in splits["folds"]:
        patients = sorted(set(fold["train_patients"]))
        if len(patients) < 2:
            raise ValueError(
                f"fold {fold['fold']}: {len(patients)} training patient(s) cannot be split "
                "into inner training and validation"
            )
        k = min(max(1, round(fraction * len(patients))), len(patients) - 1)
        strata: dict[tuple, list[str]] = defaultdict(list)
        for patient in patients:
            strata[stratum(by_patient[patient], stratify)].append(patient)
        keys = sorted(strata)
        share = [k * len(strata[key]) / len(patients) for key in keys]
        take = [int(x) for x in share]
        by_remainder = sorted(range(len(keys)), key=lambda i: (-(share[i] - take[i]), i))
        for i in by_remainder[: k - sum(take)]:
            take[i] += 1
        if "domain" in stratify:
            # every scanner domain with two or more training patients gets one in validation
            # (ADDA and domain-restricted models select on their own domains' patients)
            for domain in sorted({key[-1] for key in keys}):
                mine = [i for i, key in enumerate(keys) if key[-1] == domain]
                if sum(len(strata[keys[i]]) for i in mine) >= 2 and not sum(take[i] for i in mine):
                    take[max(mine, key=lambda i: (len(strata[keys[i]]), -i))] += 1
        rng = np.random.default_rng([seed, fold["fold"]])
        val_patients = []
        for key, n in zip(keys, take, strict=True):
            group = list(strata[key])
            rng.shuffle(group)
            val_patients += group[:n]
        val_set = set(val_patients)
        fold["inner_val_patients"] = sorted(val_set)
        fold["inner_train_patients"] = [p for p in patients if p not in val_set]
        fold["inner_val"] = sorted(c.case_id for p in val_set for c in by_patient[p])
        fold["inner_train"] = sorted(
            c.case_id for p in fold["inner_train_patients"] for c in by_patient[p]
        )
    splits["inner_val_fraction"] = fraction
    return splits


def fold_cases(splits: dict, fold: int, cases: list[CaseMeta], source: str = "splits") -> dict:
    """One fold's cases by role, for a job: ``train`` (fitted), ``val`` (inner validation:
    selection, stopping, tuning) and ``test`` (held out), pairwise disjoint by patient.

    Raises:
        ValueError: invalid splits (:func:`validate_splits`), a fold outside them, or a fold
            without an inner split (a splits file from an older adseg or of your own: run
            ``adseg splits`` on it, which adds one).
    """
    checked = validate_splits(splits, cases, source)
    n_folds = len(checked["folds"])
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} is outside the splits: they have folds 0-{n_folds - 1}")
    entry = checked["folds"][fold]
    if "inner_val" not in entry:
        raise ValueError(
            f"{source}: fold {fold} has no inner validation split (inner_train, inner_val), so "
            "model selection would see its test patients; run `adseg splits` to add one"
        )
    return {
        "fold": fold,
        "train": list(entry["inner_train"]),
        "val": list(entry["inner_val"]),
        "test": list(entry["val"]),
    }


def stratum(visits: list[CaseMeta], stratify) -> tuple:
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
        problems += _inner_problems(fold, i, known)
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
        entry = {
            "fold": i,
            "train": list(fold["train"]),
            "val": list(fold["val"]),
            "train_patients": sorted({known[c].patient_id for c in fold["train"]}),
            "val_patients": sorted({known[c].patient_id for c in fold["val"]}),
        }
        if "inner_val" in fold:
            for role in ("inner_train", "inner_val"):
                entry[role] = list(fold[role])
                entry[f"{role}_patients"] = sorted({known[c].patient_id for c in fold[role]})
        out.append(entry)
    given = splits if isinstance(splits, dict) else {}
    result = {
        "n_folds": len(folds),
        "seed": given.get("seed"),
        "stratify": ["user-given"],
        "unit": "patient",
        "folds": out,
    }
    if "inner_val_fraction" in given:
        result["inner_val_fraction"] = given["inner_val_fraction"]
    return result


def _inner_problems(fold: dict, i: int, known: dict[str, CaseMeta]) -> list[str]:
    """What is wrong with a fold's inner split, if it has one: both lists or neither, each a
    list of case ids, together exactly the fold's training cases, no patient in both."""
    given = [k for k in ("inner_train", "inner_val") if k in fold]
    if not given:
        return []
    lists = [fold.get(k) for k in ("inner_train", "inner_val")]
    if len(given) == 1 or not all(
        isinstance(x, list) and all(isinstance(c, str) for c in x) for x in lists
    ):
        return [f"fold {i}: inner_train and inner_val must both be lists of case ids"]
    inner_train, inner_val = map(set, lists)
    problems = []
    if inner_train | inner_val != set(fold["train"]) or inner_train & inner_val:
        problems.append(
            f"fold {i}: inner_train and inner_val must split the fold's training cases, "
            "each case in exactly one"
        )
    shared = {known[c].patient_id for c in inner_train if c in known} & {
        known[c].patient_id for c in inner_val if c in known
    }
    problems += [
        f"fold {i}: patient {p!r} has cases in both inner_train and inner_val"
        for p in sorted(shared)
    ]
    return problems


def describe_splits(splits: dict, cases: list[CaseMeta]) -> str:
    """A table of folds: patients, cases, positive share and domains of each fold's test
    patients, and the inner training/validation patients."""
    known = {c.case_id: c for c in cases}
    lines = ["fold  test patients  cases  positive  domains        inner train/val patients"]
    for fold in splits["folds"]:
        val = [known[c] for c in fold["val"]]
        domains = Counter(c.domain for c in val)
        share = sum(c.positive for c in val) / max(len(val), 1)
        inner = (
            f"{len(fold['inner_train_patients'])}/{len(fold['inner_val_patients'])}"
            if "inner_val_patients" in fold
            else "none"
        )
        lines.append(
            f"{fold['fold']:>4}  {len(fold['val_patients']):>13}  {len(val):>5}  {share:>8.0%}  "
            + f"{', '.join(f'{d}={n}' for d, n in sorted(domains.items())):<13}  {inner}"
        )
    return "\n".join(lines)
