"""The small-data study: the primary endpoint against the number of training patients.

Kohl et al. (2017) argue that adversarial training helps most when labelled patients are
few. The learning-curve study (``learning_curve.fractions``) trains every scheme again on
shares of each fold's training patients (:func:`adseg.data.splits.training_share`: nested,
stratified, seeded), tests each on the same held-out patients, and summarises each share as
the experiment itself is summarised (``adseg summarize``: the same bootstrap intervals,
paired differences and Holm correction). This module gathers the shares' summaries into one
table (``learning_curve.tsv``, ``learning_curve.md``) and one figure
(``learning_curve.png``).

A share's folder is ``<experiment>/learning_curve/frac_<percent>/`` (its summary); the full
share is the experiment's own summary.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from adseg.data.shares import share_name
from adseg.evaluation.html import write_html_twin
from adseg.evaluation.report import NAMES
from adseg.evaluation.statistics import number
from adseg.io import read_json, write_text, write_tsv
from adseg.preprocessing.qc import read_tsv
from adseg.training.schemes import SCHEMES

FOLDER = "learning_curve"
COLUMNS = (
    "scheme",
    "fraction",
    "train_patients",
    "train_patients_min",
    "train_patients_max",
    "test_patients",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
)
DIFF_COLUMNS = ("fraction", "scheme_a", "scheme_b", "metric", "diff", "ci_low", "ci_high", "p_holm")


def share_summary(exp_dir: Path, fraction: float) -> Path:
    """The folder of a share's summary (the experiment's own for the full share)."""
    return exp_dir if fraction >= 1 else exp_dir / FOLDER / share_name(fraction)


def _train_patients(exp_dir: Path, scheme: str, fraction: float) -> list[int]:
    """Training patients of each of a scheme's folds at ``fraction`` (from model.json)."""
    cases = read_json(exp_dir / "preprocessed" / "dataset.json")["cases"]
    below = exp_dir / scheme if fraction >= 1 else exp_dir / scheme / share_name(fraction)
    counts = []
    for spec_file in sorted(below.glob("fold_*/model.json")):
        spec = read_json(spec_file)
        counts.append(len({cases[c]["patient_id"] for c in spec["train_cases"]}))
    if not counts:
        raise FileNotFoundError(f"{below}: no fold_<k>/model.json; train the share first")
    return counts


def gather(exp_dir: str | Path, fractions: list[float], primary: str) -> tuple[list, list]:
    """The table's rows: per scheme and share, the primary endpoint on all test patients with
    its interval; and per share, the primary endpoint's paired differences (Holm-corrected
    within the share's summary).

    Raises:
        FileNotFoundError: a share's summary or models are missing.
    """
    exp_dir = Path(exp_dir)
    rows, diffs = [], []
    for fraction in sorted({*fractions, 1.0}):
        folder = share_summary(exp_dir, fraction)
        if not (folder / "summary.tsv").is_file():
            raise FileNotFoundError(f"{folder / 'summary.tsv'}: missing; summarise the share")
        stats = read_tsv(folder / "summary.tsv")
        labels = sorted({s["label"] for s in stats})
        main = "lesion" if "lesion" in labels else labels[0]
        for s in stats:
            if s["label"] != main or s["metric"] != primary or s["fold"] != "all":
                continue
            train = _train_patients(exp_dir, s["scheme"], fraction)
            rows.append(
                {
                    "scheme": s["scheme"],
                    "fraction": fraction,
                    "train_patients": float(np.mean(train)),
                    "train_patients_min": min(train),
                    "train_patients_max": max(train),
                    "test_patients": int(s["n"]),
                    "metric": primary,
                    "mean": number(s["mean"]),
                    "ci_low": number(s["ci_low"]),
                    "ci_high": number(s["ci_high"]),
                }
            )
        for t in read_tsv(folder / "tests.tsv"):
            if t["family"] == "primary":
                diffs.append(
                    {"fraction": fraction, **{k: t[k] for k in DIFF_COLUMNS if k in t}}
                    | {k: number(t[k]) for k in ("diff", "ci_low", "ci_high", "p_holm")}
                )
    if not rows:
        raise ValueError(f"{exp_dir}: no summary row of the primary endpoint {primary}")
    order = list(SCHEMES)
    rows.sort(key=lambda r: (order.index(r["scheme"]), r["fraction"]))
    return rows, diffs


