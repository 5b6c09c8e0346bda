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
from adseg.training.segmentor import LOG_COLUMNS


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
    """The README's per-patient tables are copied from the default run's summary.md: same
    header, same scheme and loss cells, in the same order (a column the summary lacks would
    show up), for the default config's schemes."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### What the default run reaches") :]
    section = section[: section.index("\n## ")]
    import yaml

    root = Path(__file__).resolve().parents[2]
    schemes = yaml.safe_load((root / "config" / "config.yaml").read_text())["schemes"]
    rows = [_row(scheme, i % 4, f"c{i}", f"P{i}", 0.5, 0.5) for scheme in schemes for i in range(8)]
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


# --- training: convergence and the discriminator ------------------------------------------

# per fold: validation Dice on epochs 2, 4, 6, 8; D's loss on epochs 3-8 (1-2: warm-up, no D)
VAL = {
    "ce": ([0.3, 0.5, 0.7, 0.72], [0.2, 0.4, 0.6, 0.64]),
    "adversarial": ([0.5, 0.6, 0.65, 0.66], [0.4, 0.5, 0.58, 0.6]),
}
LOSS_D = ([1.0, 1.1, 1.2, 1.3, 1.2, 1.1], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
LOGITS = ((1.0, -1.0), (0.0, 0.0))  # D's mean (real, fake) logits, every epoch, per fold


def _log(scheme: str, fold: int) -> list[dict]:
    rows = []
    for e in range(1, 9):
        row = {"epoch": e, "phase": "supervised", "loss_s": 1.0 / e, "val_dice": None}
        if e % 2 == 0:
            row["val_dice"] = VAL[scheme][fold][e // 2 - 1]
        if scheme == "adversarial" and e > 2:
            real, fake = LOGITS[fold]
            row |= {"phase": "adversarial", "loss_d": LOSS_D[fold][e - 3]}
            row |= {"d_real": real, "d_fake": fake}
        rows.append(row)
    return rows


def _model_folders(tmp_path) -> list:
    """<exp>/<scheme>/fold_k/ with metrics.tsv, model.json and training_log.tsv: ce and
    adversarial (nonsaturating D) on 2 folds, and the threshold rule with its fit's log."""
    from adseg.io import write_json
    from adseg.training.threshold import LOG_COLUMNS as RULE_COLUMNS

    paths = []
    for scheme in ("ce", "adversarial", "threshold"):
        for fold in (0, 1):
            folder = tmp_path / "exp" / scheme / f"fold_{fold}"
            rows = [_row(scheme, fold, f"c{fold}{i}", f"P{fold}{i}", 0.5, 0.5) for i in range(4)]
            write_tsv(folder / "metrics.tsv", rows, METRIC_COLUMNS)
            d = {"loss": "nonsaturating", "input": "maps"} if scheme == "adversarial" else None
            name = "ThresholdRule" if scheme == "threshold" else "UNet"
            spec = {"scheme": scheme, "fold": fold, "seed": 0, "network": {"name": name}}
            write_json(folder / "model.json", spec | {"discriminator": d})
            if scheme == "threshold":
                step = dict.fromkeys(RULE_COLUMNS, 1)
                write_tsv(folder / "training_log.tsv", [step], RULE_COLUMNS)
            else:
                write_tsv(folder / "training_log.tsv", _log(scheme, fold), LOG_COLUMNS)
            paths.append(folder / "metrics.tsv")
    return paths


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_the_summary_shows_whether_training_converged_and_d_learned(tmp_path):
    paths = _model_folders(tmp_path)
    exp = tmp_path / "exp"
    text = summarize(paths, exp, "test", 0.5, "dice", 200).read_text()
    # by hand: the mean over the two folds of the last (epoch 8) and previous (6) val Dice
    ce_last, ce_prev = (0.72 + 0.64) / 2, (0.7 + 0.6) / 2
    adv_last, adv_prev = (0.66 + 0.6) / 2, (0.65 + 0.58) / 2
    # D's loss over epochs 4-8, per fold, then the mean over folds
    d0, d1 = (1.1 + 1.2 + 1.3 + 1.2 + 1.1) / 5, (0.6 + 0.7 + 0.8 + 0.9 + 1.0) / 5
    gap = ((_sigmoid(1.0) - _sigmoid(-1.0)) + 0.0) / 2
    assert (d0, d1) == (pytest.approx(1.18), pytest.approx(0.8))
    section = text[text.index("## Training: convergence and the discriminator") :]
    section = section[: section.index("\n## ")]
    assert text.index("## Primary endpoint") < text.index("## Training") < text.index("## lesion")
    assert (
        f"| cross-entropy | 2 | 8 | {ce_last:.3f} (8) | {ce_prev:.3f} (6) | "
        f"+{ce_last - ce_prev:.3f} | no D | – | – |" in section
    )
    assert (
        f"| adversarial | 2 | 8 | {adv_last:.3f} (8) | {adv_prev:.3f} (6) | "
        f"+{adv_last - adv_prev:.3f} | {(d0 + d1) / 2:.3f} [{d1:.3f}–{d0:.3f}] | "
        f"1.386 (2 ln 2) | +{gap:.3f} |" in section
    )
    assert "threshold" not in section
    rows = read_tsv(exp / "training.tsv")
    assert [(r["scheme"], r["fold"]) for r in rows] == [
        ("ce", "0"),
        ("ce", "1"),
        ("adversarial", "0"),
        ("adversarial", "1"),
    ]
    adv0 = rows[2]
    assert (adv0["epochs"], adv0["last_val_epoch"], adv0["previous_val_epoch"]) == ("8", "8", "6")
    assert float(adv0["last_val_dice"]) == 0.66 and float(adv0["previous_val_dice"]) == 0.65
    assert float(adv0["d_loss_last5"]) == pytest.approx(d0)
    assert float(adv0["d_gap_last5"]) == pytest.approx(_sigmoid(1.0) - _sigmoid(-1.0), abs=1e-5)
    assert rows[0]["d_loss_last5"] == rows[0]["d_gap_last5"] == ""  # no D
    assert (exp / "plots" / "training_curves.png").stat().st_size > 5000


