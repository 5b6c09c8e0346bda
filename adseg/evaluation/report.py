"""``summary.md``: the cross-validation summary's tables for people (:mod:`.summary` computes
them; the same numbers are in summary.tsv and tests.tsv)."""

from __future__ import annotations

import math

from adseg.evaluation.convergence import LAST
from adseg.evaluation.endpoints import COHORT_DRAWS, COHORT_METRICS
from adseg.evaluation.statistics import CI_LEVEL, DERIVED, KOHL_METRICS
from adseg.training.schemes import SCHEMES

NAMES = {
    "lesion_ap": "lesion-level AP",
    "patient_auroc": "patient-level AUROC",
    "ranking_score": "ranking score (AUROC + AP) / 2",
    "froc_sens_fp0.5": "FROC sensitivity at 0.5 FP per scan",
    "froc_sens_fp1": "FROC sensitivity at 1 FP per scan",
    "froc_sens_fp2": "FROC sensitivity at 2 FP per scan",
    "dice": "Dice (all patients)",
    "dice_with_lesion": "Dice (patients with a lesion)",
    "sensitivity": "voxel sensitivity",
    "lesion_detection": "share of expert lesions detected",
    "lesion_fp": "false-positive lesions per patient",
    "patient_specificity": "patient-level specificity",
}
# the per-patient detection and calibration table beside Kohl's
DETECTION_TABLE = (
    ("dice_with_lesion", "DSC, with a lesion"),
    ("lesion_detection", "lesions found"),
    ("lesion_fp", "FP lesions / patient"),
    ("patient_specificity", "patient specificity"),
    ("gland_specificity", "gland specificity"),
    ("ece", "ECE"),
    ("brier", "Brier"),
)
COHORT_TABLE = (
    ("lesion_ap", "lesion AP"),
    ("patient_auroc", "patient AUROC"),
    ("ranking_score", "ranking score"),
    ("froc_sens_fp0.5", "sens. @0.5 FP"),
    ("froc_sens_fp1", "sens. @1 FP"),
    ("froc_sens_fp2", "sens. @2 FP"),
)
# the secondary comparisons summary.md shows (tests.tsv holds all)
SHOWN_TESTS = (*KOHL_METRICS, "dice_with_lesion", "lesion_fp", "patient_specificity")


