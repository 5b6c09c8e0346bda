"""Figures: the atomic PNG writer all figures use, learning curves (of one run, and of many
runs side by side, coloured by scheme), box plots and overlays.

One colour convention in every figure (the QC figures too): the expert's contours are
:data:`EXPERT_COLOUR` (green), the prediction's :data:`PREDICTION_COLOUR` (red), each named
in a legend. A figure is built by a function that returns it (``*_figure``, which tests
inspect) and written by a thin function that saves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from adseg.io import atomic_path  # noqa: E402
from adseg.training.schemes import SCHEMES  # noqa: E402

EXPERT_COLOUR = "lime"
PREDICTION_COLOUR = "red"


def contour_key(prediction: bool = True) -> list[Line2D]:
    """Legend entries of the expert's contour and (``prediction``) the prediction's."""
    key = [Line2D([], [], color=EXPERT_COLOUR, lw=2.0, label="expert")]
    if prediction:
        key.append(Line2D([], [], color=PREDICTION_COLOUR, lw=1.0, label="prediction"))
    return key


def save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def sigmoid(x: float) -> float:
    """σ(x) = 1 / (1 + e^-x), without overflow for large |x|."""
    return 0.5 * (1.0 + math.tanh(0.5 * x))


# --- learning curves ----------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One panel of per-epoch curves.

    Attributes:
        title: the panel's title.
        ylabel: what its y values are, as drawn.
        series: ``(history key, legend label)`` pairs; the first is drawn solid, the others
            dashed or dotted (a term then stays visible on top of the total it is part of).
        transform: applied to every logged value before it is drawn (e.g. :func:`sigmoid`).
        unit: the y axis spans [0, 1].
        reference: ``(value, legend label)`` of a dashed grey line, e.g. chance.
        empty: what the panel says when none of its series was logged.
    """

    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]
    transform: Callable[[float], float] | None = None
    unit: bool = False
    reference: tuple[float, str] | None = None
    empty: str = "not logged"


# D losses whose scores are logits of P(real) (the losses fold the sigmoid in); the other
# losses' scores are no log-odds, so they are drawn as logged, named by what they are
LOGIT_LOSSES = ("minimax", "nonsaturating", "feature-matching")
RAW_SCORES = {
    "lsgan": "mean D score (LSGAN targets: real 1, fake 0)",
    "hinge": "mean D score (hinge margins: real ≥ 1, fake ≤ −1)",
    "wgan": "mean critic score (unbounded)",
    "wgan-gp": "mean critic score (unbounded)",
}
SUPERVISED = {
    "ce": "cross-entropy",
    "wce": "class-weighted cross-entropy",
    "dicece": "Dice + cross-entropy",
}
LINESTYLES = ("-", "--", "-.", ":")


def d_score_panel(loss: str | None, real: str, fake: str) -> Panel:
    """D's epoch-mean scores of its real and fake inputs (``d_real``, ``d_fake``: the mean
    raw score of each update's batch, averaged over the epoch).

    For a D trained with one of :data:`LOGIT_LOSSES` the scores are logits and the panel
    draws σ(mean logit) on [0, 1], chance at 0.5; for the other losses it draws the raw
    score, which is no probability.
    """
    series = (("d_real", f"on {real}"), ("d_fake", f"on {fake}"))
    title, empty = "discriminator's mean score", "no discriminator"
    if loss in LOGIT_LOSSES:
        ylabel = "sigmoid(mean logit)"
        return Panel(title, ylabel, series, sigmoid, True, (0.5, "chance (0.5)"), empty)
    return Panel(title, RAW_SCORES.get(loss, "mean D score (raw)"), series, empty=empty)