def test_the_training_figure_colours_runs_by_scheme_and_draws_ds_chance(tmp_path):
    from matplotlib.colors import to_rgba

    from adseg.evaluation.convergence import read_run, training_figure
    from adseg.plots import plt

    folders = [p.parent for p in _model_folders(tmp_path)]
    runs = [r for r in map(read_run, folders) if r is not None]
    assert [(r.scheme, r.fold) for r in runs] == [
        ("ce", 0),
        ("ce", 1),
        ("adversarial", 0),
        ("adversarial", 1),
    ]
    fig = training_figure(runs)
    left, right = fig.axes
    dice = [(to_rgba(line.get_color()), list(line.get_ydata())) for line in left.get_lines()]
    d_lines = {line.get_label(): list(line.get_ydata()) for line in right.get_lines()}
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    title = fig.get_suptitle()
    plt.close(fig)
    assert [y for _, y in dice] == [*VAL["ce"], *VAL["adversarial"]]
    assert dice[0][0] == dice[1][0] != dice[2][0] == dice[3][0]  # one colour per scheme
    assert legends == [
        ["ce (2 runs)", "adversarial (2 runs)"],
        ["adversarial (2 runs)", "chance: 2 ln 2 = 1.386"],
    ]
    assert d_lines["adversarial (2 runs)"] == LOSS_D[0]
    assert d_lines["chance: 2 ln 2 = 1.386"] == pytest.approx([2 * math.log(2)] * 2)
    assert labels == [("epoch", "Dice"), ("epoch", "L_D (epoch mean)")]
    assert title


def test_folders_without_training_logs_leave_the_section_out(tmp_path):
    from adseg.evaluation.convergence import read_run

    rows = [_row(s, i % 2, f"c{i}", f"P{i}", 0.5, 0.5) for s in ("ce", "hybrid") for i in range(4)]
    text = summarize(_write(tmp_path, rows), tmp_path / "exp", "test", 0.5, "dice", 200).read_text()
    assert "## Training" not in text
    assert read_tsv(tmp_path / "exp" / "training.tsv") == []
    assert not (tmp_path / "exp" / "plots" / "training_curves.png").exists()
    # a threshold rule is left out by its network's name, whatever its log holds
    folder = _model_folders(tmp_path / "t")[0].parent
    assert read_run(folder) is not None
    spec = folder / "model.json"
    spec.write_text(spec.read_text().replace('"UNet"', '"ThresholdRule"'))
    assert read_run(folder) is None


