"""Patient-level splits: no patient in two folds, every case validated exactly once."""

from __future__ import annotations

from collections import Counter

import pytest

from adseg.data.shares import training_share
from adseg.data.splits import (
    CaseMeta,
    add_inner_splits,
    case_meta_from_dataset,
    fold_cases,
    make_splits,
    validate_splits,
)


def cohort(n_patients: int = 30) -> list[CaseMeta]:
    """Patients with 1-2 visits, two domains, about two thirds positive."""
    cases = []
    for p in range(n_patients):
        visits = 2 if p % 4 == 0 else 1
        for v in range(1, visits + 1):
            cases.append(CaseMeta(f"c{p:03d}_{v}", f"P{p:03d}", "AB"[p % 2], p % 3 != 0))
    return cases


def test_no_patient_in_two_folds_and_each_case_validated_once():
    cases = cohort()
    splits = make_splits(cases, n_folds=4, seed=3)
    assert splits["n_folds"] == 4 and len(splits["folds"]) == 4
    patient_of = {c.case_id: c.patient_id for c in cases}
    validated = Counter(c for fold in splits["folds"] for c in fold["val"])
    assert set(validated) == {c.case_id for c in cases}
    assert set(validated.values()) == {1}
    for fold in splits["folds"]:
        train_p = {patient_of[c] for c in fold["train"]}
        val_p = {patient_of[c] for c in fold["val"]}
        assert not train_p & val_p
        assert set(fold["train"]) | set(fold["val"]) == set(patient_of)
        assert sorted(val_p) == fold["val_patients"]


def test_strata_are_balanced_across_folds():
    cases = cohort(40)
    splits = make_splits(cases, n_folds=4, seed=0)
    meta = {c.case_id: c for c in cases}
    for key in ("positive", "domain"):
        per_fold = []
        for fold in splits["folds"]:
            patients = {meta[c].patient_id: getattr(meta[c], key) for c in fold["val"]}
            per_fold.append(Counter(patients.values()))
        for value in per_fold[0]:
            counts = [c[value] for c in per_fold]
            assert max(counts) - min(counts) <= 2, (key, value, counts)


def test_seeded_and_deterministic():
    cases = cohort()
    assert make_splits(cases, 4, seed=1) == make_splits(cases, 4, seed=1)
    assert make_splits(cases, 4, seed=1) != make_splits(cases, 4, seed=2)


def test_too_few_patients_and_bad_strata():
    with pytest.raises(ValueError, match="3 patients cannot fill 4 folds"):
        make_splits(cohort(3), 4)
    with pytest.raises(ValueError, match="choose from lesion, domain"):
        make_splits(cohort(), 4, stratify=["scanner"])


def test_user_splits_accepted_in_adseg_and_nnunet_form():
    cases = cohort(12)
    ours = make_splits(cases, 3, seed=0)
    assert validate_splits(ours, cases)["folds"] == ours["folds"]
    nnunet = [{"train": f["train"], "val": f["val"]} for f in ours["folds"]]
    outer = ("fold", "train", "val", "train_patients", "val_patients")
    # nnU-Net's form has no inner split (`adseg splits` adds one)
    assert validate_splits(nnunet, cases)["folds"] == [
        {k: f[k] for k in outer} for f in ours["folds"]
    ]


def test_user_splits_problems_all_reported():
    cases = cohort(8)
    splits = make_splits(cases, 2, seed=0)
    fold0, fold1 = splits["folds"]
    # move one visit of a two-visit patient to the other fold; add an unknown case
    moved = next(c for c in fold0["val"] if c.endswith("_2"))
    bad = [
        {
            "train": fold0["train"] + [moved],
            "val": [c for c in fold0["val"] if c != moved] + ["ghost"],
        },
        {"train": [c for c in fold1["train"] if c != moved], "val": fold1["val"]},
    ]
    with pytest.raises(ValueError) as err:
        validate_splits(bad, cases, "my_splits.json")
    message = str(err.value)
    assert message.startswith("my_splits.json: invalid splits")
    assert "case 'ghost' is not in the cohort" in message
    assert (
        f"patient '{moved.split('_')[0].replace('c', 'P')}' has cases in both train and val"
        in message
    )
    assert f"case '{moved}' is validated in 0 folds" in message


