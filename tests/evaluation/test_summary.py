"""The per-patient statistics (:mod:`adseg.evaluation.statistics`) and the cross-validation
summary table built from them (:mod:`adseg.evaluation.summary`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from adseg.evaluation.cases import METRIC_COLUMNS
from adseg.evaluation.statistics import (
    bootstrap_mean,
    holm,
    mean_over,
    paired_bootstrap,
    paired_test,
    per_patient,
)
from adseg.evaluation.summary import summarize
from adseg.io import write_tsv
from adseg.preprocessing.qc import read_tsv
from adseg.training.schemes import SCHEMES


def _row(scheme, fold, case, patient, dice, sens, tp=1, fn=0, fp=0):
    return {
        "scheme": scheme,
        "fold": fold,
        "case_id": case,
        "patient_id": patient,
        "domain": "A",
        "label": "lesion",
        "dice": dice,
        "sensitivity": sens,
        "specificity": 0.99,
        "precision": dice,
        "hd95_mm": math.nan,
        "lesion_tp": tp,
        "lesion_fn": fn,
        "lesion_fp": fp,
        "volume_true_ml": 1.0,
        "volume_pred_ml": 1.0,
    }


def _write(tmp_path, rows):
    paths = []
    for scheme in sorted({r["scheme"] for r in rows}):
        path = tmp_path / f"{scheme}.tsv"
        write_tsv(path, [r for r in rows if r["scheme"] == scheme], METRIC_COLUMNS)
        paths.append(path)
    return paths


def test_visits_of_one_patient_count_once():
    rows = [
        _row("ce", 0, "p1_v1", "P1", 0.2, 0.5, tp=1, fn=1),
        _row("ce", 0, "p1_v2", "P1", 0.4, math.nan, tp=0, fn=0, fp=2),
    ]
    rows[1]["volume_true_ml"] = 0.0  # the second visit has no lesion
    as_text = [{k: str(v) for k, v in r.items()} for r in rows]
    patient = per_patient(as_text)[("lesion", "ce", "P1")]
    assert patient["dice"] == pytest.approx(0.3)
    assert patient["sensitivity"] == pytest.approx(0.5)  # the visit without a lesion is undefined
    assert (patient["lesion_tp"], patient["lesion_fn"], patient["lesion_fp"]) == (1, 1, 2)
    assert patient["lesion_detection"] == pytest.approx(0.5)
    assert patient["dice_with_lesion"] == pytest.approx(0.2)  # only the visit with a lesion


def test_paired_test_matches_scipy_on_common_patients():
    a = {"P1": 0.1, "P2": 0.5, "P3": 0.3, "P4": 0.9, "P5": 0.2, "P6": math.nan}
    b = {"P1": 0.2, "P2": 0.7, "P3": 0.2, "P4": 0.95, "P5": 0.6, "P7": 0.1}
    t = paired_test(a, b)
    common = ["P1", "P2", "P3", "P4", "P5"]
    assert t["n"] == 5
    assert t["p"] == pytest.approx(wilcoxon([a[p] for p in common], [b[p] for p in common]).pvalue)
    assert paired_test(a, a)["p"] == 1.0


def test_summary_table_in_kohl_layout(tmp_path):
    rows = []
    for i in range(8):
        fold = i % 4
        rows.append(_row("ce", fold, f"c{i}", f"P{i}", 0.3 + 0.01 * i, 0.4))
        rows.append(_row("adversarial", fold, f"c{i}", f"P{i}", 0.5 + 0.02 * i, 0.6))
        rows.append(_row("hybrid", fold, f"c{i}", f"P{i}", 0.4, math.nan if i < 2 else 0.5))
    path = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5, "dice", 200)
    text = path.read_text()
    assert "| training scheme | loss | lesion DSC | sensitivity | specificity |" in text
    ce_dice = np.array([0.3 + 0.01 * i for i in range(8)])
    stats = read_tsv(tmp_path / "exp" / "summary.tsv")
    ce = next(s for s in stats if (s["scheme"], s["metric"], s["fold"]) == ("ce", "dice", "all"))
    low, high = float(ce["ci_low"]), float(ce["ci_high"])
    assert low < ce_dice.mean() < high and high - low < 4 * ce_dice.std(ddof=1) / np.sqrt(8)
    assert (
        f"| cross-entropy | L_mce | {ce_dice.mean():.2f} ± {ce_dice.std(ddof=1):.2f} "
        f"[{low:.2f}, {high:.2f}] (n=8)" in text
    )
    assert (
        "| hybrid | 0.5·L_mce + L_S & L_D | 0.40 ± 0.00 [0.40, 0.40] (n=8) | "
        "0.50 ± 0.00 [0.50, 0.50] (n=6) |" in text
    )
    fold0 = next(s for s in stats if (s["scheme"], s["metric"], s["fold"]) == ("ce", "dice", "0"))
    assert int(fold0["n"]) == 2 and float(fold0["mean"]) == pytest.approx((0.30 + 0.34) / 2)
    tests = read_tsv(tmp_path / "exp" / "tests.tsv")
    # the declared primary endpoint leads: its 3 comparisons, Holm-corrected among themselves
    assert "## Primary endpoint: Dice (all patients) (`evaluate.primary: dice`)" in text
    primary = [t for t in tests if t["family"] == "primary"]
    assert [(t["scheme_a"], t["scheme_b"]) for t in primary] == [
        ("ce", "adversarial"),
        ("ce", "hybrid"),
        ("adversarial", "hybrid"),
    ]
    assert all(float(t["p_holm"]) >= float(t["p"]) for t in primary)
    ce_adv = next(
        t
        for t in tests
        if (t["family"], t["metric"], t["scheme_a"], t["scheme_b"])
        == ("secondary", "sensitivity", "ce", "adversarial")
    )
    assert int(ce_adv["n"]) == 8 and float(ce_adv["p"]) < 0.05
    assert float(ce_adv["diff"]) == pytest.approx(-0.2)
    assert float(ce_adv["ci_low"]) <= -0.2 <= float(ce_adv["ci_high"])
    secondary = [t for t in tests if t["family"] == "secondary"]
    assert not any(t["metric"] == "dice" and t["test"] == "wilcoxon" for t in secondary)
    assert float(ce_adv["p_holm"]) >= float(ce_adv["p"])
    assert (tmp_path / "exp" / "plots" / "lesion_dice.png").stat().st_size > 5000


def test_every_registered_scheme_has_a_row_and_an_unknown_one_is_refused(tmp_path):
    rows = [_row(s, i % 4, f"c{i}", f"P{i}", 0.5, 0.5) for s in SCHEMES for i in range(4)]
    text = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5, "dice", 200).read_text()
    for scheme in SCHEMES.values():
        assert f"| {scheme.label} |" in text
    rows.append(_row("focal", 0, "c0", "P0", 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown scheme.*focal"):
        summarize(_write(tmp_path / "more", rows), tmp_path / "exp2", "test", 0.5, "dice", 200)


def test_the_readmes_results_table_has_the_summarys_columns_and_rows(tmp_path):
    """The README's per-patient tables are copied from a run's summary.md: same header, same
    scheme and loss cells, in the same order (a column the summary lacks would show up)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### What the default run reaches") :]
    section = section[: section.index("\n## ")]
    rows = [
        _row(scheme, i % 4, f"c{i}", f"P{i}", 0.5, 0.5)
        for scheme in ("ce", "adversarial", "hybrid")
        for i in range(8)
    ]
    text = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5, "dice", 200).read_text()

    def table(doc: str, header: str) -> list[str]:
        return doc[doc.index(header) :].split("\n\n")[0].splitlines()

    for header in ("| training scheme | loss |", "| training scheme | DSC, with a lesion |"):
        mine, written = table(section, header), table(text, header)
        assert mine[:2] == written[:2]
        keys = 2 if "loss" in header else 1  # the scheme, and in Kohl's table its loss
        assert [r.split(" | ")[:keys] for r in mine[2:]] == [
            r.split(" | ")[:keys] for r in written[2:]
        ]


