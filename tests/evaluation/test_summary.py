"""The per-patient statistics (:mod:`adseg.evaluation.statistics`) and the cross-validation
summary table built from them (:mod:`adseg.evaluation.summary`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from adseg.evaluation.cases import METRIC_COLUMNS
from adseg.evaluation.statistics import paired_test, per_patient
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
    path = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5)
    text = path.read_text()
    assert "| training scheme | loss | lesion DSC | sensitivity | specificity |" in text
    ce_dice = np.array([0.3 + 0.01 * i for i in range(8)])
    assert (
        f"| cross-entropy | L_mce | {ce_dice.mean():.2f} ± {ce_dice.std(ddof=1):.2f} (n=8)" in text
    )
    assert "| hybrid | 0.5·L_mce + L_S & L_D | 0.40 ± 0.00 (n=8) | 0.50 ± 0.00 (n=6) |" in text
    stats = read_tsv(tmp_path / "exp" / "summary.tsv")
    fold0 = next(s for s in stats if (s["scheme"], s["metric"], s["fold"]) == ("ce", "dice", "0"))
    assert int(fold0["n"]) == 2 and float(fold0["mean"]) == pytest.approx((0.30 + 0.34) / 2)
    tests = read_tsv(tmp_path / "exp" / "tests.tsv")
    ce_adv = next(
        t
        for t in tests
        if (t["metric"], t["scheme_a"], t["scheme_b"]) == ("dice", "ce", "adversarial")
    )
    assert int(ce_adv["n"]) == 8 and float(ce_adv["p"]) < 0.05
    assert (tmp_path / "exp" / "plots" / "lesion_dice.png").stat().st_size > 5000


def test_every_registered_scheme_has_a_row_and_an_unknown_one_is_refused(tmp_path):
    rows = [_row(s, i % 4, f"c{i}", f"P{i}", 0.5, 0.5) for s in SCHEMES for i in range(4)]
    text = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5).read_text()
    for scheme in SCHEMES.values():
        assert f"| {scheme.label} |" in text
    rows.append(_row("focal", 0, "c0", "P0", 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown scheme.*focal"):
        summarize(_write(tmp_path / "more", rows), tmp_path / "exp2", "test", 0.5)


def test_the_readmes_results_table_has_the_summarys_columns_and_rows(tmp_path):
    """The README's table is copied from a run's summary.md: same header, same scheme and
    loss cells, in the same order (a column the summary lacks would show up here)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### What the default run reaches") :]
    table = [line for line in section.split("\n\n")[2].splitlines() if line.startswith("|")]
    rows = [
        _row(scheme, i % 4, f"c{i}", f"P{i}", 0.5, 0.5)
        for scheme in ("ce", "adversarial", "hybrid")
        for i in range(8)
    ]
    text = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5).read_text()
    written = text[text.index("| training scheme") :].split("\n\n")[0].splitlines()
    assert table[:2] == written[:2]
    assert [r.split(" | ")[:2] for r in table[2:]] == [r.split(" | ")[:2] for r in written[2:]]