def test_case_meta_from_preprocessed_dataset():
    dataset = {
        "cases": {
            "b": {
                "patient_id": "P2",
                "domain": "B",
                "label_ml": {"lesion": 0.0, "peripheral_zone": 3.0},
            },
            "a": {"patient_id": "P1", "domain": "A", "label_ml": {"lesion": 1.5}},
            "c": {"patient_id": "P3", "domain": "A", "label_ml": {"PZ": 0.0, "TZ": 2.0}},
        }
    }
    metas = case_meta_from_dataset(dataset)
    assert [m.case_id for m in metas] == ["a", "b", "c"]
    # the lesion label decides where there is one; otherwise any foreground label
    assert [m.positive for m in metas] == [True, False, True]


def test_user_splits_cannot_split_a_patient_across_validation_folds():
    cases = [CaseMeta("a_1", "P1", "A", True), CaseMeta("a_2", "P1", "A", True)]
    cases += [CaseMeta(f"b{i}", f"Q{i}", "B", False) for i in range(2)]
    # P1's two visits are validated in different folds; no fold has P1 in train and val
    bad = [
        {"train": ["b1"], "val": ["a_1", "b0"]},
        {"train": ["b0"], "val": ["a_2", "b1"]},
    ]
    with pytest.raises(ValueError) as err:
        validate_splits(bad, cases, "given.json")
    message = str(err.value)
    assert "patient 'P1' is validated in folds [0, 1] (expected one)" in message
    assert "fold 0: 1 case(s) in neither train nor val: a_2" in message


@pytest.mark.parametrize(
    "splits", [{"fold0": {}}, [{"train": [["x"]], "val": []}], [], "folds", [{"train": []}]]
)
def test_malformed_user_splits_get_a_clear_error(splits):
    with pytest.raises(
        ValueError, match="f.json: expected a list of folds, each with 'train' and 'val'"
    ):
        validate_splits(splits, cohort(4), "f.json")


def test_user_lists_are_kept_as_given():
    cases = cohort(8)
    ours = make_splits(cases, 2, seed=0)
    reordered = [{"train": f["train"][::-1], "val": f["val"][::-1]} for f in ours["folds"]]
    out = validate_splits(reordered, cases)
    assert [f["val"] for f in out["folds"]] == [f["val"] for f in reordered]


def test_raw_dataset_json_is_not_a_preprocessed_one():
    with pytest.raises(ValueError, match="no 'cases' with patient ids and label volumes"):
        case_meta_from_dataset({"channel_names": {"0": "T2w"}})


def test_splitting_by_scan_is_warned_about(caplog):
    scans = [CaseMeta(f"s{i}", f"s{i}", "A", i % 2 == 0) for i in range(8)]
    with caplog.at_level("WARNING", logger="adseg"):
        make_splits(scans, 4)
    assert "no patient ids: each case counts as its own patient" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="adseg"):
        make_splits(cohort(8), 4)
    assert "no patient ids" not in caplog.text