def segmentation_panels(scheme: str, d_loss: str | None) -> list[Panel]:
    """The segmentation study's panels: losses, D's scores, validation Dice.

    Args:
        scheme: a key of :data:`adseg.training.schemes.SCHEMES` (what S minimises).
        d_loss: the adversarial loss (``adversarial.loss``), for what D's scores are.
    """
    s = SCHEMES[scheme]
    supervised = SUPERVISED[s.supervised]
    dice = Panel(
        "validation Dice (mean over classes)",
        "Dice",
        (("val_dice", "validation cases"),),
        unit=True,
    )
    if not s.adversarial:
        return [Panel("losses", "loss", (("loss_s", f"S total = {supervised}"),)), dice]
    losses = (
        ("loss_s", f"S total = λ·{supervised} + L_S" if s.hybrid else "S total"),
        ("loss_ce", f"{supervised} ({'unweighted' if s.hybrid else 'minimised in warm-up'})"),
        ("loss_adv", "adversarial term L_S"),
        ("loss_d", "D loss L_D"),
    )
    return [Panel("losses", "loss", losses), d_score_panel(d_loss, "expert maps", "S's maps"), dice]


def adda_panels(d_loss: str | None) -> list[Panel]:
    """ADDA's panels: J_D and J_M, D's scores of each domain, source validation Dice."""
    return [
        Panel("losses", "loss", (("loss_d", "D loss J_D"), ("loss_m", "target encoder's J_M"))),
        d_score_panel(d_loss, "source", "target"),
        Panel(
            "Dice of C∘M_t (mean over classes)",
            "Dice",
            (("val_dice_source", "held-out source cases"),),
            unit=True,
        ),
    ]


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    pts = [(e, v) for e, v in pts if not (isinstance(v, float) and math.isnan(v))]
    return [e for e, _ in pts], [v for _, v in pts]


def draw_panel(ax: plt.Axes, history: list[dict], panel: Panel) -> None:
    """Draw ``panel``'s series of ``history`` (one dict per epoch) on ``ax``."""
    drawn = False
    for i, (key, label) in enumerate(panel.series):
        x, y = _series(history, key)
        if not x:
            continue
        if panel.transform is not None:
            y = [panel.transform(v) for v in y]
        marker = "o" if key.startswith("val") or len(x) == 1 else None
        ax.plot(x, y, linestyle=LINESTYLES[i % len(LINESTYLES)], marker=marker, label=label)
        drawn = True
    ax.set_title(panel.title, fontsize=10)
    if not drawn:
        ax.text(0.5, 0.5, panel.empty, ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        return
    if panel.reference is not None:
        value, label = panel.reference
        ax.axhline(value, color="0.5", linestyle="--", linewidth=0.8, label=label)
    ax.set(xlabel="epoch", ylabel=panel.ylabel)
    if panel.unit:
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    # below the axes: a legend never hides a curve
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)


def curves_figure(history: list[dict], title: str, panels: list[Panel]) -> plt.Figure:
    """One panel per :class:`Panel` side by side, epochs on x, ``title`` above them all."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False, layout="constrained"
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        draw_panel(ax, history, panel)
    fig.suptitle(title)
    return fig


def panel_curves(history: list[dict], path: Path, title: str, panels: list[Panel]) -> None:
    """Write :func:`curves_figure` to ``path``."""
    save(curves_figure(history, title, panels), path)


def learning_curves(
    history: list[dict], path: Path, title: str, scheme: str, d_loss: str | None = None
) -> None:
    """The segmentation study's learning curves (:func:`segmentation_panels`)."""
    panel_curves(history, path, title, segmentation_panels(scheme, d_loss))


def adda_curves(history: list[dict], path: Path, title: str, d_loss: str | None = None) -> None:
    """ADDA's learning curves (:func:`adda_panels`)."""
    panel_curves(history, path, title, adda_panels(d_loss))


def scheme_colour(scheme: str) -> str:
    """A scheme's colour, the same in every figure: that of its place in :data:`SCHEMES`."""
    return f"C{list(SCHEMES).index(scheme) % 10}"


