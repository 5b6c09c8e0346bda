"""Quality-control figures of a preprocessed cohort: what a person checks by eye.

- ``overview.png``: spacing per scanner domain, intensity per channel and domain, label
  volumes and the effect of cropping, from ``qc.tsv``;
- ``cases/<case>.png``: every channel of the preprocessed case at the slice with the most
  label voxels (the middle slice if it has none), with the expert contour on top (green,
  as in every adseg figure: :data:`adseg.plots.EXPERT_COLOUR`);
- ``phantom_contrast.png`` and its table ``phantom_contrast.tsv``, for adseg's synthetic
  cohort only: the intensities of lesions, benign mimics and zones on each channel, and the
  best Dice one threshold on one channel reaches (:mod:`adseg.data.contrast`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
from matplotlib.ticker import MaxNLocator

from adseg.data.contrast import CONTRAST_FILE, best_threshold_dice, read_contrast
from adseg.guard import check_output, claim
from adseg.io import atomic_dir, copy_file, read_json
from adseg.log import logger, progress
from adseg.plots import EXPERT_COLOUR, contour_key, save


def read_tsv(path: str | Path) -> list[dict]:
    """Rows of a TSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _by_domain(rows: list[dict], column: str) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for row in rows:
        if row.get(column, "") != "":
            out.setdefault(row["domain"], []).append(float(row[column]))
    return {d: np.asarray(v) for d, v in sorted(out.items())}


def crop_panel(ax: plt.Axes, crop: dict[str, np.ndarray]) -> None:
    """The fraction of voxels each case keeps after the crop to non-zero, per domain: one
    dot a case with the domain's range written beside it, or one sentence when every case
    keeps the same fraction (a spread under 0.001)."""
    ax.set_title("Crop to non-zero")
    values = np.concatenate(list(crop.values())) if crop else np.empty(0)
    if values.size == 0 or np.ptp(values) < 1e-3:
        text = (
            f"all {values.size} cases keep\n{values.mean():.3f} of their voxels"
            if values.size
            else "no crop recorded"
        )
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        return
    jitter = np.random.default_rng(0)
    for i, v in enumerate(crop.values()):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, v.size), v, s=10, alpha=0.6)
        ax.annotate(
            f"n={v.size}\n{v.min():.3f}–{v.max():.3f}",
            (i, v.max()),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(crop)), [f"domain {d}" for d in crop])
    ax.set_xlim(-0.6, len(crop) - 0.4)
    ax.margins(y=0.25)
    ax.set_ylabel("kept fraction of voxels")


def overview_figure(
    rows: list[dict], channel_names: list[str], labels: list[str], out: Path
) -> None:
    """Write the cohort overview PNG from the QC table rows."""
    n_cols = max(3, len(channel_names))
    fig, axes = plt.subplots(2, n_cols, figsize=(4.2 * n_cols, 7.5), squeeze=False)
    ref = channel_names[0]
    for domain in sorted({r["domain"] for r in rows}):
        sp = np.array(
            [
                [float(v) for v in r[f"{ref}_spacing"].split("x")]
                for r in rows
                if r["domain"] == domain
            ]
        )
        axes[0, 0].scatter(
            sp[:, :2].min(axis=1), sp.max(axis=1), label=f"domain {domain}", alpha=0.7
        )
    axes[0, 0].set(
        xlabel=f"{ref} finest spacing (mm)",
        ylabel=f"{ref} coarsest spacing (mm)",
        title="Voxel size",
    )
    axes[0, 0].legend()
    primary = "lesion" if "lesion" in labels else labels[0]
    vols = _by_domain(rows, f"{primary}_ml")
    axes[0, 1].hist(list(vols.values()), bins=20, label=[f"domain {d}" for d in vols], stacked=True)
    axes[0, 1].yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of cases
    axes[0, 1].set(
        xlabel=f"{primary} volume (mL)", ylabel="cases", title=f"{primary} volume per case"
    )
    axes[0, 1].legend()
    crop_panel(axes[0, 2], _by_domain(rows, "crop_fraction"))
    for ax in axes[0, 3:]:
        ax.axis("off")
    for ax, name in zip(axes[1], channel_names, strict=False):
        means = _by_domain(rows, f"{name}_mean")
        ax.boxplot(list(means.values()), tick_labels=list(means))
        ax.set(
            xlabel="domain",
            ylabel="mean intensity (original units)",
            title=f"{name} before normalisation",
        )
    for ax in axes[1, len(channel_names) :]:
        ax.axis("off")
    fig.suptitle(f"adseg QC: {len(rows)} cases")
    fig.tight_layout()
    save(fig, out)


