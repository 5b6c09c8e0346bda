"""The phantom contrast table: voxel counts per tissue, z-scores, interpolation, Dice."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from adseg.data import phantom
from adseg.data.contrast import (
    CONTRAST_FILE,
    CONTRAST_TISSUES,
    Z_EDGES,
    best_threshold_dice,
    case_histograms,
    linear_on,
    read_contrast,
    write_contrast,
)
from adseg.data.synthetic import generate_cohort, sample_patient
from adseg.geometry import Grid

SEED = 5


def test_the_cohort_table_counts_every_tissue_voxel_of_the_t2w_grid(tmp_path):
    dataset = generate_cohort(tmp_path / "raw", 2, SEED, two_visit_fraction=0.5, progress=False)
    assert dataset["adseg"]["contrast"] == CONTRAST_FILE
    path = tmp_path / "raw" / CONTRAST_FILE
    assert path.stat().st_size < 20_000
    table = read_contrast(path)
    assert table.tissues == CONTRAST_TISSUES and table.channels == phantom.CHANNELS
    assert table.edges == pytest.approx(Z_EDGES)
    expected = np.zeros((len(table.domains), len(CONTRAST_TISSUES)), np.int64)
    present = np.zeros_like(expected)
    for index in (1, 2):
        patient = sample_patient(SEED, index, 0.5)
        d = table.domains.index(patient.domain)
        for visit in patient.visits:
            _, _, tissue = phantom.render_case(patient, visit)
            for t, name in enumerate(CONTRAST_TISSUES):
                n = np.count_nonzero(tissue == list(phantom.TISSUES).index(name))
                expected[d, t] += n
                present[d, t] += n > 0
    assert len(dataset["cases"]) == 3  # one patient has a second visit
    for c in range(len(phantom.CHANNELS)):
        np.testing.assert_array_equal(table.counts[:, :, c].sum(axis=-1), expected)
    np.testing.assert_array_equal(table.cases, present)
    assert expected[:, CONTRAST_TISSUES.index("lesion")].sum() > 0


def render_on_t2_zscores(images: list[sitk.Image]) -> list[np.ndarray]:
    """Every channel resampled onto the T2w grid, z-scored over its non-zero voxels."""
    out = []
    for image in images:
        array = sitk.GetArrayFromImage(
            sitk.Resample(
                image, images[0], sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
            )
        ).astype(np.float64)
        values = array[array != 0]
        out.append((array - values.mean()) / values.std())
    return out


def test_case_histograms_bin_the_z_scores_of_the_channels_resampled_onto_t2w():
    patient = next(p for i in range(1, 50) if (p := sample_patient(0, i)).lesions)
    images, _, tissue = phantom.render_case(patient, patient.visits[0])
    counts = case_histograms(images, tissue)
    centres = np.concatenate([[Z_EDGES[0]], (Z_EDGES[:-1] + Z_EDGES[1:]) / 2, [Z_EDGES[-1]]])
    for c, z in enumerate(render_on_t2_zscores(images)):
        for t, name in enumerate(CONTRAST_TISSUES):
            inside = z[tissue == list(phantom.TISSUES).index(name)]
            if not inside.size:
                continue
            exact = np.bincount(np.searchsorted(Z_EDGES, inside, side="right"), minlength=50)
            if c == 0:  # T2w: the same voxels, the same statistics
                np.testing.assert_array_equal(counts[t, c], exact)
            else:  # ADC, DWI: statistics from a sample of the T2w grid
                mean = counts[t, c] @ centres / counts[t, c].sum()
                assert mean == pytest.approx(exact @ centres / exact.sum(), abs=0.1)


def test_linear_on_is_simpletks_linear_resampling_at_the_points():
    rng = np.random.default_rng(0)
    image = Grid((7, 6, 5), (2.0, 2.5, 3.0), (1.0, -2.0, 0.5), np.eye(3).ravel()).image(
        rng.integers(1, 1000, (5, 6, 7)).astype(np.int16)
    )
    # an oblique finer grid that reaches past the image on every side
    direction = sitk.VersorTransform((0.2, 0.1, 1.0), 0.3).GetMatrix()
    reference = Grid((30, 28, 12), (0.7, 0.7, 1.6), (-4.0, -9.0, -3.0), direction).image(
        np.zeros((12, 28, 30), np.int16)
    )
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    zyx = list(np.indices(resampled.shape).reshape(3, -1))
    values = linear_on(image, reference, zyx)
    assert 0 < np.mean(values == 0) < 0.9  # some points outside, some inside
    np.testing.assert_allclose(values, resampled.ravel(), atol=1e-3)


def test_the_best_threshold_dice_tries_both_sides_of_every_edge():
    edges = np.array([0.0, 1.0, 2.0])
    # below 0, [0, 1), [1, 2), at or above 2
    lesion, others = np.array([0, 2, 3, 0]), np.array([5, 1, 0, 4])
    # z >= 0 keeps all 5 lesion voxels and 5 others: 2 * 5 / (5 + 5 + 5)
    assert best_threshold_dice(lesion, others, edges) == (pytest.approx(2 / 3), 0.0, "above")
    # z < 2 keeps 5 lesion voxels and 1 other: 10 / 11, against z >= 0: 10 / 17
    assert best_threshold_dice(lesion, np.array([0, 1, 0, 6]), edges) == (
        pytest.approx(10 / 11),
        2.0,
        "below",
    )
    # the tail above the last edge: z >= 2 keeps all 7 and 4 others, z >= 1 two more others
    assert best_threshold_dice(np.array([0, 0, 0, 7]), np.array([5, 1, 2, 4]), edges) == (
        pytest.approx(14 / 18),
        2.0,
        "above",
    )
    # apart: z < 0 finds the lesion alone
    assert best_threshold_dice(np.array([3, 0, 0, 0]), np.array([0, 1, 1, 0]), edges) == (
        1.0,
        0.0,
        "below",
    )


def test_the_table_round_trips_and_a_foreign_file_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    shape = (len(CONTRAST_TISSUES), len(phantom.CHANNELS), len(Z_EDGES) + 1)
    histograms = {f"c{i}": rng.integers(0, 9, shape) for i in range(3)}
    histograms["c2"][CONTRAST_TISSUES.index("lesion")] = 0  # no lesion in this case
    write_contrast(tmp_path / "t.tsv", histograms, {"c0": "B", "c1": "A", "c2": "B"})
    table = read_contrast(tmp_path / "t.tsv")
    assert table.domains == ("A", "B")
    np.testing.assert_array_equal(table.counts[0], histograms["c1"])
    np.testing.assert_array_equal(table.counts[1], histograms["c0"] + histograms["c2"])
    assert table.cases[1, CONTRAST_TISSUES.index("lesion")] == 1
    assert table.cases[1, 0] == 2
    (tmp_path / "qc.tsv").write_text("case_id\tdomain\nc0\tA\n")
    with pytest.raises(ValueError, match="qc.tsv: not a phantom contrast table"):
        read_contrast(tmp_path / "qc.tsv")