def _runs_panel(ax: plt.Axes, runs: list[dict], key: str, title: str, ylabel: str) -> bool:
    """Every run's ``key`` per epoch on ``ax``, one colour and one key entry per scheme (the
    colour of its place in :data:`SCHEMES`, the same in every such figure); False if no run
    logged it."""
    counts = {s: sum(r["scheme"] == s for r in runs) for s in SCHEMES}
    named: set[str] = set()
    for run in runs:
        x, y = _series(run["history"], key)
        if not x:
            continue
        s = run["scheme"]
        n = counts[s]
        label = "_nolegend_" if s in named else f"{s} ({n} run{'s' * (n > 1)})"
        named.add(s)
        colour = scheme_colour(s)
        marker = "o" if key.startswith("val") or len(x) == 1 else None
        ax.plot(x, y, color=colour, lw=1.0, alpha=0.8, marker=marker, ms=3, label=label)
    ax.set_title(title, fontsize=10)
    if named:
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
    return bool(named)


def training_curves_figure(
    runs: list[dict], title: str, references: list[tuple[float, str]] = ()
) -> plt.Figure:
    """Many runs side by side: left, each run's inner-validation Dice per epoch; right, D's
    loss per epoch of the runs with a discriminator, with ``references`` (``(value, label)``,
    e.g. D's loss at chance) as dashed grey lines.

    Args:
        runs: one dict per run: ``scheme`` (a key of :data:`SCHEMES`), ``history`` (its log's
            rows: ``epoch``, ``val_dice``, ``loss_d``; None where not logged) and ``d``
            (it trained a discriminator).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.2, 4.4), layout="constrained")
    dice_title = "inner-validation Dice (mean over classes)"
    if _runs_panel(left, runs, "val_dice", dice_title, "Dice"):
        left.set_ylim(0, 1)
    d_runs = [r for r in runs if r["d"]]
    if _runs_panel(right, d_runs, "loss_d", "discriminator's loss L_D", "L_D (epoch mean)"):
        for value, label in references:
            right.axhline(value, color="0.5", linestyle="--", linewidth=0.8, label=label)
    for ax, empty in ((left, "not logged"), (right, "no discriminator")):
        if not ax.get_lines():
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
            ax.set(xticks=[], yticks=[])
            continue
        ax.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False
        )
    fig.suptitle(title)
    return fig


# --- box plots ----------------------------------------------------------------------------


def box_key() -> list:
    """Legend entries of what a box plot draws."""
    return [
        Patch(facecolor="none", edgecolor="black", label="box: quartiles"),
        Line2D([], [], color="C1", label="median"),
        Line2D([], [], color="C2", marker="^", linestyle="none", label="mean"),
        Line2D([], [], color="black", label="whiskers: ≤ 1.5 IQR"),
        Line2D([], [], color="black", marker="o", ms=3, alpha=0.5, ls="none", label="patient"),
    ]


def box_plot_figure(values: dict[str, list[float]], metric: str, title: str) -> plt.Figure:
    """One box per scheme of per-patient values, every patient a dot, the markers in a key."""
    fig, ax = plt.subplots(figsize=(2.8 + 1.3 * len(values), 3.8), layout="constrained")
    names = list(values)
    data = [[v for v in values[n] if not math.isnan(v)] for n in names]
    ax.boxplot(
        data,
        whis=1.5,
        showmeans=True,
        showfliers=False,  # every point is drawn below
        medianprops={"color": "C1"},
        meanprops={"marker": "^", "markerfacecolor": "C2", "markeredgecolor": "C2"},
    )
    ticks = [f"{n}\n(n={len(d)})" for n, d in zip(names, data, strict=True)]
    ax.set_xticks(range(1, len(names) + 1), ticks)
    for i, d in enumerate(data, start=1):
        ax.scatter([i] * len(d), d, s=8, alpha=0.5, color="black", zorder=3)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(handles=box_key(), loc="outside right upper", fontsize=7, frameon=False)
    return fig


def box_plot(values: dict[str, list[float]], metric: str, path: Path, title: str) -> None:
    """Write :func:`box_plot_figure` to ``path``."""
    save(box_plot_figure(values, metric, title), path)


# --- overlays -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slices:
    """The two slices an overlay shows of a ``(z, y, x)`` case.

    Attributes:
        expert: the slice with the most expert voxels (the middle one if there are none).
        expert_voxels: the expert's voxels on that slice (0: the expert mask is empty).
        false_positive: the slice with most voxels of the largest predicted connected
            component (3-D, face-connected) that touches no expert voxel; None if none.
        fp_voxels: that component's size in voxels (0 if there is none).
    """

    expert: int
    expert_voxels: int
    false_positive: int | None
    fp_voxels: int


def pick_slices(truth: np.ndarray, pred: np.ndarray) -> Slices:
    """The expert's slice and the worst false positive's of masks ``(z, y, x)``."""
    truth, pred = np.asarray(truth) > 0, np.asarray(pred) > 0
    per_slice = truth.sum(axis=(1, 2))
    z = int(np.argmax(per_slice)) if per_slice.any() else truth.shape[0] // 2
    components, _ = ndimage.label(pred)
    sizes = np.bincount(components.ravel())
    sizes[np.unique(components[truth])] = 0  # components that overlap the expert
    sizes[0] = 0  # background
    if not sizes.any():
        return Slices(z, int(per_slice[z]), None, 0)
    k = int(np.argmax(sizes))
    fp_z = int(np.argmax((components == k).sum(axis=(1, 2))))
    return Slices(z, int(per_slice[z]), fp_z, int(sizes[k]))


def _draw_slice(ax: plt.Axes, image, truth, pred, z: int, title: str) -> None:
    lo, hi = np.percentile(image[z], (1, 99))
    # row 0 at the top in both panels; imshow puts voxel (row, col) at data (col, row)
    # whatever its origin, and so does contour with no origin (its "upper" flips rows)
    ax.imshow(image[z], cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), origin="upper")
    # the expert's line is the wider, so a prediction on top of it leaves it visible
    for mask, colour, width in ((truth, EXPERT_COLOUR, 2.0), (pred, PREDICTION_COLOUR, 1.0)):
        inside = mask[z] > 0
        if inside.any() and not inside.all():
            ax.contour(inside, levels=[0.5], colors=colour, linewidths=width)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def overlay_figure(image, truth, pred, title: str, structure: str = "lesion") -> plt.Figure:
    """Two slices of a scan with the expert's and the prediction's contours.

    Left, the slice with the most expert voxels of ``structure`` (the middle slice, so
    titled, if the expert drew none); right, the worst false positive (:func:`pick_slices`).
    ``image``, ``truth`` and ``pred`` are ``(z, y, x)`` arrays on one grid; the masks are
    that structure's (non-zero inside).
    """
    s = pick_slices(truth, pred)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.9), layout="constrained")
    head = (
        f"most expert {structure}: slice {s.expert} ({s.expert_voxels} voxels)"
        if s.expert_voxels
        else f"no expert {structure}: middle slice {s.expert}"
    )
    _draw_slice(axes[0], image, truth, pred, s.expert, head)
    if s.false_positive is None:
        axes[1].text(0.5, 0.5, "no false-positive component", ha="center", va="center")
        axes[1].set_axis_off()
        axes[1].set_title("worst false positive", fontsize=9)
    else:
        head = f"worst false positive: {s.fp_voxels} voxels (slice {s.false_positive})"
        _draw_slice(axes[1], image, truth, pred, s.false_positive, head)
    fig.legend(handles=contour_key(), loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def overlay(image, truth, pred, path: Path, title: str, structure: str = "lesion") -> None:
    """Write :func:`overlay_figure` to ``path``."""
    save(overlay_figure(image, truth, pred, title, structure), path)