def test_holm_on_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan, 0.9]) == pytest.approx([1.0, math.nan, 1.0], nan_ok=True)
    assert holm([]) == []


def test_the_bootstrap_on_a_known_small_example():
    # two patients, values 0 and 1: a drawn mean is 0, 0.5 or 1 with odds 1/4, 1/2, 1/4
    result = bootstrap_mean({"a": 0.0, "b": 1.0}, draws=4000)
    assert result["estimate"] == 0.5 and (result["low"], result["high"]) == (0.0, 1.0)
    assert np.mean(result["draws"] == 0.5) == pytest.approx(0.5, abs=0.03)
    # many patients: the interval of a mean is about mean ± 1.96 sd / sqrt(n)
    values = np.random.default_rng(1).normal(0.5, 0.2, 200)
    result = bootstrap_mean({f"p{i}": v for i, v in enumerate(values)})
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (result["high"] - result["low"]) / 2 == pytest.approx(half, rel=0.1)
    # a patient's seeds are averaged first: each patient weighs the same
    seeds = bootstrap_mean({"a": [0.0, 1.0], "b": [1.0]})
    assert seeds["estimate"] == pytest.approx(0.75)


def test_a_paired_bootstrap_keeps_the_pairing():
    rng = np.random.default_rng(0)
    base = {f"p{i}": v for i, v in enumerate(rng.uniform(0, 1, 30))}
    shifted = {p: v + 0.1 for p, v in base.items()}
    units = sorted(base)
    result = paired_bootstrap(units, mean_over(shifted), mean_over(base))
    # every patient moves by 0.1: the pairing leaves no spread at all
    assert result["diff"] == pytest.approx(0.1)
    assert result["low"] == pytest.approx(0.1) and result["high"] == pytest.approx(0.1)
    assert result["p"] == pytest.approx(1 / 2000)
    same = paired_bootstrap(units, mean_over(base), mean_over(base))
    assert same["diff"] == 0 and same["p"] == 1.0