def _f(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def ci(row: dict, digits: int = 2) -> str:
    """``[low, high]`` of a row's interval, ``–`` if undefined."""
    if math.isnan(row.get("ci_low", math.nan)):
        return "–"
    return f"[{_f(row['ci_low'], digits)}, {_f(row['ci_high'], digits)}]"


def cell(row: dict, digits: int = 2) -> str:
    """``mean ± std [low, high] (n=N)`` of a pooled per-patient row."""
    if not row or not row["n"]:
        return "–"
    return f"{_f(row['mean'], digits)} ± {_f(row['std'], digits)} {ci(row, digits)} (n={row['n']})"


def markdown(
    stats,
    tests,
    labels,
    schemes,
    folds,
    seeds,
    title,
    hybrid_weight,
    primary,
    main,
    draws,
    training: list[dict] | None = None,
    reliability: bool = False,
) -> str:
    """The whole summary.md; ``training``: the rows of
    :func:`adseg.evaluation.convergence.by_scheme` (none: the section is left out);
    ``reliability``: plots/reliability.png was drawn."""
    get = {(s["label"], s["scheme"], s["metric"], str(s["fold"])): s for s in stats}
    level = f"{CI_LEVEL:.0%}"
    seed_text = (
        f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}); ±seed: the std of a value "
        "between seeds; intervals resample patients and, per patient, seeds"
        if len(seeds) > 1
        else f"one training seed ({seeds[0]}); `train.seeds` adds more"
    )
    lines = [f"# {title}", ""]
    lines.append(
        f"{len(folds)}-fold patient-level cross-validation, {seed_text}. Every model was "
        "selected (validation Dice, best checkpoint, collapse checks) on its fold's inner "
        "validation patients only; test patients are used here, once. Cells: mean ± std over "
        f"patients, pooled over the folds (a patient's visits averaged), [{level} interval: "
        f"patient bootstrap, {draws} draws; the cohort metrics {min(draws, COHORT_DRAWS)}], "
        "n = patients with a defined value. Empty-mask conventions: "
        "adseg/evaluation/metrics.py."
    )
    lines += _primary(get, tests, schemes, seeds, primary, main, level)
    if training:
        lines += _training(training)
    if any(s["metric"] in COHORT_METRICS for s in stats):
        lines += ["", "## Lesion detection, PI-CAI protocol (picai_eval; secondary)", ""]
        lines += _table(get, main, schemes, COHORT_TABLE, lambda r: f"{_f(r['mean'])} {ci(r)}")
        lines.append("")
        lines.append(
            "Per scan (a patient's visits count apart), lesion candidates from each softmax "
            "map (report_guided_annotation, dynamic-fast); intervals over patients. "
            "adseg/evaluation/detection.py."
        )
    for label in labels:
        lines += ["", f"## {label} (secondary)", ""]
        lines.append(f"| training scheme | loss | {label} DSC | sensitivity | specificity |")
        lines.append("|---|---|---|---|---|")
        for s in schemes:
            name, loss = SCHEMES[s].label, SCHEMES[s].loss.replace("λ", f"{hybrid_weight:g}")
            cells = [cell(get.get((label, s, m, "all"), {})) for m in KOHL_METRICS]
            lines.append(f"| {name} | {loss} | " + " | ".join(cells) + " |")
        lines += ["", "Detection and calibration per patient:", ""]
        lines += _table(get, label, schemes, DETECTION_TABLE, cell)
        lines += _per_fold(get, label, schemes, folds)
    shown = [t for t in tests if t["family"] == "secondary" and t["metric"] in SHOWN_TESTS]
    lines += ["", "## Secondary comparisons", ""]
    lines.append(
        f"Every comparison but the primary one: {sum(t['family'] == 'secondary' for t in tests)}"
        " in tests.tsv, Holm-corrected as one family (p Holm). Per-patient metrics: paired "
        "Wilcoxon signed-rank test (n = pairs it used: pairs with no difference carry no sign); "
        f"A − B is the difference of the means with its {level} bootstrap interval."
    )
    lines += ["", *_tests_table(shown)]
    lines += [
        "",
        "Box plots: plots/<label>_<metric>.png. All statistics: summary.tsv, tests.tsv.",
        "lesion_detection = detected / expert lesions per patient; lesion_fp = false "
        "positive components per patient; patient specificity = lesion-free patients with "
        "nothing predicted.",
    ]
    if reliability:
        lines.append(
            "ECE and Brier: calibration of each label's probabilities over every voxel of a "
            "case; plots/reliability.png draws the ECE's bins pooled over each scheme's cases, "
            "folds and seeds (reliability.tsv), with the pooled ECE in its key."
        )
    lines.append("")
    return "\n".join(lines)


def _primary(get, tests, schemes, seeds, primary, main, level) -> list[str]:
    name = NAMES.get(primary, primary)
    lines = [
        "",
        f"## Primary endpoint: {name} (`evaluate.primary: {primary}`)",
        "",
        "Declared in the config before the run. Its comparisons are Holm-corrected among "
        "themselves; every other number below is secondary.",
        "",
        f"| training scheme | {name} | {level} interval | ±seed | n |",
        "|---|---|---|---|---|",
    ]
    for s in schemes:
        r = get.get((main, s, primary, "all"))
        if r:
            lines.append(
                f"| {SCHEMES[s].label} | {_f(r['mean'])} | {ci(r)} | {_f(r['seed_std'])} "
                f"| {r['n']} |"
            )
    rows = [t for t in tests if t["family"] == "primary"]
    lines += ["", f"| A | B | A − B | {level} interval | p (bootstrap) | p Holm |"]
    lines.append("|---|---|---|---|---|---|")
    for t in rows:
        lines.append(
            f"| {t['scheme_a']} | {t['scheme_b']} | {_f(t['diff'], 3)} | "
            f"{ci(t, 3)} | {_p(t['p'])} | {_p(t['p_holm'])} |"
        )
    return lines