def case_figure(preprocessed: Path, case_id: str, channel_names: list[str], out: Path) -> None:
    """Write the per-case PNG (:func:`case_panels`) of a preprocessed case."""
    arrays = [
        sitk.GetArrayFromImage(
            sitk.ReadImage(str(preprocessed / "imagesTr" / f"{case_id}_{c:04d}.nii.gz"))
        )
        for c in range(len(channel_names))
    ]
    label_path = preprocessed / "labelsTr" / f"{case_id}.nii.gz"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) if label_path.exists() else None
    save(case_panels(arrays, label, channel_names, case_id), out)


def case_panels(
    arrays: list[np.ndarray], label: np.ndarray | None, channel_names: list[str], case_id: str
) -> plt.Figure:
    """Each channel ``(z, y, x)`` at the slice with most label voxels (the middle slice if
    there are none), the expert's contour (any label) in :data:`adseg.plots.EXPERT_COLOUR`."""
    z = arrays[0].shape[0] // 2
    if label is not None and label.any():
        z = int(np.argmax((label > 0).sum(axis=(1, 2))))
    drawn = label is not None and label[z].any()
    fig, axes = plt.subplots(
        1, len(arrays), figsize=(3.2 * len(arrays), 3.7), squeeze=False, layout="constrained"
    )
    for ax, arr, name in zip(axes[0], arrays, channel_names, strict=True):
        lo, hi = np.percentile(arr[z], [1, 99])
        # image row 0 is the first voxel row; origin="lower" keeps anterior/posterior as stored
        ax.imshow(arr[z], cmap="gray", vmin=lo, vmax=hi, origin="lower")
        if drawn:
            # no origin here: contour's "lower" puts voxel centres half a voxel off imshow's
            ax.contour(label[z] > 0, levels=[0.5], colors=EXPERT_COLOUR, linewidths=1.0)
        ax.set_title(name)
        ax.axis("off")
    if drawn:
        fig.legend(handles=contour_key(prediction=False), loc="outside lower center", fontsize=8)
    fig.suptitle(f"{case_id}  slice {z}" + ("" if drawn else " (no expert label)"), fontsize=10)
    return fig


# how each tissue is drawn: the lesion in the expert's colour, on top, filled
TISSUE_STYLES = {
    "peripheral_zone": ("peripheral zone", {"color": "tab:blue", "lw": 1.2}),
    "transition_zone": ("transition zone", {"color": "tab:brown", "lw": 1.2}),
    "stromal_nodule": ("stromal (BPH) nodule", {"color": "tab:orange", "lw": 1.8}),
    "nodule_capsule": ("nodule capsule", {"color": "tab:orange", "lw": 1.2, "ls": "--"}),
    "prostatitis": ("prostatitis", {"color": "tab:purple", "lw": 1.8}),
    "lymph_node": ("lymph node (beside the gland)", {"color": "tab:cyan", "lw": 1.8, "ls": "-."}),
    "lesion": ("lesion", {"color": EXPERT_COLOUR, "lw": 2.5, "zorder": 5}),
}


def _threshold_text(dice: float, threshold: float, side: str) -> str:
    return f"z {'<' if side == 'below' else '≥'} {threshold:g}: Dice {dice:.2f}"


