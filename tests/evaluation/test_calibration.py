"""The reliability diagram's bins: per case (:func:`adseg.evaluation.metrics.calibration_bins`),
pooled over cases, folds and seeds, and the figure (:mod:`adseg.evaluation.calibration`)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from adseg.evaluation.calibration import (
    POOLED_COLUMNS,
    bins_ece,
    pool,
    reliability_figure,
    write_bins,
    write_reliability,
)
from adseg.evaluation.cases import METRIC_COLUMNS, RELIABILITY_COLUMNS
from adseg.evaluation.metrics import ECE_BINS, calibration_bins, ece
from adseg.io import write_tsv
from adseg.preprocessing.qc import read_tsv


def _case(seed: int, shape=(4, 12, 12)) -> tuple[np.ndarray, np.ndarray]:
    """An expert mask and probabilities that mostly lie near 0, as a lesion's do; a few
    voxels on the bin edges and at exactly 0 and 1."""
    rng = np.random.default_rng(seed)
    prob = (rng.uniform(0, 1, shape) ** 4).astype(np.float32)
    prob.flat[: ECE_BINS + 1] = np.arange(ECE_BINS + 1) / ECE_BINS
    prob.flat[ECE_BINS + 1] = 0.0
    truth = rng.uniform(0, 1, shape) < prob * 0.8  # overconfident
    return truth, prob


def test_a_cases_bins_hold_every_voxel_and_give_its_ece():
    truth, prob = _case(0)
    bins = calibration_bins(truth, prob)
    assert [b["bin"] for b in bins] == list(range(ECE_BINS))
    assert bins[0]["p_low"] == 0.0 and bins[-1]["p_high"] == 1.0
    assert sum(b["voxels"] for b in bins) == truth.size
    assert sum(b["positives"] for b in bins) == np.count_nonzero(truth)
    assert sum(b["prob_sum"] for b in bins) == pytest.approx(float(prob.sum(dtype=np.float64)))
    assert all(b["positives"] <= b["voxels"] for b in bins)
    assert bins[-1]["voxels"] >= 1  # p = 1 falls in the last bin
    assert bins_ece(bins) == pytest.approx(ece(truth, prob), abs=1e-6)
    # Σ_k |Σ p − positives| / N by hand, on two bins
    two = [
        {"voxels": 4, "prob_sum": 0.4, "positives": 0},
        {"voxels": 6, "prob_sum": 5.4, "positives": 6},
    ]
    assert bins_ece(two) == pytest.approx((0.4 + 0.6) / 10)
    assert math.isnan(bins_ece([{"voxels": 0, "prob_sum": 0.0, "positives": 0}]))


def _fold(folder, scheme: str, fold: int, seed: int, cases: list[tuple]) -> None:
    """A fold folder as ``adseg evaluate`` leaves it: metrics.tsv and reliability.tsv."""
    ids = {"scheme": scheme, "fold": fold, "seed": seed, "domain": "A", "label": "lesion"}
    metrics, bins = [], []
    for i, (truth, prob) in enumerate(cases):
        case = ids | {"case_id": f"c{fold}{i}", "patient_id": f"P{fold}{i}"}
        metrics.append(case | {"ece": ece(truth, prob)})
        bins += [case | b for b in calibration_bins(truth, prob)]
    write_tsv(folder / "metrics.tsv", metrics, METRIC_COLUMNS)
    write_bins(folder / "reliability.tsv", bins, RELIABILITY_COLUMNS)


def test_pooled_bins_are_those_of_all_the_voxels_together(tmp_path):
    cases = {(s, f, seed): [_case(10 * f + i + seed) for i in range(2)] for s in ("ce", "hybrid")
             for f in (0, 1) for seed in (0, 1)}  # fmt: skip
    paths = []
    for (s, f, seed), fold_cases in cases.items():
        folder = tmp_path / s / f"seed_{seed}" / f"fold_{f}"
        _fold(folder, s, f, seed, fold_cases)
        paths.append(folder / "metrics.tsv")
    assert write_reliability(paths, tmp_path / "exp", ["ce", "hybrid"])
    rows = read_tsv(tmp_path / "exp" / "reliability.tsv")
    assert list(rows[0]) == list(POOLED_COLUMNS)
    assert [(r["scheme"], int(r["bin"])) for r in rows] == [
        (s, k) for s in ("ce", "hybrid") for k in range(ECE_BINS)
    ]
    for s in ("ce", "hybrid"):
        mine = [r for r in rows if r["scheme"] == s]
        every = [c for (scheme, _, _), fold_cases in cases.items() if scheme == s
                 for c in fold_cases]  # fmt: skip
        truth = np.concatenate([t.ravel() for t, _ in every])
        prob = np.concatenate([p.ravel() for _, p in every])
        whole = calibration_bins(truth, prob)
        # counts add up exactly; sums to float64's rounding (the TSV keeps every digit)
        assert [int(r["voxels"]) for r in mine] == [b["voxels"] for b in whole]
        assert [int(r["positives"]) for r in mine] == [b["positives"] for b in whole]
        assert [float(r["prob_sum"]) for r in mine] == pytest.approx(
            [b["prob_sum"] for b in whole], rel=1e-6
        )
        assert {r["cases"] for r in mine} == {str(len(every))}
        assert bins_ece(mine) == pytest.approx(ece(truth, prob), abs=1e-6)
        full = [r for r in mine if int(r["voxels"])]
        assert [float(r["frequency"]) for r in full] == pytest.approx(
            [int(r["positives"]) / int(r["voxels"]) for r in full], rel=1e-5
        )
    assert (tmp_path / "exp" / "plots" / "reliability.png").stat().st_size > 5000


def test_the_figure_draws_each_scheme_against_the_diagonal_with_its_ece():
    from matplotlib.colors import to_rgba

    from adseg.plots import plt, scheme_colour

    rows = []
    for s, seed in (("ce", 1), ("adversarial", 2)):
        truth, prob = _case(seed)
        rows += [{"scheme": s, "label": "lesion"} | b for b in calibration_bins(truth, prob)]
    pooled = pool(rows)
    fig = reliability_figure(pooled)
    top, bottom = fig.axes
    lines = {line.get_label(): line for line in top.get_lines()}
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    scales = bottom.get_yscale()
    stairs = len(bottom.patches)
    plt.close(fig)
    eces = {s: bins_ece(pooled[("lesion", s)]) for s in ("ce", "adversarial")}
    assert legend == [
        "perfect calibration",
        f"ce (ECE {eces['ce']:.3f})",
        f"adversarial (ECE {eces['adversarial']:.3f})",
    ]
    assert list(lines["perfect calibration"].get_xdata()) == [0, 1]
    ce = lines[legend[1]]
    full = [b for b in pooled[("lesion", "ce")] if b["voxels"]]
    assert list(ce.get_xdata()) == pytest.approx([b["prob_sum"] / b["voxels"] for b in full])
    assert list(ce.get_ydata()) == pytest.approx([b["positives"] / b["voxels"] for b in full])
    assert to_rgba(ce.get_color()) == to_rgba(scheme_colour("ce"))
    assert scales == "log" and stairs == 2  # the voxels per bin, one step line per scheme


def test_folds_evaluated_without_bins_leave_their_scheme_out(tmp_path, caplog):
    paths = []
    for s in ("ce", "hybrid"):
        for f in (0, 1):
            folder = tmp_path / s / f"fold_{f}"
            _fold(folder, s, f, 0, [_case(f)])
            paths.append(folder / "metrics.tsv")
    (tmp_path / "hybrid" / "fold_1" / "reliability.tsv").unlink()
    with caplog.at_level(logging.INFO, logger="adseg"):
        assert write_reliability(paths, tmp_path / "exp", ["ce", "hybrid"])
    assert "hybrid (evaluated before it was written): left out" in caplog.text
    assert {r["scheme"] for r in read_tsv(tmp_path / "exp" / "reliability.tsv")} == {"ce"}
    for s in ("ce", "hybrid"):
        (tmp_path / s / "fold_0" / "reliability.tsv").unlink(missing_ok=True)
    (tmp_path / "ce" / "fold_1" / "reliability.tsv").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adseg"):
        assert not write_reliability(paths, tmp_path / "exp2", ["ce", "hybrid"])
    assert "no reliability diagram" in caplog.text
    assert (tmp_path / "exp2" / "reliability.tsv").read_text().split("\n")[0].split("\t") == list(
        POOLED_COLUMNS
    )
    assert not (tmp_path / "exp2" / "plots" / "reliability.png").exists()