def test_wilcoxon_n_counts_the_pairs_it_used():
    a = {"P1": 1.0, "P2": 1.0, "P3": 0.2, "P4": 0.7, "P5": 0.1}
    b = {"P1": 1.0, "P2": 1.0, "P3": 0.4, "P4": 0.3, "P5": 0.6}
    t = paired_test(a, b)  # two lesion-free patients with Dice 1 in both: no sign
    assert (t["n"], t["n_pairs"]) == (3, 5)


def test_training_seeds_are_averaged_per_patient_and_their_spread_reported(tmp_path):
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for i in range(8):
            for scheme in ("ce", "hybrid"):
                row = _row(scheme, i % 4, f"c{i}", f"P{i}", 0.4 + shift, 0.5, fp=2)
                rows.append(row | {"seed": seed})
    paths = []
    for seed in (0, 1):
        for scheme in ("ce", "hybrid"):
            path = tmp_path / f"{scheme}_{seed}.tsv"
            mine = [r for r in rows if r["seed"] == seed and r["scheme"] == scheme]
            write_tsv(path, mine, (*METRIC_COLUMNS, "seed"))
            paths.append(path)
    text = summarize(paths, tmp_path / "exp", "test", 0.5, "dice", 200).read_text()
    assert "2 training seeds (0, 1)" in text
    stats = read_tsv(tmp_path / "exp" / "summary.tsv")
    get = {(s["scheme"], s["metric"], s["fold"]): s for s in stats}
    dice = get[("ce", "dice", "all")]
    assert float(dice["mean"]) == pytest.approx(0.45) and int(dice["n"]) == 8
    assert float(dice["seed_std"]) == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert dice["n_seeds"] == "2"
    # the interval resamples seeds within patients: it spans the two seeds' values
    assert float(dice["ci_low"]) < 0.45 < float(dice["ci_high"])
    assert float(get[("ce", "lesion_fp", "all")]["mean"]) == 2  # averaged, not summed
