"""Reliability diagrams: how well each scheme's probabilities are calibrated, bin by bin.

``adseg evaluate`` writes ``reliability.tsv`` beside a fold's metrics.tsv: per held-out case
and foreground label, the equal-width probability bins its ECE is computed from
(:func:`adseg.evaluation.metrics.calibration_bins`: voxels, the sum of their probabilities, the
expert's voxels among them). They are counts and sums, so ``adseg summarize`` pools a scheme's
cases, folds and seeds exactly by adding them (:func:`pool`), writes the pooled bins as the
experiment's ``reliability.tsv`` and draws ``plots/reliability.png``: per label, each scheme's
mean probability against the share of expert voxels per bin beside the diagonal, the voxels
per bin below it (log scale) and the pooled ECE in the key. The pooled ECE weighs every voxel
the same; the summary table's ECE is a mean over patients of each case's.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import NullFormatter

from adseg.io import write_tsv
from adseg.log import logger
from adseg.plots import plt, save, scheme_colour
from adseg.preprocessing.qc import read_tsv

FILE = "reliability.tsv"
BIN_COLUMNS = ("bin", "p_low", "p_high", "voxels", "prob_sum", "positives")
POOLED_COLUMNS = ("label", "scheme", "cases", *BIN_COLUMNS, "mean_prob", "frequency")


def bins_ece(bins: list[dict]) -> float:
    """Expected calibration error of bins (counts and sums, numbers or TSV strings):
    Σ_k n_k |mean p_k − share of positives_k| / N = Σ_k |Σ_k p − positives_k| / N; NaN
    without a voxel."""
    n = sum(int(b["voxels"]) for b in bins)
    if not n:
        return math.nan
    return sum(abs(float(b["prob_sum"]) - int(b["positives"])) for b in bins) / n


def write_bins(path: str | Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Write bin rows as a TSV, atomically; ``prob_sum`` with all the digits of its float
    (write_tsv keeps 6), so that files added up give the sums of their voxels."""
    write_tsv(path, [r | {"prob_sum": repr(float(r["prob_sum"]))} for r in rows], columns)


def pool(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(label, scheme) → its bins summed over every case, fold and seed of ``rows`` (bin rows of
    reliability.tsv files), each with ``cases`` (the case bins added), ``mean_prob`` and
    ``frequency`` (the share of positives; both NaN in an empty bin)."""
    pooled: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        k = int(r["bin"])
        b = pooled.setdefault((r["label"], r["scheme"]), {}).setdefault(
            k,
            {
                "bin": k,
                "p_low": float(r["p_low"]),
                "p_high": float(r["p_high"]),
                "cases": 0,
                "voxels": 0,
                "prob_sum": 0.0,
                "positives": 0,
            },
        )
        b["cases"] += 1
        b["voxels"] += int(r["voxels"])
        b["prob_sum"] += float(r["prob_sum"])
        b["positives"] += int(r["positives"])
    out = {}
    for key, bins in pooled.items():
        out[key] = [bins[k] for k in sorted(bins)]
        for b in out[key]:
            n = b["voxels"]
            b["mean_prob"] = b["prob_sum"] / n if n else math.nan
            b["frequency"] = b["positives"] / n if n else math.nan
    return out


def read_bins(metric_files: list[str | Path]) -> tuple[list[dict], set[str]]:
    """The bin rows of the reliability.tsv beside each metrics file, and the schemes of the
    metrics files without one (evaluated before ``adseg evaluate`` wrote it)."""
    rows, incomplete = [], set()
    for folder in dict.fromkeys(Path(f).parent for f in metric_files):
        if (folder / FILE).is_file():
            rows += read_tsv(folder / FILE)
    for f in metric_files:
        metrics = read_tsv(f)
        if metrics and not (Path(f).parent / FILE).is_file():
            incomplete.add(metrics[0]["scheme"])
    return rows, incomplete


def write_reliability(metric_files: list[str | Path], out: str | Path, schemes: list[str]) -> bool:
    """Write ``out/reliability.tsv`` (the bins of each scheme in ``schemes``, pooled; its header
    alone if there are none) and, if there are any, ``out/plots/reliability.png``; return
    whether the figure was drawn. A scheme with a fold evaluated without bins is left out:
    its pool would lack that fold's cases."""
    out = Path(out)
    rows, incomplete = read_bins(metric_files)
    if incomplete and rows:
        logger.warning(
            "no %s beside some metrics files of %s (evaluated before it was written): "
            "left out of the reliability diagram",
            FILE,
            ", ".join(sorted(incomplete)),
        )
    pooled = pool(rows)
    keys = [k for k in pooled if k[1] in schemes and k[1] not in incomplete]
    pooled = {k: pooled[k] for k in sorted(keys, key=lambda k: (k[0], schemes.index(k[1])))}
    table = [{"label": label, "scheme": s} | b for (label, s), bins in pooled.items() for b in bins]
    write_bins(out / FILE, table, POOLED_COLUMNS)
    if not pooled:
        logger.info(
            "no %s beside the metrics files (evaluated before adseg wrote them): "
            "no reliability diagram",
            FILE,
        )
        return False
    save(reliability_figure(pooled), out / "plots" / "reliability.png")
    return True


def reliability_figure(pooled: dict[tuple[str, str], list[dict]]) -> plt.Figure:
    """One column per label: above, each scheme's mean probability against the share of
    expert voxels in each non-empty bin, beside the diagonal (perfect calibration), its pooled
    ECE in the key; below, the voxels per bin (log scale).

    Args:
        pooled: (label, scheme) → bins (:func:`pool`), in the order they are drawn.
    """
    labels = list(dict.fromkeys(label for label, _ in pooled))
    fig, axes = plt.subplots(
        2,
        len(labels),
        figsize=(4.6 * len(labels), 6.4),
        squeeze=False,
        sharex="col",
        height_ratios=(3, 1),
        layout="constrained",
    )
    for top, bottom, label in zip(axes[0], axes[1], labels, strict=True):
        top.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="perfect calibration")
        for (name, scheme), bins in pooled.items():
            if name != label:
                continue
            full = [b for b in bins if b["voxels"]]
            colour = scheme_colour(scheme)
            top.plot(
                [b["mean_prob"] for b in full],
                [b["frequency"] for b in full],
                color=colour,
                marker="o",
                ms=3,
                label=f"{scheme} (ECE {bins_ece(bins):.3f})",
            )
            edges = [bins[0]["p_low"], *(b["p_high"] for b in bins)]
            bottom.stairs([b["voxels"] for b in bins], edges, color=colour)
        top.set(title=label, ylabel=f"share of expert {label} voxels", xlim=(0, 1), ylim=(0, 1))
        top.grid(alpha=0.3)
        top.legend(fontsize=8, loc="best")
        bottom.set_yscale("log")
        bottom.yaxis.set_minor_formatter(NullFormatter())  # decades only: a small panel
        bottom.set(xlabel="predicted probability (above: bin mean)", ylabel="voxels per bin")
        bottom.grid(alpha=0.3)
    n = len(next(iter(pooled.values())))
    fig.suptitle(
        f"reliability, pooled over each scheme's test cases, folds and seeds ({n} bins)",
        fontsize=10,
    )
    return fig