def _training(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## Training: convergence and the discriminator",
        "",
        "From each model's training_log.tsv (per run: training.tsv; every curve: "
        "plots/training_curves.png); means over folds and seeds. Inner-validation Dice at the "
        "last validation epoch and the one before: a plateau shows as a small change. D's "
        f"loss L_D over the last {LAST} epochs it logged [min–max over runs] beside L_D at "
        "chance, that of a D scoring real and fake alike (cross-entropy losses: ln 2 a term "
        "at σ = 0.5 whatever the real_label smoothing; – where none is stated), and "
        "σ(D(real)) − σ(D(fake)) over those epochs (σ of the epoch-mean logits; – where the "
        "scores are no logits). Below chance with a positive gap, D tells S's maps from the "
        "expert's; at chance with a gap near 0 it does not (S fools it, or it never learned).",
        "",
        "| training scheme | runs | epochs | val Dice, last (epoch) | before (epoch) | "
        f"change | L_D, last {LAST} [min–max] | L_D at chance | σ(D(real)) − σ(D(fake)) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            SCHEMES[r["scheme"]].label,
            str(r["runs"]),
            r["epochs"],
            f"{_f(r['last_val_dice'], 3)} ({r['last_val_epoch']})",
            f"{_f(r['previous_val_dice'], 3)} ({r['previous_val_epoch']})",
            _signed(r["val_change"]),
        ]
        if r["adversarial"]:
            d = f"{_f(r['d_loss'], 3)} [{_f(r['d_loss_min'], 3)}–{_f(r['d_loss_max'], 3)}]"
            chance = "–" if r["chance"] is None else f"{r['chance'][0]:.3f} ({r['chance'][1]})"
            cells += [d, chance, _signed(r["d_gap"])]
        else:
            cells += ["no D", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _signed(x) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:+.3f}"


def _table(get, label, schemes, columns, fmt) -> list[str]:
    lines = ["| training scheme | " + " | ".join(c[1] for c in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for s in schemes:
        cells = [
            fmt(get[(label, s, m, "all")]) if (label, s, m, "all") in get else "–"
            for m, _ in columns
        ]
        lines.append(f"| {SCHEMES[s].label} | " + " | ".join(cells) + " |")
    return lines


def _per_fold(get, label, schemes, folds) -> list[str]:
    lines = [
        "",
        "Per fold (mean; n):",
        "",
        "| scheme | metric | all | median | ±seed | "
        + " | ".join(f"fold {f}" for f in folds)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(folds),
    ]
    for s in schemes:
        for m in DERIVED:
            a = get.get((label, s, m, "all"))
            if not a:
                continue
            per = [get[(label, s, m, str(f))] for f in folds]
            fold_cells = [f"{p['mean']:.3f}; {p['n']}" if p["n"] else "–" for p in per]
            median = "–" if not a["n"] else f"{a['median']:.3f}"
            lines.append(
                f"| {s} | {m} | {cell(a, 3)} | {median} | {_f(a['seed_std'], 3)} | "
                + " | ".join(fold_cells)
                + " |"
            )
    return lines


def _tests_table(tests: list[dict]) -> list[str]:
    lines = [
        "| metric | A | B | test | n | A − B [interval] | p | p Holm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        lines.append(
            f"| {t['metric']} | {t['scheme_a']} | {t['scheme_b']} | {t['test']} | {t['n']} | "
            f"{_f(t['diff'], 3)} {ci(t, 3)} | {_p(t['p'])} | {_p(t['p_holm'])} |"
        )
    return lines
