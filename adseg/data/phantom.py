"""The analytic prostate mpMRI phantom: tissues, scanner profiles and rendering.

The phantom lives in world space (mm, ITK LPS): each structure is an irregular ellipsoid, a
function of world position relative to a per-patient gland centre. Each channel is rendered by
sampling that function at sub-voxel points of its own grid and averaging (partial volume), so
T2w (~0.5 x 0.5 x 3 mm) and ADC / high-b DWI (~2 x 2 x 3 mm) see the same anatomy on different
grids, and a second visit is the same anatomy under a new pose. Labels are lesion occupancy
>= 0.5 on the T2w grid.

Tissues (:data:`TISSUES`): fat, muscle, rectal wall and gas, urine, peripheral (PZ) and
transition zone (TZ), lesions and two benign mimics: TZ stromal (BPH) nodules, round, in a dark
T2w capsule, and PZ prostatitis, flat bands. The values in :data:`TISSUES` are nominal; every
lesion and mimic draws its own (:mod:`adseg.data.synthetic`): a lesion lies between its zone
and the nominal lesion by a conspicuity that varies by patient, and mimics are drawn so that
their T2w, ADC and DWI overlap the lesions' on every channel. What tells a lesion from a mimic
is the combination of channels, the shape (a mimic's capsule, a band) and where it lies: pelvic
lymph nodes in the fat beside the gland are drawn exactly like lesions (restricted diffusion,
dark T2w), and only their place outside the gland tells them apart.

DWI is ``S0 * exp(-b * ADC)``, so lesions are bright at high b and how bright depends on the
scanner's b-value. Scanners (:data:`SCANNERS`) differ in T2w gamma, scale and offset, ADC
calibration, b-value, bias field, noise and resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from adseg.geometry import Grid

LABEL_SETS = {
    "lesion": {"background": 0, "lesion": 1},
    "lesion+zones": {"background": 0, "lesion": 1, "peripheral_zone": 2, "transition_zone": 3},
}
CHANNELS = ("T2w", "ADC", "DWI")
# relative T2w signal, true ADC (1e-6 mm^2/s), b=0 signal of the fat-suppressed DWI
TISSUES = {
    "gas": (0.02, 0, 0.0),  # rectal lumen
    "fat": (0.80, 100, 0.05),
    "muscle": (0.22, 1400, 0.45),
    "rectal_wall": (0.35, 1200, 0.9),
    "urine": (1.40, 3000, 1.0),
    "peripheral_zone": (0.90, 1600, 1.0),
    "transition_zone": (0.50, 1200, 0.85),
    "stromal_nodule": (0.32, 1000, 0.85),
    "prostatitis": (0.55, 1150, 0.95),
    "nodule_capsule": (0.15, 1100, 0.6),  # the fibrous rim of a BPH nodule
    "lymph_node": (0.30, 750, 0.9),  # in the fat beside the gland; each draws its own values
    "lesion": (0.30, 750, 0.9),  # a fully conspicuous lesion
}
GAS, FAT, MUSCLE, WALL, URINE, PZ, TZ, NODULE, PROSTATITIS, CAPSULE, NODE, LESION = range(
    len(TISSUES)
)
T2_SIGNAL, ADC_TRUE, DWI_S0 = np.array(list(TISSUES.values()), np.float32).T
GLAND = (PZ, TZ, NODULE, PROSTATITIS, CAPSULE, LESION)
T2_SUB, DWI_SUB = (1, 1, 3), (2, 2, 3)  # sub-samples per voxel (x, y, z) for partial volume
INT16_MAX = 32767
Rng = np.random.Generator


@dataclass(frozen=True)
class ScannerProfile:
    """How one scanner domain turns tissue properties into stored intensities.

    Attributes:
        t2_gamma, t2_scale, t2_offset: stored T2w = offset + scale * signal ** gamma.
        adc_scale: vendor ADC calibration factor (stored ADC = scale * true ADC + noise).
        b_value: DWI b-value in s/mm^2 (sets the lesion contrast on DWI).
        dwi_scale: stored DWI per unit of relative signal.
        bias: strength of the smooth multiplicative bias field (log-amplitude).
        t2_noise, dwi_noise: Rician noise sigma, relative to a signal of 1.
        adc_noise: Gaussian noise sigma of the ADC map in 1e-6 mm^2/s.
        t2_spacing, dwi_spacing: voxel size (x, y, z) in mm; ADC shares the DWI grid.
    """

    t2_gamma: float
    t2_scale: float
    t2_offset: float
    adc_scale: float
    b_value: float
    dwi_scale: float
    bias: float
    t2_noise: float
    dwi_noise: float
    adc_noise: float
    t2_spacing: tuple[float, float, float]
    dwi_spacing: tuple[float, float, float]


# fmt: off
SCANNERS = {
    "A": ScannerProfile(
        t2_gamma=1.0, t2_scale=1000, t2_offset=0, adc_scale=1.0, b_value=1400, dwi_scale=4000,
        bias=0.25, t2_noise=0.04, dwi_noise=0.015, adc_noise=80,
        t2_spacing=(0.5, 0.5, 3.0), dwi_spacing=(2.0, 2.0, 3.0),
    ),
    # B: flatter T2w contrast, ADC read 10 % high, lower b (less DWI lesion contrast),
    # stronger bias field, noisier and coarser
    "B": ScannerProfile(
        t2_gamma=0.8, t2_scale=700, t2_offset=80, adc_scale=1.1, b_value=1000, dwi_scale=2500,
        bias=0.35, t2_noise=0.075, dwi_noise=0.03, adc_noise=120,
        t2_spacing=(0.6, 0.6, 3.6), dwi_spacing=(2.5, 2.5, 3.6),
    ),
}
# Scanner B under dataset.synthetic.domain_shift "protocol": B also runs another protocol. Its
# "high-b" DWI is acquired at b = 100 s/mm^2, where lesions are no brighter than the gland
# (their restricted diffusion barely shows), and its T2w is strongly compressed (gamma 0.5):
# a segmentor that learnt A's DWI-bright, T2w-dark lesions misreads B, while B's own labels
# still teach it (ADC keeps the lesions dark). The shift ADDA is meant for (adseg adda).
PROTOCOL_B = dataclasses.replace(SCANNERS["B"], t2_gamma=0.5, b_value=100)
# fmt: on
DOMAIN_SHIFTS = ("scanner", "protocol")


def scanner_profile(domain: str, shift: str = "scanner") -> ScannerProfile:
    """The profile patients of ``domain`` are scanned with under ``shift``: ``scanner`` (the
    default: :data:`SCANNERS`) or ``protocol`` (B is :data:`PROTOCOL_B`).

    Raises:
        ValueError: an unknown shift.
    """
    if shift not in DOMAIN_SHIFTS:
        raise ValueError(f"domain shift {shift!r} unknown; choose from {', '.join(DOMAIN_SHIFTS)}")
    return PROTOCOL_B if shift == "protocol" and domain == "B" else SCANNERS[domain]


@dataclass(frozen=True, eq=False)  # numpy fields: compare by identity
class Blob:
    """One tissue structure: an irregular ellipsoid in world space.

    A point x is inside when ``|u| <= 1 + sum_k a_k sin(k_k . u + phi_k)`` with
    ``u = diag(1/radii) rotation^T (x - centre)``. The waves live in these normalised
    coordinates, so a growing lesion keeps its shape.

    Attributes:
        centre: (3,) mm, world LPS.
        radii: (3,) semi-axes in mm.
        rotation: (3, 3) columns are the blob's axes in world space.
        waves: (K, 5) wave vector (rad per unit radius), phase (rad), amplitude.
        tissue: tissue code painted inside.
        hosts: tissue codes it may replace; empty means any.
    """

    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    waves: np.ndarray
    tissue: int
    hosts: tuple[int, ...] = ()
    # (T2w signal, true ADC, DWI S0) of this structure when it differs from its tissue's
    # nominal values (:data:`TISSUES`): lesions and mimics each draw their own
    properties: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Visit:
    """One scan of a patient: its grids and how much its lesions grew since visit 1."""

    number: int
    t2_grid: Grid
    dwi_grid: Grid
    oblique_deg: float
    growth: float


@dataclass(frozen=True)
class Patient:
    """Everything random about one patient, drawn before any rendering."""

    seed: int
    index: int
    domain: str
    blobs: tuple[Blob, ...]  # in painting order; lesions last
    lesions: tuple[tuple[str, float], ...]  # (zone, nominal diameter in mm)
    n_mimics: int
    visits: tuple[Visit, ...]
    shift: str = "scanner"  # how B differs from A: see scanner_profile


def render_case(
    patient: Patient, visit: Visit, labels: str = "lesion"
) -> tuple[list[sitk.Image], sitk.Image, np.ndarray]:
    """Render one scan.

    Returns:
        The T2w, ADC and DWI images (int16), the label image (uint8, T2w grid) and the tissue
        code at each T2w voxel centre, ``(z, y, x)``.
    """
    scanner = scanner_profile(patient.domain, patient.shift)
    rng = np.random.default_rng([patient.seed, patient.index, visit.number])
    blobs = [
        dataclasses.replace(b, radii=b.radii * visit.growth) if b.tissue == LESION else b
        for b in patient.blobs
    ]
    codes, kinds, table = _structure_codes(blobs)
    t2_code = _paint(blobs, codes, kinds, visit.t2_grid, T2_SUB)
    dwi_code = _paint(blobs, codes, kinds, visit.dwi_grid, DWI_SUB)
    t2_signal, adc_true, s0 = table.T
    bias_waves = _bias_waves(rng)
    t2 = _block_mean(t2_signal[t2_code], T2_SUB) ** scanner.t2_gamma
    t2 = _rician(t2 * _bias(visit.t2_grid, bias_waves, scanner.bias), scanner.t2_noise, rng)
    dwi_signal = s0 * np.exp(-scanner.b_value * 1e-6 * adc_true)
    dwi = _block_mean(dwi_signal[dwi_code], DWI_SUB)
    dwi = _rician(dwi * _bias(visit.dwi_grid, bias_waves, scanner.bias), scanner.dwi_noise, rng)
    adc = scanner.adc_scale * _block_mean(adc_true[dwi_code], DWI_SUB)
    adc = adc + rng.normal(0.0, scanner.adc_noise, adc.shape)
    images = [
        _image(scanner.t2_offset + scanner.t2_scale * t2, visit.t2_grid),
        _image(adc, visit.dwi_grid),
        _image(scanner.dwi_scale * dwi, visit.dwi_grid),
    ]
    t2_tissue = kinds[t2_code]
    label = _image(_labels(t2_tissue, labels), visit.t2_grid, np.uint8)
    return images, label, t2_tissue[T2_SUB[2] // 2 :: T2_SUB[2]]


def _structure_codes(blobs: list[Blob]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A code per blob, what tissue each code is, and each code's (T2w, ADC, S0).

    Blobs with their own ``properties`` get codes after the tissues' so that two lesions of
    one patient can differ in contrast; the rest paint their tissue's code.
    """
    codes, kinds, rows = [], list(range(len(TISSUES))), [list(v) for v in TISSUES.values()]
    for blob in blobs:
        if blob.properties is None:
            codes.append(blob.tissue)
        else:
            codes.append(len(kinds))
            kinds.append(blob.tissue)
            rows.append(list(blob.properties))
    if len(kinds) > 255:
        raise ValueError(f"{len(kinds)} structure codes; the tissue map holds 255")
    return codes, np.asarray(kinds, np.uint8), np.asarray(rows, np.float32)