def markdown(rows: list[dict], diffs: list[dict], title: str) -> str:
    """learning_curve.md: the endpoint per scheme and share, then each share's differences."""
    metric = rows[0]["metric"]
    fractions = sorted({r["fraction"] for r in rows})
    patients = {f: next(r for r in rows if r["fraction"] == f) for f in fractions}
    head = [f"{100 * f:g} % ({_patients(patients[f])} patients)" for f in fractions]
    lines = [
        f"# {title}",
        "",
        f"{NAMES.get(metric, metric)} (`{metric}`) on the same "
        f"{rows[0]['test_patients']} held-out patients at every share of each fold's training "
        "patients (mean training patients per fold, range over folds), with its 95 % "
        "patient-bootstrap interval. Validation patients (model selection) are the same at "
        "every share. Figure: learning_curve.png.",
        "",
        "| scheme | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    by_scheme: dict[str, dict[float, dict]] = defaultdict(dict)
    for r in rows:
        by_scheme[r["scheme"]][r["fraction"]] = r
    for scheme, cells in by_scheme.items():
        values = [_cell(cells.get(f)) for f in fractions]
        lines.append(f"| {SCHEMES[scheme].label} | " + " | ".join(values) + " |")
    if diffs:
        lines += [
            "",
            "Paired differences at each share (a − b, 95 % interval; p Holm-corrected over "
            "the share's own comparisons of the primary endpoint):",
            "",
            "| share | a − b | difference | p (Holm) |",
            "|---:|---|---:|---:|",
        ]
        for d in sorted(diffs, key=lambda d: (d["scheme_a"], d["scheme_b"], d["fraction"])):
            lines.append(
                f"| {100 * d['fraction']:g} % | {d['scheme_a']} − {d['scheme_b']} | "
                f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
                f"{d['p_holm']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def _patients(row: dict) -> str:
    lo, hi = row["train_patients_min"], row["train_patients_max"]
    return f"{row['train_patients']:.3g}" + ("" if lo == hi else f", {lo}–{hi}")


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    return f"{row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def figure(rows: list[dict], path: Path, title: str) -> None:
    """learning_curve.png: the endpoint against mean training patients, a line and a 95 %
    band per scheme (the colour of its place in SCHEMES, as in the other figures)."""
    import matplotlib.pyplot as plt

    from adseg.plots import save, scheme_colour

    metric = rows[0]["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        mine = sorted((r for r in rows if r["scheme"] == scheme), key=lambda r: r["fraction"])
        x = [r["train_patients"] for r in mine]
        colour = scheme_colour(scheme)
        ax.plot(x, [r["mean"] for r in mine], "o-", color=colour, label=SCHEMES[scheme].label)
        ax.fill_between(
            x, [r["ci_low"] for r in mine], [r["ci_high"] for r in mine], color=colour, alpha=0.15
        )
    ax.set_xlabel("training patients per fold (mean over folds)")
    ax.set_ylabel(f"{NAMES.get(metric, metric)} (95 % interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    save(fig, path)


def write_learning_curve(
    exp_dir: str | Path, fractions: list[float], primary: str, title: str
) -> Path:
    """Write learning_curve.tsv, learning_curve_tests.tsv, learning_curve.md (and its HTML
    twin) and learning_curve.png under ``<exp_dir>/learning_curve/``; returns the Markdown
    file."""
    exp_dir = Path(exp_dir)
    rows, diffs = gather(exp_dir, fractions, primary)
    out = exp_dir / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    write_tsv(out / "learning_curve.tsv", rows, COLUMNS)
    write_tsv(out / "learning_curve_tests.tsv", diffs, DIFF_COLUMNS)
    figure(rows, out / "learning_curve.png", title)
    write_text(out / "learning_curve.md", markdown(rows, diffs, title))
    write_html_twin(out / "learning_curve.md")
    return out / "learning_curve.md"
