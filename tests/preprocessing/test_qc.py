"""QC figures: written from a real preprocessed cohort, one per case plus the overview."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
from matplotlib.colors import to_rgba

from adseg.config import resolve_config
from adseg.data.contrast import CONTRAST_TISSUES, Z_EDGES, write_contrast
from adseg.data.phantom import CHANNELS
from adseg.guard import MARKER
from adseg.plots import EXPERT_COLOUR, plt
from adseg.preprocessing.cohort import prepare_cohort
from adseg.preprocessing.qc import (
    case_panels,
    crop_panel,
    phantom_contrast_figure,
    qc_report,
    read_tsv,
)


def test_qc_report_draws_every_case(nnunet_cohort, tmp_path):
    root = nnunet_cohort(case_ids=("c0", "c1", "c2"))
    config = resolve_config({"preprocess": {"target_spacing": [1.2, 1.2, 3.0]}})
    prepare_cohort(root, config, tmp_path / "pre", show_progress=False)
    written = qc_report(tmp_path / "pre", tmp_path / "qc", show_progress=False)
    assert [p.name for p in written] == ["overview.png", "c0.png", "c1.png", "c2.png"]
    overview = mpimg.imread(written[0])
    assert overview.shape[0] > 400 and overview.shape[1] > 800
    # a figure of real data is not blank: many distinct colours
    case = mpimg.imread(written[1])
    assert len({tuple(px) for px in case.reshape(-1, case.shape[-1])[::50]}) > 50
    assert len(read_tsv(tmp_path / "pre" / "qc.tsv")) == 3
    # no temporary files left behind; the marker says the folder is adseg's to replace
    assert [p.name for p in (tmp_path / "qc").rglob(".*")] == [MARKER]


def test_the_case_figure_contours_the_expert_in_the_expert_colour():
    label = np.zeros((5, 8, 8), np.uint8)
    label[3, 2:5, 2:5] = 1
    arrays = [np.random.default_rng(c).normal(size=label.shape) for c in range(2)]
    fig = case_panels(arrays, label, ["T2w", "ADC"], "c0")
    colours = [tuple(c.get_edgecolor()[0]) for ax in fig.axes for c in ax.collections]
    key = [t.get_text() for t in fig.legends[0].get_texts()]
    title = fig.get_suptitle()
    plt.close(fig)
    assert colours == [to_rgba(EXPERT_COLOUR)] * 2
    assert key == ["expert"] and title == "c0  slice 3"


def test_the_crop_panel_says_when_every_case_keeps_the_same_fraction():
    fig, (same, spread) = plt.subplots(1, 2)
    crop_panel(same, {"A": np.array([0.4213, 0.4216, 0.4213]), "B": np.array([0.4215])})
    crop_panel(spread, {"A": np.array([0.3, 0.5]), "B": np.array([0.45, 0.46, 0.47])})
    texts = [[t.get_text() for t in ax.texts] for ax in (same, spread)]
    dots = [len(c.get_offsets()) for c in spread.collections]
    plt.close(fig)
    assert texts[0] == ["all 4 cases keep\n0.421 of their voxels"]
    assert texts[1] == ["n=2\n0.300–0.500", "n=3\n0.450–0.470"] and dots == [2, 3]


def test_qc_of_the_synthetic_cohort_draws_the_phantom_contrast(tiny_experiment, tmp_path):
    written = qc_report(tiny_experiment["preprocessed"], tmp_path / "qc", show_progress=False)
    assert [p.name for p in written[:2]] == ["overview.png", "phantom_contrast.png"]
    assert mpimg.imread(written[1]).shape[1] > 1000
    table = (tmp_path / "qc" / "phantom_contrast.tsv").read_text()
    assert table == (tiny_experiment["raw"] / "phantom_contrast.tsv").read_text()


def _histograms(lesion_dwi_bin: int) -> dict[str, np.ndarray]:
    """Two cases: every tissue at z in [0, 0.25) on every channel, except the lesion's DWI."""
    counts = np.zeros((len(CONTRAST_TISSUES), len(CHANNELS), len(Z_EDGES) + 1), np.int64)
    zero = int(np.searchsorted(Z_EDGES, 0.0, side="right"))
    counts[:, :, zero] = 10
    lesion = CONTRAST_TISSUES.index("lesion")
    counts[lesion, 2] = 0
    counts[lesion, 2, lesion_dwi_bin] = 4
    return {"c1": counts, "c2": counts}


def test_the_contrast_figure_draws_the_lesion_in_the_expert_colour_with_the_best_dice(tmp_path):
    # the lesion overlaps everything on T2w and ADC, and is alone at z in [2, 2.25) on DWI
    bin_2 = int(np.searchsorted(Z_EDGES, 2.0, side="right"))
    write_contrast(tmp_path / "t.tsv", _histograms(bin_2), {"c1": "A", "c2": "B"})
    fig = phantom_contrast_figure(tmp_path / "t.tsv")
    titles = [ax.get_title() for ax in fig.axes]
    xlabels = {ax.get_xlabel() for ax in fig.axes}
    steps = [(p.get_label(), to_rgba(p.get_edgecolor())) for p in fig.axes[0].patches]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    suptitle = fig.get_suptitle()
    plt.close(fig)
    # T2w: one bin holds all: the best is to take it, 20 lesion and 20 voxels of each other
    dice = f"{40 / (40 + 20 * (len(CONTRAST_TISSUES) - 1)):.2f}"
    assert titles[0] == (
        f"T2w: best single threshold\nz < 0.25: Dice {dice} (per domain: A {dice}, B {dice})"
    )
    # DWI: any threshold between the others and the lesion; the lowest is given
    assert (
        titles[2] == "DWI: best single threshold\nz ≥ 0.25: Dice 1.00 (per domain: A 1.00, B 1.00)"
    )
    assert xlabels == {"intensity (z-score of the case)"}
    assert ("lesion (20 voxels, 2 cases)", to_rgba(EXPERT_COLOUR)) in steps
    assert legend[-1] == "lesion (20 voxels, 2 cases)" and len(legend) == len(CONTRAST_TISSUES)
    assert suptitle.startswith("Synthetic phantom, 2 cases: lesion vs benign mimics")
