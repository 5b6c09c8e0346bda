"""QC figures: written from a real preprocessed cohort, one per case plus the overview."""

from __future__ import annotations

import matplotlib.image as mpimg

from adseg.config import resolve_config
from adseg.guard import MARKER
from adseg.preprocessing.cohort import prepare_cohort
from adseg.preprocessing.qc import qc_report, read_tsv


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
