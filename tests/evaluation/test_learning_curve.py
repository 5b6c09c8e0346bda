"""The learning-curve table: the shares' summaries gathered, patients counted from the models."""

from __future__ import annotations

import json

import pytest

from adseg.data.shares import share_name
from adseg.evaluation.learning_curve import gather, write_learning_curve
from adseg.io import write_tsv
from adseg.preprocessing.qc import read_tsv

STATS = ("label", "scheme", "metric", "fold", "n", "mean", "std", "median", "ci_low", "ci_high")
TESTS = ("family", "label", "metric", "scheme_a", "scheme_b", "diff", "ci_low", "ci_high", "p")


def _experiment(tmp_path, values: dict[float, dict[str, float]]):
    """An experiment folder: 8 patients, 2 folds, each share's models and summary."""
    exp = tmp_path / "exp"
    cases = {f"c{p}": {"patient_id": f"P{p}"} for p in range(8)}
    (exp / "preprocessed").mkdir(parents=True)
    (exp / "preprocessed" / "dataset.json").write_text(json.dumps({"cases": cases}))
    for fraction, by_scheme in values.items():
        summary = exp if fraction == 1 else exp / "learning_curve" / share_name(fraction)
        stats, tests = [], []
        for scheme, mean in by_scheme.items():
            for fold in range(2):
                run = f"fold_{fold}" if fraction == 1 else f"{share_name(fraction)}/fold_{fold}"
                n_train = max(1, round(4 * fraction))
                train = [f"c{4 * fold + i}" for i in range(n_train)]
                (exp / scheme / run).mkdir(parents=True)
                (exp / scheme / run / "model.json").write_text(json.dumps({"train_cases": train}))
            row = {"label": "lesion", "scheme": scheme, "fold": "all", "n": 8, "mean": mean}
            stats.append(row | {"metric": "lesion_ap", "ci_low": mean - 0.1, "ci_high": mean + 0.1})
            stats.append(row | {"metric": "dice", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6})
        a, b = list(by_scheme)[:2]
        diff = by_scheme[a] - by_scheme[b]
        tests.append(
            {"family": "primary", "label": "lesion", "metric": "lesion_ap", "scheme_a": a}
            | {"scheme_b": b, "diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1}
            | {"p": 0.04, "p_holm": 0.04}
        )
        summary.mkdir(parents=True, exist_ok=True)
        write_tsv(summary / "summary.tsv", stats, STATS)
        write_tsv(summary / "tests.tsv", tests, (*TESTS, "p_holm"))
    return exp


def test_the_table_has_each_scheme_at_each_share_with_its_training_patients(tmp_path):
    values = {0.25: {"ce": 0.1, "hybrid": 0.2}, 0.5: {"ce": 0.3, "hybrid": 0.25}}
    values[1.0] = {"ce": 0.5, "hybrid": 0.4}
    exp = _experiment(tmp_path, values)
    rows, diffs = gather(exp, [0.25, 0.5], "lesion_ap")
    got = {(r["scheme"], r["fraction"]): r for r in rows}
    assert set(got) == {(s, f) for f in (0.25, 0.5, 1.0) for s in ("ce", "hybrid")}
    assert got[("hybrid", 0.25)]["mean"] == pytest.approx(0.2)
    assert got[("ce", 0.5)]["ci_high"] == pytest.approx(0.4)
    # patients counted from each fold's model.json: 1, 2 and 4 of the 4 training patients
    assert [got[("ce", f)]["train_patients"] for f in (0.25, 0.5, 1.0)] == [1, 2, 4]
    assert {r["test_patients"] for r in rows} == {8}
    assert sorted(d["fraction"] for d in diffs) == [0.25, 0.5, 1.0]
    assert next(d for d in diffs if d["fraction"] == 0.25)["diff"] == pytest.approx(-0.1)

    md = write_learning_curve(exp, [0.25, 0.5], "lesion_ap", "tiny: learning curve")
    text = md.read_text()
    assert "| cross-entropy | 0.10 [0.00, 0.20] | 0.30 [0.20, 0.40] | 0.50 [0.40, 0.60] |" in text
    assert "| 25 % | ce − hybrid | -0.100 [-0.200, " in text
    out = exp / "learning_curve"
    assert (out / "learning_curve.png").stat().st_size > 5_000
    assert "<table>" in (out / "learning_curve.html").read_text()
    assert len(read_tsv(out / "learning_curve.tsv")) == 6


def test_a_missing_share_is_named(tmp_path):
    exp = _experiment(tmp_path, {1.0: {"ce": 0.5, "hybrid": 0.4}})
    with pytest.raises(FileNotFoundError, match="frac_25"):
        gather(exp, [0.25], "lesion_ap")
