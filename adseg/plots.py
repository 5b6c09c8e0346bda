"""Figures: the atomic PNG writer all figures use, learning curves and per-metric box plots."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adseg.io import atomic_path  # noqa: E402


def save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    pts = [(e, v) for e, v in pts if not (isinstance(v, float) and math.isnan(v))]
    return [e for e, _ in pts], [v for _, v in pts]


def learning_curves(history: list[dict], path: Path, title: str) -> None:
    """Losses, discriminator scores and validation Dice against epoch, three panels."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss_s", "loss_ce", "loss_adv", "loss_d"):
        x, y = _series(history, key)
        if x:
            axes[0].plot(x, y, label=key)
    axes[0].set_title("losses")
    for key, label in (("d_real", "D(expert)"), ("d_fake", "D(segmentor)")):
        x, y = _series(history, key)
        if x:
            axes[1].plot(x, y, label=label)
    axes[1].set_title("mean discriminator score")
    x, y = _series(history, "val_dice")
    axes[2].plot(x, y, "o-", label="validation Dice")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("validation Dice (held-out patients)")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


def panel_curves(
    history: list[dict],
    path: Path,
    title: str,
    panels: list[tuple[str, tuple[tuple[str, str], ...]]],
    unit_panels: tuple[int, ...] = (),
) -> None:
    """One panel per ``(name, ((key, label), ...))`` of epoch series; panels whose index is
    in ``unit_panels`` are drawn on [0, 1]. Validation series (``val_*``) get markers."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6))
    for i, (ax, (name, series)) in enumerate(zip(axes, panels, strict=True)):
        for key, label in series:
            x, y = _series(history, key)
            if x:
                ax.plot(x, y, "o-" if key.startswith("val") else "-", label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if i in unit_panels:
            ax.set_ylim(0, 1)
    fig.suptitle(title)
    save(fig, path)


def adda_curves(history: list[dict], path: Path, title: str) -> None:
    """ADDA's epochs: J_D and J_M, D's mean scores of each domain, source validation Dice."""
    panels = [
        ("losses", (("loss_d", "J_D (discriminator)"), ("loss_m", "J_M (target encoder)"))),
        ("mean discriminator score", (("d_real", "D(source)"), ("d_fake", "D(target)"))),
        ("Dice of C∘M_t on held-out source cases", (("val_dice_source", "source Dice"),)),
    ]
    panel_curves(history, path, title, panels, unit_panels=(2,))


def box_plot(values: dict[str, list[float]], metric: str, path: Path, title: str) -> None:
    """One box per scheme of per-patient values, with the points on top."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(values), 3.8))
    names = list(values)
    data = [[v for v in values[n] if not math.isnan(v)] for n in names]
    ax.boxplot(data, showmeans=True, showfliers=False)  # every point is drawn below
    ticks = [f"{n}\n(n={len(d)})" for n, d in zip(names, data, strict=True)]
    ax.set_xticks(range(1, len(names) + 1), ticks)
    for i, d in enumerate(data, start=1):
        ax.scatter([i] * len(d), d, s=8, alpha=0.5, color="black", zorder=3)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)


def overlay(image, truth, pred, path: Path, title: str) -> None:
    """One slice of a scan with the expert's (green) and the prediction's (red) contours.

    ``image``, ``truth`` and ``pred`` are ``(z, y, x)`` arrays on one grid; the slice shown is
    the one with the most expert plus predicted voxels (the middle one when both are empty).
    """
    import numpy as np

    counts = (truth > 0).sum(axis=(1, 2)) + (pred > 0).sum(axis=(1, 2))
    z = int(np.argmax(counts)) if counts.any() else image.shape[0] // 2
    window = np.percentile(image[z], (1, 99))
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    ax.imshow(image[z], cmap="gray", vmin=window[0], vmax=max(window[1], window[0] + 1e-6))
    for mask, colour, name in ((truth, "lime", "expert"), (pred, "red", "predicted")):
        if mask[z].any():
            ax.contour(mask[z] > 0, levels=[0.5], colors=colour, linewidths=1.2)
        ax.plot([], [], color=colour, label=name)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_axis_off()
    ax.set_title(f"{title}\nslice {z}", fontsize=9)
    save(fig, path)
