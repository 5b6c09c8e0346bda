"""The GAN tasks' figures: learning curves, sample grids and translation examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from adseg.plots import Panel, d_score_panel, panel_curves, plt, save


def gan_panels(history: list[dict], d_loss: str | None) -> list:
    """Losses, D's mean scores (``d_loss``: the recipe's loss, for what they are), and G's
    spread (synthesis) or held-out errors (translation)."""
    if any("val_mae" in h for h in history):
        third = Panel(
            "held-out MAE / SSIM",
            "MAE (intensities in [-1, 1]) / SSIM",
            (("val_mae", "MAE"), ("val_ssim", "SSIM")),
        )
    else:
        third = Panel(
            "G's spread / real spread",
            "std(G's batch) / std(real batch)",
            (("std_ratio", "spread ratio"),),
            reference=(1.0, "real spread (1)"),
        )
    losses = (
        ("loss_d", "D loss L_D"),
        ("loss_g", "G's adversarial term L_G"),
        ("loss_l1", "L1 to the real target"),
    )
    return [Panel("losses", "loss", losses), d_score_panel(d_loss, "real", "generated"), third]


def gan_curves(history: list[dict], path: Path, title: str, d_loss: str | None = None) -> None:
    """The GAN tasks' learning curves (:func:`gan_panels`)."""
    panel_curves(history, path, title, gan_panels(history, d_loss))


def image_grid(
    images: torch.Tensor | np.ndarray,
    path: Path,
    title: str,
    captions: Sequence[str] | None = None,
    columns: int = 8,
) -> None:
    """Slices ``(N, H, W)`` in [-1, 1] as a grey grid (first axis down, as in the QC figures)."""
    images = np.asarray(images)
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.5), layout="constrained"
    )
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i].T, cmap="gray", vmin=-1, vmax=1, origin="lower")
            if captions:
                ax.set_title(captions[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def translation_examples(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    names: tuple[str, str],
) -> None:
    """Per row: (caption, source, real target, generated target) slices in [-1, 1], with the
    absolute error; ``names``: the source and target channels."""
    fig, axes = plt.subplots(
        len(rows), 4, figsize=(9, 2.3 * len(rows) + 0.5), squeeze=False, layout="constrained"
    )
    heads = (names[0], f"real {names[1]}", f"generated {names[1]}", "|error|")
    for r, (caption, src, real, fake) in enumerate(rows):
        for c, (image, vmin, vmax, cmap) in enumerate(
            ((src, -1, 1, "gray"), (real, -1, 1, "gray"), (fake, -1, 1, "gray"))
            + ((np.abs(fake - real), 0, 1, "magma"),)
        ):
            ax = axes[r, c]
            ax.imshow(image.T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(caption, fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def mode_panels(panels: dict[str, dict], path: Path, title: str) -> None:
    """A panel per run on the ring of 8 Gaussians: its samples (``(N, 2)``) over the mode
    centres, titled with the modes covered and the high-quality share."""
    from adseg.gan.toy import ring_modes

    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.4), squeeze=False)
    centres = ring_modes()
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, run) in zip(axes.flat, panels.items(), strict=False):
        points, m = np.asarray(run["samples"]), run["metrics"]
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
        ax.scatter(centres[:, 0], centres[:, 1], s=30, c="red", marker="x")
        ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
        ax.set_title(
            f"{name}\n{m['modes_covered']}/8 modes, {m['high_quality']:.0%} high quality",
            fontsize=9,
        )
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
