"""How the phantom's lesions, benign mimics and zones look on each channel: z-score histograms.

For every case the synthetic cohort writes, :func:`case_histograms` counts the voxels of each
tissue in :data:`CONTRAST_TISSUES` by z-score on each channel, at the T2w voxel centres where
:func:`adseg.data.phantom.render_case`'s tissue map puts that tissue; ADC and DWI are read
there by linear interpolation (SimpleITK's ``sitkLinear`` resampling onto the T2w image, at
those points only). :func:`write_contrast` sums the cases per scanner domain into
``phantom_contrast.tsv``; :func:`best_threshold_dice` says how well one threshold on one
channel finds the lesions among the other tissues.

``phantom_contrast.tsv`` has one row per domain, tissue and channel: ``domain``, ``tissue``,
``channel``, ``cases`` (cases with a voxel of the tissue), ``voxels`` (all of them), then the
counts: ``z_lt_<lo>`` below the first bin, ``z_<a>`` for ``a <= z < a + width`` (bins of
:data:`Z_EDGES`), ``z_ge_<hi>`` at or above the last edge. Fixed bins, so tables add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from adseg.data.phantom import CHANNELS, GLAND, NODE, TISSUES
from adseg.geometry import Grid
from adseg.io import write_tsv

CONTRAST_FILE = "phantom_contrast.tsv"
_NAMES = list(TISSUES)
# the gland's zones, benign mimics (and a nodule's capsule) and lesions, and the lymph nodes
# beside it, in the order of TISSUES
CONTRAST_TISSUES = tuple(name for code, name in enumerate(_NAMES) if code in (*GLAND, NODE))
Z_EDGES = np.linspace(-4.0, 8.0, 49)  # 0.25 wide
STATS_SAMPLE = 10_000  # T2w voxels whose ADC and DWI give a case's statistics
_HEAD = ("domain", "tissue", "channel", "cases", "voxels")


def _bin_columns(edges: np.ndarray) -> list[str]:
    return [f"z_lt_{edges[0]:g}", *(f"z_{a:.2f}" for a in edges[:-1]), f"z_ge_{edges[-1]:g}"]


def case_histograms(images: list[sitk.Image], tissue: np.ndarray) -> np.ndarray:
    """Voxel counts of one case by tissue, channel and z-score bin.

    Each channel is z-scored over its non-zero voxels on the T2w grid (preprocessing's
    ``zscore-nonzero`` once every channel is resampled onto the T2w grid): T2w over all of
    them; ADC and DWI, interpolated, over :data:`STATS_SAMPLE` T2w voxels drawn at random (a
    tissue's z-scores then move by a few hundredths against the full grid's statistics, at a
    fraction of the work).

    Args:
        images: T2w, ADC and DWI as :func:`adseg.data.phantom.render_case` returns them.
        tissue: tissue code at each T2w voxel centre, ``(z, y, x)``.

    Returns:
        int64 ``(len(CONTRAST_TISSUES), len(CHANNELS), len(Z_EDGES) + 1)``: below the first
        edge, each bin, at or above the last edge.
    """
    lut = np.full(256, 255, np.uint8)
    lut[[_NAMES.index(t) for t in CONTRAST_TISSUES]] = np.arange(len(CONTRAST_TISSUES))
    row = lut[tissue].ravel()
    voxels = np.flatnonzero(row != 255)
    # a fixed random sample: a regular one would meet the ADC grid at the same phase each time
    sample = np.random.default_rng(0).integers(0, tissue.size, STATS_SAMPLE)
    points = np.unravel_index(np.concatenate([voxels, sample]), tissue.shape)
    t2 = sitk.GetArrayViewFromImage(images[0])
    keys = []
    for c, image in enumerate(images):
        if c == 0:
            values, stats = t2.ravel()[voxels], t2
        else:
            values = linear_on(image, images[0], points)
            values, stats = values[: voxels.size], values[voxels.size :]
        bins = _z_bins(values, *_nonzero_mean_std(stats))
        keys.append((row[voxels].astype(np.int64) * len(CHANNELS) + c) * (len(Z_EDGES) + 1) + bins)
    shape = (len(CONTRAST_TISSUES), len(CHANNELS), len(Z_EDGES) + 1)
    return np.bincount(np.concatenate(keys), minlength=np.prod(shape)).reshape(shape)


def _z_bins(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Bin of each z = (value - mean) / std: 0 below :data:`Z_EDGES`, then its bins, then one
    at or above its last edge."""
    width, std = Z_EDGES[1] - Z_EDGES[0], std or 1.0
    position = (values - mean) / (std * width) - Z_EDGES[0] / width
    return np.floor(np.clip(position, -1.0, len(Z_EDGES) - 1)).astype(np.int64) + 1


