"""The GAN tasks' table: synthesis models against held-out slices, translation models against
the real target channel of held-out patients (mean ± std over patients pooled over folds,
per-fold means, paired Wilcoxon tests between models on the same patients, box plots).

Written as ``summary.md``, ``summary.tsv`` (translation), ``tests.tsv``, ``synthesis.tsv``
and ``plots/translation_<metric>.png`` in ``<experiment>/gan/``.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from adseg.evaluation.html import write_html_twin
from adseg.evaluation.statistics import cell, describe, number, paired_test
from adseg.io import read_json, write_text, write_tsv
from adseg.plots import box_plot
from adseg.preprocessing.qc import read_tsv

TRANSLATION_METRICS = {"mae": "MAE ↓", "psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑"}
STAT_COLUMNS = ("model", "metric", "fold", "n", "mean", "std", "median")
TEST_COLUMNS = ("metric", "model_a", "model_b", "n", "median_diff", "p")
SYNTHESIS_COLUMNS = (
    "model",
    "fold",
    "loss",
    "epochs",
    "swd",
    "swd_train",
    "swd_ratio",
    "std_ratio",
    "n_test_slices",
)


def per_patient(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(model, patient) → metrics averaged over the patient's visits, and its fold."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["patient_id"])].append(r)
    return {
        key: {"fold": int(visits[0]["fold"])}
        | {m: float(np.mean([number(v[m]) for v in visits])) for m in TRANSLATION_METRICS}
        for key, visits in groups.items()
    }


def translation_tables(rows: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """Statistics per model, metric and fold (``all`` pooled), and paired tests."""
    patients = per_patient(rows)
    models = sorted({m for m, _ in patients})
    folds = sorted({p["fold"] for p in patients.values()})
    stats, tests = [], []
    for metric in TRANSLATION_METRICS:
        values = {m: {p: v[metric] for (mm, p), v in patients.items() if mm == m} for m in models}
        for m in models:
            stats.append(
                {"model": m, "metric": metric, "fold": "all"} | describe(list(values[m].values()))
            )
            for f in folds:
                in_fold = [
                    v[metric] for (mm, _), v in patients.items() if mm == m and v["fold"] == f
                ]
                stats.append({"model": m, "metric": metric, "fold": f} | describe(in_fold))
        for a, b in itertools.combinations(models, 2):
            tests.append(
                {"metric": metric, "model_a": a, "model_b": b} | paired_test(values[a], values[b])
            )
    return stats, tests, models


def synthesis_rows(model_files: list[Path]) -> list[dict]:
    """One row per trained synthesis fold, from its model.json."""
    rows = []
    for path in model_files:
        spec = read_json(path)
        ev = spec["evaluation"]
        rows.append(
            {
                "model": spec["name"],
                "fold": spec["fold"],
                "loss": spec["recipe"]["loss"],
                "epochs": spec["epochs_trained"],
                "swd": ev["swd"],
                "swd_train": ev["swd_train"],
                "swd_ratio": ev["swd"] / ev["swd_train"] if ev["swd_train"] else math.nan,
                "std_ratio": ev["std_ratio"],
                "n_test_slices": ev["n_test_slices"],
            }
        )
    return rows


def _cell(s: dict, digits: int) -> str:
    return f"{cell(s, digits)} ({s['n']})" if s["n"] else "–"


def _markdown(title: str, synth: list[dict], stats, tests, models) -> str:
    lines = [f"# {title}", ""]
    if synth:
        lines += [
            "## Synthesis: samples against the held-out patients' slices",
            "",
            "Sliced Wasserstein distance (SWD) on the [-1, 1] scale; *training SWD* is the "
            "training slices' distance to the same held-out slices, the floor a generator of the "
            "training distribution would reach. *Spread* is the samples' per-voxel standard "
            "deviation over the held-out slices' (near 0: mode collapse).",
            "",
            "| model | loss | fold | epochs | SWD ↓ | training SWD | SWD / training | spread |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in synth:
            lines.append(
                f"| {r['model']} | {r['loss']} | {r['fold']} | {r['epochs']} | {r['swd']:.4f} | "
                f"{r['swd_train']:.4f} | {r['swd_ratio']:.2f} | {r['std_ratio']:.2f} |"
            )
        lines.append("")
    if stats:
        digits = {"mae": 3, "psnr": 2, "ssim": 3}
        lines += [
            "## Translation: generated against real target channel, held-out patients",
            "",
            "Mean ± std over patients pooled over folds (n patients); on the [-1, 1] scale "
            "the generators work in, the training intensity range of the target mapped to "
            "[-1, 1] and the real target not clipped to it (PSNR with peak 2).",
            "",
            "| model | " + " | ".join(TRANSLATION_METRICS.values()) + " |",
            "|---|" + "---|" * len(TRANSLATION_METRICS),
        ]
        pooled = {(s["model"], s["metric"]): s for s in stats if s["fold"] == "all"}
        for m in models:
            cells = [_cell(pooled[(m, k)], digits[k]) for k in TRANSLATION_METRICS]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Per fold (mean):",
            "",
            "| model | metric | per-fold means |",
            "|---|---|---|",
        ]
        for m in models:
            for k in TRANSLATION_METRICS:
                folds = [
                    s for s in stats if s["model"] == m and s["metric"] == k and s["fold"] != "all"
                ]
                text = ", ".join(f"{s['fold']}: {s['mean']:.{digits[k]}f}" for s in folds if s["n"])
                lines.append(f"| {m} | {k} | {text} |")
        if tests:
            lines += ["", "Paired Wilcoxon signed-rank tests (same patients):", ""]
            lines += ["| metric | A | B | n | median A − B | p |", "|---|---|---|---|---|---|"]
            for t in tests:
                p = "–" if math.isnan(t["p"]) else f"{t['p']:.3g}"
                lines.append(
                    f"| {t['metric']} | {t['model_a']} | {t['model_b']} | {t['n']} | "
                    f"{t['median_diff']:.4g} | {p} |"
                )
    return "\n".join(lines) + "\n"


def summarize_gan(
    synthesis_models: list[str | Path], translation_metrics: list[str | Path], out, title: str
) -> Path:
    """Write the GAN tables into ``out``; return ``summary.md``.

    Raises:
        ValueError: nothing to summarise.
    """
    out = Path(out)
    synth = synthesis_rows([Path(p) for p in synthesis_models])
    rows = [r for f in translation_metrics for r in read_tsv(f)]
    if not synth and not rows:
        raise ValueError("no synthesis models and no translation metrics to summarise")
    stats, tests, models = translation_tables(rows) if rows else ([], [], [])
    write_tsv(out / "synthesis.tsv", synth, SYNTHESIS_COLUMNS)
    write_tsv(out / "summary.tsv", stats, STAT_COLUMNS)
    write_tsv(out / "tests.tsv", tests, TEST_COLUMNS)
    (out / "plots").mkdir(parents=True, exist_ok=True)  # the translation's box plots, if any
    if rows:
        patients = per_patient(rows)
        for metric, label in TRANSLATION_METRICS.items():
            values = {m: [v[metric] for (mm, _), v in patients.items() if mm == m] for m in models}
            box_plot(
                values, metric, out / "plots" / f"translation_{metric}.png", f"{label} per patient"
            )
    path = out / "summary.md"
    write_text(path, _markdown(title, synth, stats, tests, models))
    write_html_twin(path)  # for the Snakemake report
    return path


def parent_metrics(out: Path, model: str) -> dict[str, float]:
    """A GAN model's parent-run metrics from the tables just written."""
    values: dict[str, float] = {}
    for s in read_tsv(out / "summary.tsv"):
        if s["model"] == model and s["fold"] == "all":
            values |= {
                f"test/{s['metric']}": number(s["mean"]),
                f"test/{s['metric']}_std": number(s["std"]),
            }
            values[f"test/{s['metric']}_n"] = float(s["n"])
    for t in read_tsv(out / "tests.tsv"):
        if model in (t["model_a"], t["model_b"]):
            other = t["model_b"] if t["model_a"] == model else t["model_a"]
            values[f"test/{t['metric']}_p_vs_{other}"] = number(t["p"])
    synth = [r for r in read_tsv(out / "synthesis.tsv") if r["model"] == model]
    for key in ("swd", "swd_train", "swd_ratio", "std_ratio"):
        spread = describe([number(r[key]) for r in synth])
        if spread["n"]:
            values[f"test/{key}"] = spread["mean"]
    return {k: v for k, v in values.items() if not math.isnan(v)}