def _drawn_range(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The z range of the bins holding voxels (``counts``: tissues x (tails and bins)), half
    a unit wider; all of ``edges`` when a tail holds some."""
    held = np.flatnonzero(counts[:, 1:-1].sum(axis=0))
    if counts[:, [0, -1]].any() or held.size == 0:
        return float(edges[0]), float(edges[-1])
    return max(edges[held[0]] - 0.5, edges[0]), min(edges[held[-1] + 1] + 0.5, edges[-1])


def phantom_contrast_figure(tsv: str | Path) -> plt.Figure:
    """The synthetic cohort's tissue intensities per channel, from ``phantom_contrast.tsv``.

    One panel per channel: each tissue's voxels (pooled over cases and domains) as a density
    over z-score bins, normalised per tissue, the lesion in :data:`adseg.plots.EXPERT_COLOUR`.
    A panel's title gives the best Dice one threshold on that channel reaches for the lesion
    against every other tissue of the table, pooled and per domain, each at its own threshold
    (:func:`adseg.data.contrast.best_threshold_dice`); the pooled one is drawn dotted. Voxels
    beyond the bins count in the Dice but are not drawn.
    """
    table = read_contrast(tsv)
    counts = table.counts.sum(axis=0)  # pooled over domains: (tissues, channels, bins)
    lesion = table.tissues.index("lesion")
    rest = [t for t in range(len(table.tissues)) if t != lesion]
    width = np.diff(table.edges)
    fig, axes = plt.subplots(
        1, len(table.channels), figsize=(5.0 * len(table.channels), 4.6), layout="constrained"
    )
    for c, (ax, channel) in enumerate(zip(np.atleast_1d(axes), table.channels, strict=True)):
        for t, tissue in enumerate(table.tissues):
            name, style = TISSUE_STYLES.get(tissue, (tissue, {"color": "0.5", "lw": 1.0}))
            total = counts[t, c].sum()
            density = counts[t, c, 1:-1] / max(total, 1) / width
            label = f"{name} ({total:,} voxels, {table.cases[:, t].sum()} cases)"
            ax.stairs(density, table.edges, label=label, **style)
            if tissue == "lesion":
                ax.stairs(density, table.edges, fill=True, color=EXPERT_COLOUR, alpha=0.3)
        pooled = best_threshold_dice(counts[lesion, c], counts[rest, c].sum(0), table.edges)
        per_domain = [
            f"{d} {best_threshold_dice(n[lesion, c], n[rest, c].sum(0), table.edges)[0]:.2f}"
            for d, n in zip(table.domains, table.counts, strict=True)
        ]
        if np.isfinite(pooled[1]):
            ax.axvline(pooled[1], color="black", ls=":", lw=1.0)
        ax.set_title(
            f"{channel}: best single threshold\n{_threshold_text(*pooled)} "
            f"(per domain: {', '.join(per_domain)})",
            fontsize=10,
        )
        ax.set(
            xlabel="intensity (z-score of the case)",
            ylabel="density (each tissue's voxels sum to 1)",
            xlim=_drawn_range(counts[:, c], table.edges),
        )
        ax.grid(alpha=0.3)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    n_cases = int(table.cases.max(axis=1).sum())
    fig.suptitle(
        f"Synthetic phantom, {n_cases} cases: lesion vs benign mimics and zones per channel "
        "(voxels at T2w voxel centres)\nDice: one threshold on one channel, lesion against every "
        "other tissue drawn, voxels pooled over cases",
        fontsize=11,
    )
    return fig


def phantom_contrast(tsv: str | Path, out: Path) -> None:
    """Write :func:`phantom_contrast_figure` to ``out``."""
    save(phantom_contrast_figure(tsv), out)


def phantom_contrast_table(dataset: dict) -> Path | None:
    """The contrast table of the cohort a preprocessed folder was made from (its
    ``dataset.json`` is ``dataset``), when that cohort is adseg's synthetic one and has one."""
    if not isinstance(dataset.get("source"), str) or not dataset["source"]:
        return None
    source = Path(dataset["source"])
    try:
        meta = read_json(source / "dataset.json").get("adseg")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != "adseg.data.synthetic":
        return None
    path = source / meta.get("contrast", CONTRAST_FILE)
    if not path.is_file():
        logger.info("%s: no phantom contrast table (an older adseg wrote the cohort)", source)
        return None
    return path


def qc_report(
    preprocessed: str | Path, out_dir: str | Path, show_progress: bool = True
) -> list[Path]:
    """Write the overview, one PNG per case and, for adseg's synthetic cohort, the phantom
    contrast figure and table from a preprocessed folder; return the figures' paths.

    ``out_dir`` is replaced once complete: it must be new, empty or adseg's, and apart from
    ``preprocessed`` and a synthetic cohort it reads (:func:`adseg.guard.check_output` raises
    ``OutputError`` otherwise).
    """
    preprocessed, out_dir = Path(preprocessed), Path(out_dir)
    dataset = read_json(preprocessed / "dataset.json")
    contrast = phantom_contrast_table(dataset)
    cohort = [contrast.parent] if contrast else []
    check_output(out_dir, [preprocessed, *cohort], replaces=True)
    channel_names = [dataset["channel_names"][k] for k in sorted(dataset["channel_names"], key=int)]
    labels = [name for name, value in dataset["labels"].items() if value != 0]
    rows = read_tsv(preprocessed / "qc.tsv")
    figures = ["overview.png", *(["phantom_contrast.png"] if contrast else [])]
    names = figures + [f"cases/{row['case_id']}.png" for row in rows]
    # the folder is complete or absent, and holds no figure of a case no longer in the cohort
    with atomic_dir(out_dir) as tmp:
        claim(tmp, "qc")
        overview_figure(rows, channel_names, labels, tmp / names[0])
        if contrast:
            copy_file(contrast, tmp / CONTRAST_FILE)
            phantom_contrast(contrast, tmp / "phantom_contrast.png")
        for row, name in zip(
            progress(rows, "qc figures", enabled=show_progress), names[len(figures) :], strict=True
        ):
            case_figure(preprocessed, row["case_id"], channel_names, tmp / name)
    return [out_dir / name for name in names]
