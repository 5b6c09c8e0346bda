"""QC figures: written from a real preprocessed cohort, one per case plus the overview."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
from matplotlib.colors import to_rgba

from adseg.config import resolve_config
from adseg.guard import MARKER
from adseg.plots import EXPERT_COLOUR, plt
from adseg.preprocessing.cohort import prepare_cohort
from adseg.preprocessing.qc import case_panels, crop_panel, qc_report, read_tsv


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