def test_each_folds_training_patients_are_split_for_model_selection():
    """Selection (validation Dice, best checkpoint, collapse checks) sees only inner
    validation patients: train, val and test of every fold are disjoint by patient."""
    cases = cohort(40)
    splits = make_splits(cases, n_folds=4, seed=0, inner_val_fraction=0.2)
    patient_of = {c.case_id: c.patient_id for c in cases}
    positive = {c.patient_id for c in cases if c.positive}
    for k in range(4):
        roles = fold_cases(splits, k, cases)
        patients = {r: {patient_of[c] for c in roles[r]} for r in ("train", "val", "test")}
        assert not patients["train"] & patients["val"]
        assert not patients["test"] & (patients["train"] | patients["val"])
        assert set(roles["train"]) | set(roles["val"]) == set(splits["folds"][k]["train"])
        assert len(patients["val"]) == round(0.2 * 30)  # of the fold's 30 training patients
        # stratified: both lesion strata and both domains are in inner validation
        assert patients["val"] & positive and patients["val"] - positive
        assert patients["val"] & {c.patient_id for c in cases if c.domain == "A"}
    again = make_splits(cases, n_folds=4, seed=0, inner_val_fraction=0.2)
    assert again == splits
    other = make_splits(cases, n_folds=4, seed=1, inner_val_fraction=0.2)
    assert other["folds"][0]["inner_val"] != splits["folds"][0]["inner_val"]


def test_a_splits_file_without_an_inner_split_is_refused_for_jobs_and_completed_by_splits():
    cases = cohort(12)
    nnunet = [{"train": f["train"], "val": f["val"]} for f in make_splits(cases, 3)["folds"]]
    with pytest.raises(ValueError, match="fold 1 has no inner validation split"):
        fold_cases(nnunet, 1, cases, "splits_final.json")
    checked = validate_splits(nnunet, cases, "splits_final.json")
    completed = add_inner_splits(checked, cases, 0.25, 0)
    roles = fold_cases(completed, 1, cases)
    assert roles["test"] == nnunet[1]["val"]  # the user's folds as given
    assert sorted(roles["train"] + roles["val"]) == sorted(nnunet[1]["train"])


def test_a_broken_inner_split_is_reported():
    cases = cohort(12)
    splits = make_splits(cases, 3)
    fold = splits["folds"][0]
    moved = fold["inner_train"].pop()
    fold["inner_val"].append(fold["val"][0])  # a test case in inner validation
    with pytest.raises(ValueError) as err:
        validate_splits(splits, cases)
    assert "fold 0: inner_train and inner_val must split the fold's training" in str(err.value)
    assert moved not in fold["inner_val"]


def test_training_shares_are_nested_stratified_seeded_and_leave_validation_and_test_whole():
    cases = cohort(60)
    splits = make_splits(cases, n_folds=3, seed=2)
    meta = {c.case_id: c for c in cases}
    for fold in range(3):
        entry = fold_cases(splits, fold, cases)
        patients = {meta[c].patient_id for c in entry["train"]}
        kept = {}
        for fraction in (0.25, 0.5, 0.75):
            share = training_share(entry, cases, fraction, seed=0)
            assert share["val"] == entry["val"] and share["test"] == entry["test"]
            chosen = {meta[c].patient_id for c in share["train"]}
            assert len(chosen) == -(-len(patients) * fraction // 1)  # ceil
            # every visit of a chosen patient comes along
            assert share["train"] == [c for c in entry["train"] if meta[c].patient_id in chosen]
            # positives and domains in proportion (within one patient of it)
            for key in (lambda c: c.positive, lambda c: c.domain):
                whole = Counter(key(meta[c]) for c in entry["train"] if meta[c].case_id[-1] == "1")
                part = Counter(key(meta[c]) for c in share["train"] if meta[c].case_id[-1] == "1")
                for k, n in whole.items():
                    assert abs(part[k] - n * len(chosen) / len(patients)) <= 1.5, (k, part, whole)
            kept[fraction] = chosen
        assert kept[0.25] <= kept[0.5] <= kept[0.75]
        again = training_share(entry, cases, 0.5, seed=0)
        assert {meta[c].patient_id for c in again["train"]} == kept[0.5]
    other = training_share(fold_cases(splits, 0, cases), cases, 0.5, seed=1)
    first = training_share(fold_cases(splits, 0, cases), cases, 0.5, seed=0)
    assert other["train"] != first["train"]
    assert training_share(entry, cases, 1.0, seed=0) is entry
    tiny = training_share(entry, cases, 0.01, seed=0)
    assert len({meta[c].patient_id for c in tiny["train"]}) == 1