def _paint(
    blobs: list[Blob], codes: list[int], kinds: np.ndarray, grid: Grid, sub: tuple[int, int, int]
) -> np.ndarray:
    """Structure code (:func:`_structure_codes`) at ``sub`` (x, y, z) sub-samples per voxel.

    Returns:
        uint8 array ``(Z * sz, Y * sy, X * sx)``; later blobs overwrite earlier ones where the
        tissue underneath (``kinds`` of its code) is one of their hosts.
    """
    n = np.asarray(grid.size) * sub
    tissue = np.full(n[::-1], FAT, np.uint8)
    d = np.asarray(grid.direction).reshape(3, 3) * grid.spacing
    for blob, code in zip(blobs, codes, strict=True):
        # u = m @ index + t maps continuous voxel indices to normalised blob coordinates
        m = (blob.rotation.T @ d) / blob.radii[:, None]
        t = blob.rotation.T @ (np.asarray(grid.origin) - blob.centre) / blob.radii
        reach = 1.0 + np.abs(blob.waves[:, 4]).sum()
        inv = np.linalg.inv(m)
        mid, half = -inv @ t, reach * np.linalg.norm(inv, axis=1)
        lo = np.clip(np.floor((mid - half + 0.5) * sub - 0.5), 0, n).astype(int)
        hi = np.clip(np.ceil((mid + half + 0.5) * sub - 0.5) + 1, 0, n).astype(int)
        if np.any(hi <= lo):
            continue
        axes = [(np.arange(a, b) + 0.5) / s - 0.5 for a, b, s in zip(lo, hi, sub, strict=True)]
        rho2 = sum(_affine(m[k], t[k], axes) ** 2 for k in range(3))
        edge = 1.0 + sum(
            w[4] * np.sin(_affine(w[:3] @ m, w[:3] @ t + w[3], axes)) for w in blob.waves
        )
        inside = rho2 <= edge**2
        view = tissue[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        if blob.hosts:
            inside &= np.isin(kinds[view], blob.hosts)
        view[inside] = code
    return tissue


def _affine(w: np.ndarray, w0: float, axes: list[np.ndarray]) -> np.ndarray:
    """``w . (x, y, z) + w0`` on the grid spanned by 1-D ``axes`` (x, y, z), as ``(z, y, x)``."""
    x, y, z = axes
    return (
        (w[0] * x).astype(np.float32)[None, None, :]
        + (w[1] * y).astype(np.float32)[None, :, None]
        + (w[2] * z + w0).astype(np.float32)[:, None, None]
    )


def _block_mean(values: np.ndarray, sub: tuple[int, int, int]) -> np.ndarray:
    """Average ``(Z * sz, Y * sy, X * sx)`` sub-samples to ``(Z, Y, X)`` voxels."""
    z, y, x = (n // s for n, s in zip(values.shape, sub[::-1], strict=True))
    return values.reshape(z, sub[2], y, sub[1], x, sub[0]).mean(axis=(1, 3, 5))


def _bias_waves(rng: Rng) -> np.ndarray:
    """(4, 5) slow plane waves (rad/mm, phase, weight) of a coil sensitivity profile."""
    k = rng.normal(size=(4, 3))
    k *= (2 * np.pi / rng.uniform(80, 200, 4) / np.linalg.norm(k, axis=1))[:, None]
    return np.column_stack([k, rng.uniform(0, 2 * np.pi, 4), rng.dirichlet([1] * 4)])


def _bias(grid: Grid, waves: np.ndarray, strength: float) -> np.ndarray:
    """Multiplicative bias ``exp(strength * field)`` at the voxel centres of ``grid``.

    The field is fixed in world space for a scan, so T2w and DWI of one visit share it.
    """
    d = np.asarray(grid.direction).reshape(3, 3) * grid.spacing
    axes = [np.arange(n, dtype=float) for n in grid.size]
    field = sum(w[4] * np.sin(_affine(w[:3] @ d, w[:3] @ grid.origin + w[3], axes)) for w in waves)
    return np.exp(strength * field)


def _rician(signal: np.ndarray, sigma: float, rng: Rng) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise: Rician, as in magnitude images."""
    real = signal + rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, rng.normal(0.0, sigma, signal.shape))


def _labels(tissue: np.ndarray, labels: str) -> np.ndarray:
    """Label map on the voxel grid from T2w sub-samples: occupancy >= 0.5 wins."""
    lesion = _block_mean((tissue == LESION).astype(np.float32), T2_SUB) >= 0.5
    out = np.zeros(lesion.shape, np.uint8)
    if labels == "lesion+zones":
        pz = _block_mean(np.isin(tissue, (PZ, PROSTATITIS)).astype(np.float32), T2_SUB)
        tz = _block_mean(np.isin(tissue, (TZ, NODULE, CAPSULE)).astype(np.float32), T2_SUB)
        gland = _block_mean(np.isin(tissue, GLAND).astype(np.float32), T2_SUB) >= 0.5
        out[gland] = np.where(pz[gland] >= tz[gland], 2, 3)
    out[lesion] = LABEL_SETS[labels]["lesion"]
    return out


def _image(values: np.ndarray, grid: Grid, dtype=np.int16) -> sitk.Image:
    """A SimpleITK image on ``grid`` from ``(z, y, x)`` values, rounded, clipped to >= 0."""
    return grid.image(np.clip(np.rint(values), 0, INT16_MAX).astype(dtype))
