"""Figures read right: one colour per source, the overlay's slices, named axes and series."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.layout_engine import ConstrainedLayoutEngine

from adseg.plots import (
    EXPERT_COLOUR,
    LOGIT_LOSSES,
    PREDICTION_COLOUR,
    RAW_SCORES,
    adda_panels,
    box_plot_figure,
    curves_figure,
    overlay,
    overlay_figure,
    pick_slices,
    plt,
    segmentation_panels,
)
from adseg.training.losses import GAN_LOSSES
from adseg.training.schemes import SCHEMES

SHAPE = (10, 12, 12)


def _case():
    """An expert lesion on slices 2-3 (most on 2), a true positive over it, and three false
    positives: 4 voxels on slice 8, 12 on slices 5-6 (8 of them on 6), 10 on slice 6. The
    prediction has more voxels on slice 6 than the expert has on any slice."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[2, 4:7, 4:7] = 1  # 9 voxels
    truth[3, 5:7, 5:7] = 1  # 4 voxels
    pred = np.zeros(SHAPE, np.uint8)
    pred[2, 5:7, 5:7] = 1  # overlaps the expert
    pred[8, 0:2, 0:2] = 1  # 4 voxels, apart
    pred[6, 8:12, 8:10] = 1  # 8 voxels
    pred[5, 8:10, 8:10] = 1  # 4 voxels, the same component (face-connected in z)
    pred[6, 0:10, 0] = 1  # 10 more voxels on slice 6: another component, 10 voxels
    return truth, pred


def test_the_overlay_shows_the_experts_slice_not_the_largest_prediction():
    truth, pred = _case()
    assert (pred[6] > 0).sum() > (truth[2] > 0).sum()
    s = pick_slices(truth, pred)
    assert (s.expert, s.expert_voxels) == (2, 9)


def test_the_false_positive_is_the_largest_predicted_component_apart_from_the_expert():
    truth, pred = _case()
    s = pick_slices(truth, pred)
    assert (s.false_positive, s.fp_voxels) == (6, 12)
    # a component that touches the expert is no false positive, however large
    pred[3, 4:7, 4:12] = 1
    s = pick_slices(truth, pred)
    assert (s.false_positive, s.fp_voxels) == (6, 12)


def test_an_empty_expert_mask_shows_the_middle_slice_and_says_so():
    _, pred = _case()
    s = pick_slices(np.zeros(SHAPE), pred)
    assert (s.expert, s.expert_voxels) == (SHAPE[0] // 2, 0)
    assert (s.false_positive, s.fp_voxels) == (6, 12)
    fig = overlay_figure(np.ones(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE), "case")
    titles = [ax.get_title() for ax in fig.axes]
    texts = [t.get_text() for t in fig.axes[1].texts]
    plt.close(fig)
    assert titles == ["no expert lesion: middle slice 5", "worst false positive"]
    assert texts == ["no false-positive component"]


def test_the_overlay_draws_the_expert_green_and_the_prediction_red(tmp_path):
    truth, pred = _case()
    image = np.random.default_rng(0).normal(size=SHAPE)
    fig = overlay_figure(image, truth, pred, "ce fold 1, median")
    colours = [[tuple(c.get_edgecolor()[0]) for c in ax.collections] for ax in fig.axes[:2]]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    handles = [to_rgba(h.get_color()) for h in fig.legends[0].legend_handles]
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert colours[0] == [to_rgba(EXPERT_COLOUR), to_rgba(PREDICTION_COLOUR)]
    assert colours[1] == [to_rgba(PREDICTION_COLOUR)]  # no expert voxel on slice 6
    assert legend == ["expert", "prediction"]
    assert handles == [to_rgba(EXPERT_COLOUR), to_rgba(PREDICTION_COLOUR)]
    assert titles == [
        "most expert lesion: slice 2 (9 voxels)",
        "worst false positive: 12 voxels (slice 6)",
    ]
    overlay(image, truth, pred, tmp_path / "median.png", "ce fold 1, median")
    assert (tmp_path / "median.png").stat().st_size > 5000


def _history(d_real: float, d_fake: float) -> list[dict]:
    return [
        {
            "epoch": e,
            "loss_s": 1.0 / e,
            "loss_ce": 0.5 / e,
            "loss_adv": 0.7,
            "loss_d": 1.3,
            "d_real": d_real,
            "d_fake": d_fake,
            "val_dice": 0.1 * e if e % 2 == 0 else None,
        }
        for e in range(1, 6)
    ]


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_learning_curves_label_every_axis_and_name_no_internal_key(scheme):
    fig = curves_figure(_history(2.0, -2.0), "fold 1", segmentation_panels(scheme, "minimax"))
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    legends = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    plt.close(fig)
    assert all(ylabels) and ylabels[0] == "loss" and ylabels[-1] == "Dice"
    assert legends and not [t for t in legends if t.startswith(("loss_", "d_", "val_"))]
    assert constrained  # constrained layout keeps the suptitle off the panels
    assert len(ylabels) == (3 if SCHEMES[scheme].adversarial else 2)


def test_the_d_scores_of_a_logit_loss_are_drawn_as_probabilities_around_chance():
    fig = curves_figure(_history(800.0, -800.0), "fold 1", segmentation_panels("hybrid", "minimax"))
    ax = fig.axes[1]
    lines = {line.get_label(): np.asarray(line.get_ydata(), float) for line in ax.get_lines()}
    ylabel = ax.get_ylabel()
    plt.close(fig)
    assert ylabel == "sigmoid(mean logit)"
    assert lines["on expert maps"] == pytest.approx(1.0)
    assert lines["on S's maps"] == pytest.approx(0.0)
    assert lines["chance (0.5)"] == pytest.approx(0.5)
    assert all(((v >= 0) & (v <= 1)).all() for v in lines.values())


def test_a_critics_scores_are_drawn_as_logged_and_named_so():
    history = [{"epoch": 1, "d_real": 3.5, "d_fake": -2.0}]
    fig = curves_figure(history, "adda", adda_panels("wgan-gp"))
    ax = fig.axes[1]
    drawn = [float(line.get_ydata()[0]) for line in ax.get_lines()]
    ylabel = ax.get_ylabel()
    plt.close(fig)
    assert drawn == [3.5, -2.0] and ylabel == "mean critic score (unbounded)"


def test_every_adversarial_loss_says_what_its_d_scores_are():
    assert set(GAN_LOSSES) == set(LOGIT_LOSSES) | set(RAW_SCORES)
    assert not set(LOGIT_LOSSES) & set(RAW_SCORES)


def test_the_box_plot_explains_its_markers():
    fig = box_plot_figure({"ce": [0.2, 0.5, 0.9], "hybrid": [0.4, float("nan")]}, "dice", "t")
    key = [t.get_text() for t in fig.legends[0].get_texts()]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    plt.close(fig)
    assert key == ["box: quartiles", "median", "mean", "whiskers: ≤ 1.5 IQR", "patient"]
    assert ticks == ["ce\n(n=3)", "hybrid\n(n=1)"]