def linear_on(image: sitk.Image, reference: sitk.Image, zyx: list[np.ndarray]) -> np.ndarray:
    """``image`` at voxel centres ``(z, y, x)`` of ``reference``, as SimpleITK's linear
    resampling onto ``reference`` (0 outside) gives it, at those points only.

    Args:
        image, reference: 3-D images.
        zyx: three ``(N,)`` integer arrays, voxel indices into ``reference``.

    Returns:
        float64 ``(N,)``.
    """
    grid, ref = Grid.of(image), Grid.of(reference)
    # the affine from reference to image voxel indices, applied per axis: (N, 3) @ (3, 3)
    # would call BLAS, whose threads cost more here than the product
    origin = grid.world_to_index(ref.index_to_world(np.zeros((1, 3))))[0]
    steps = grid.world_to_index(ref.index_to_world(np.eye(3))) - origin
    x, y, z = zyx[2], zyx[1], zyx[0]
    index = [origin[k] + x * steps[0, k] + y * steps[1, k] + z * steps[2, k] for k in range(3)]
    values = ndimage.map_coordinates(
        sitk.GetArrayViewFromImage(image),
        index[::-1],
        output=np.float64,
        order=1,
        mode="nearest",  # ITK's linear interpolator repeats edge voxels up to half a voxel out
        prefilter=False,
    )
    for k, n in enumerate(grid.size):
        values[(index[k] < -0.5) | (index[k] > n - 0.5)] = 0.0
    return values


def _nonzero_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the non-zero ``values`` (zeros add nothing to sums)."""
    x = np.asarray(values, np.float64).ravel()
    n = max(np.count_nonzero(x), 1)
    mean = x.sum() / n
    return float(mean), float(np.sqrt(max(np.square(x).sum() / n - mean**2, 0.0)))


def write_contrast(path: str | Path, histograms: dict[str, np.ndarray], domains: dict) -> None:
    """Sum the cases' :func:`case_histograms` per domain and write them as a TSV (atomically).

    Args:
        path: the TSV to write.
        histograms: case id -> its histograms.
        domains: case id -> its scanner domain.
    """
    columns = _bin_columns(Z_EDGES)
    rows = []
    for domain in sorted(set(domains.values())):
        cases = [h for case, h in histograms.items() if domains[case] == domain]
        total = np.sum(cases, axis=0)
        present = np.sum([h[:, 0].sum(axis=1) > 0 for h in cases], axis=0)
        for t, tissue in enumerate(CONTRAST_TISSUES):
            for c, channel in enumerate(CHANNELS):
                head = (domain, tissue, channel, int(present[t]), int(total[t, c].sum()))
                rows.append(dict(zip(_HEAD + tuple(columns), (*head, *total[t, c]), strict=True)))
    write_tsv(path, rows, _HEAD + tuple(columns))


@dataclass(frozen=True)
class ContrastTable:
    """``phantom_contrast.tsv`` as arrays.

    Attributes:
        edges: z-score bin edges ``(B + 1,)``.
        domains, tissues, channels: the table's, in its order.
        counts: int64 ``(domains, tissues, channels, B + 2)``: below, bins, at/above.
        cases: ``(domains, tissues)`` cases with a voxel of the tissue.
    """

    edges: np.ndarray
    domains: tuple[str, ...]
    tissues: tuple[str, ...]
    channels: tuple[str, ...]
    counts: np.ndarray
    cases: np.ndarray


def read_contrast(path: str | Path) -> ContrastTable:
    """Read a ``phantom_contrast.tsv`` (:func:`write_contrast`); the bins come from its header.

    Raises:
        ValueError: the file is not such a table, naming the file.
    """
    header, *lines = [line.split("\t") for line in Path(path).read_text().splitlines()] or [[]]
    bins = header[len(_HEAD) :]
    if tuple(header[: len(_HEAD)]) != _HEAD or len(bins) < 3:
        raise ValueError(f"{path}: not a phantom contrast table (columns {', '.join(_HEAD)}, z_*)")
    edges = np.array([float(b[2:]) for b in bins[1:-1]] + [float(bins[-1][len("z_ge_") :])])
    names = [tuple(dict.fromkeys(line[k] for line in lines)) for k in range(3)]
    counts = np.zeros((*map(len, names), len(bins)), np.int64)
    cases = np.zeros(counts.shape[:2], np.int64)
    for line in lines:
        d, t, c = (n.index(v) for n, v in zip(names, line[:3], strict=True))
        counts[d, t, c] = [int(v) for v in line[len(_HEAD) :]]
        cases[d, t] = int(line[3])
    return ContrastTable(edges, *names, counts, cases)


def best_threshold_dice(
    lesion: np.ndarray, others: np.ndarray, edges: np.ndarray
) -> tuple[float, float, str]:
    """The best Dice of one threshold on a histogram: lesion voxels against all others.

    Args:
        lesion, others: voxel counts per bin, below and at/above tails included
            (``(B + 2,)``, :class:`ContrastTable`'s ``counts``).
        edges: the bins' edges ``(B + 1,)``.

    Returns:
        Dice, the threshold (a bin edge, or -inf / inf) and its side: ``below`` (lesion is
        z < threshold) or ``above`` (z >= threshold). Exact for thresholds on bin edges.
    """
    lesion, others = np.asarray(lesion, float), np.asarray(others, float)
    thresholds = np.concatenate([[-np.inf], edges, [np.inf]])
    below = np.concatenate([[0.0], np.cumsum(lesion)]), np.concatenate([[0.0], np.cumsum(others)])
    above = lesion.sum() - below[0], others.sum() - below[1]
    best = (0.0, -np.inf, "above")
    for side, (tp, fp) in (("below", below), ("above", above)):
        # 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + all lesion voxels)
        dice = 2 * tp / np.maximum(tp + fp + lesion.sum(), 1.0)
        k = int(np.argmax(dice))
        if dice[k] > best[0]:
            best = (float(dice[k]), float(thresholds[k]), side)
    return best