def test_ds_chance_level_is_its_loss_on_scores_that_tell_nothing_apart():
    import torch

    from adseg.evaluation.convergence import CHANCE
    from adseg.training.losses import ADVERSARIAL_LOSSES, discriminator_loss

    undecided = torch.zeros(4)  # logit 0: sigma = 0.5 for real and fake alike
    for loss, (value, _) in CHANCE.items():
        if loss in ADVERSARIAL_LOSSES:
            for target in (1.0, 0.9):  # one-sided smoothing does not move it
                got = float(discriminator_loss(loss, undecided, undecided, target))
                assert got == pytest.approx(value), (loss, target)
    assert CHANCE["nonsaturating"][0] == pytest.approx(1.386, abs=1e-3)
    assert "lsgan" not in CHANCE and "wgan-gp" not in CHANCE


# --- calibration: the reliability diagram ---------------------------------------------------


def _with_bins(paths: list) -> None:
    """Write reliability.tsv beside each metrics.tsv: the bins of each case's probabilities,
    a scheme's a little less calibrated the later it is in SCHEMES."""
    from adseg.evaluation.calibration import write_bins
    from adseg.evaluation.cases import RELIABILITY_COLUMNS
    from adseg.evaluation.metrics import calibration_bins

    for path in paths:
        bins = []
        for i, row in enumerate(read_tsv(path)):
            rng = np.random.default_rng(i)
            prob = (rng.uniform(0, 1, (3, 10, 10)) ** 3).astype(np.float32)
            shrink = 1 - 0.2 * list(SCHEMES).index(row["scheme"]) / len(SCHEMES)
            truth = rng.uniform(0, 1, prob.shape) < prob * shrink
            bins += [row | {"seed": 0} | b for b in calibration_bins(truth, prob)]
        write_bins(path.parent / "reliability.tsv", bins, RELIABILITY_COLUMNS)


def test_the_summary_draws_each_schemes_pooled_reliability(tmp_path):
    from adseg.evaluation.calibration import bins_ece
    from adseg.evaluation.metrics import ECE_BINS

    paths = _model_folders(tmp_path)
    _with_bins(paths)
    exp = tmp_path / "exp"
    text = summarize(paths, exp, "test", 0.5, "dice", 200).read_text()
    assert "plots/reliability.png draws the ECE's bins pooled over each scheme's" in text
    assert (exp / "plots" / "reliability.png").stat().st_size > 5000
    pooled = read_tsv(exp / "reliability.tsv")
    schemes = [s for s in SCHEMES if s in ("ce", "adversarial", "threshold")]
    assert [(r["scheme"], r["bin"]) for r in pooled] == [
        (s, str(k)) for s in schemes for k in range(ECE_BINS)
    ]
    for s in schemes:
        mine = [r for r in pooled if r["scheme"] == s]
        folds = [read_tsv(p.parent / "reliability.tsv") for p in paths if p.parts[-3] == s]
        # 2 folds of 4 cases of 300 voxels: pooled by adding, nothing lost or counted twice
        assert sum(int(r["voxels"]) for r in mine) == 2 * 4 * 300
        assert [int(r["positives"]) for r in mine] == [
            sum(int(b["positives"]) for f in folds for b in f if b["bin"] == r["bin"]) for r in mine
        ]
        sums = [
            sum(float(b["prob_sum"]) for f in folds for b in f if b["bin"] == r["bin"])
            for r in mine
        ]
        assert [float(r["prob_sum"]) for r in mine] == pytest.approx(sums, rel=1e-12)
        by_hand = sum(abs(p - int(r["positives"])) for p, r in zip(sums, mine, strict=True))
        by_hand /= 8 * 300
        assert bins_ece(mine) == pytest.approx(by_hand, rel=1e-9)


def test_summaries_of_folds_evaluated_before_reliability_files_still_work(tmp_path):
    paths = _model_folders(tmp_path)
    exp = tmp_path / "exp"
    text = summarize(paths, exp, "test", 0.5, "dice", 200).read_text()
    assert "| cross-entropy |" in text and "reliability" not in text
    assert read_tsv(exp / "reliability.tsv") == []
    assert not (exp / "plots" / "reliability.png").exists()
