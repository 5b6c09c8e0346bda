"""A deterministic synthetic multi-parametric prostate MRI cohort (nnU-Net v2 raw layout).

:func:`sample_patient` draws everything random about one patient (anatomy, lesions, benign
mimics, scanner and visit poses) from the seed and the patient's index alone;
:func:`generate_cohort` renders every visit with :func:`adseg.data.phantom.render_case` and
writes the images, labels and dataset.json. The phantom itself (tissues, scanner profiles,
rendering with partial volume) is :mod:`adseg.data.phantom`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from adseg import __version__
from adseg.data.contrast import CONTRAST_FILE, case_histograms, write_contrast
from adseg.data.phantom import (
    CAPSULE,
    CHANNELS,
    FAT,
    GAS,
    GLAND,
    LABEL_SETS,
    LESION,
    MUSCLE,
    NODE,
    NODULE,
    PROSTATITIS,
    PZ,
    TISSUES,
    TZ,
    URINE,
    WALL,
    Blob,
    Patient,
    Rng,
    ScannerProfile,
    Visit,
    render_case,
    scanner_profile,
)
from adseg.geometry import Grid, obliquity_deg, orientation_code
from adseg.guard import check_output, claim
from adseg.io import atomic_dir, write_image, write_json
from adseg.log import parallel_map

RAS = np.diag([-1.0, -1.0, 1.0])
T2_FOV_MM, DWI_FOV_MM, SI_COVERAGE_MM = 72.0, 80.0, 54.0


def generate_cohort(
    out_dir: str | Path,
    n_patients: int = 40,
    seed: int = 0,
    labels: str = "lesion",
    two_visit_fraction: float = 0.25,
    domain_b_fraction: float = 0.5,
    workers: int = 1,
    progress: bool = True,
    domain_shift: str = "scanner",
) -> dict:
    """Write the synthetic cohort to ``out_dir`` in nnU-Net v2 raw layout.

    The cohort is built in a temporary folder beside ``out_dir`` (:func:`adseg.io.atomic_dir`)
    that replaces it only once complete, and only when it is new, empty or adseg's (a folder
    holding anyone else's files is refused: :func:`adseg.guard.check_output`). Patient ``i``
    (from 1) depends only on ``seed`` and ``i``, so a smaller cohort is a prefix of a larger
    one and ``workers`` changes nothing.

    Args:
        out_dir: destination folder (replaced if it exists and is adseg's).
        n_patients: number of patients (>= 1).
        seed: non-negative integer seed.
        labels: label set, a key of :data:`adseg.data.phantom.LABEL_SETS`.
        two_visit_fraction: share of patients with a second visit, in [0, 1].
        domain_b_fraction: share of patients scanned on scanner B, in [0, 1].
        workers: processes rendering patients in parallel.
        progress: show a progress bar over patients.
        domain_shift: ``scanner`` (B is another scanner) or ``protocol`` (B also runs another
            protocol: a low-b DWI and compressed T2w, :data:`adseg.data.phantom.PROTOCOL_B`).

    Returns:
        The dataset.json content, with per-case metadata under ``cases``.

    Raises:
        ValueError: on an unknown label set or an out-of-range number, naming what is allowed.
        OutputError: ``out_dir`` holds files adseg did not write.
    """
    _check_args(n_patients, seed, labels, two_visit_fraction, domain_b_fraction, workers)
    scanner_profile("A", domain_shift)  # an unknown shift fails here, before any work
    check_output(out_dir, [], replaces=True)
    patients = [
        sample_patient(seed, i, two_visit_fraction, domain_b_fraction, domain_shift)
        for i in range(1, n_patients + 1)
    ]
    with atomic_dir(out_dir) as root:
        claim(root, "synth-cohort")
        cases: dict[str, dict] = {}
        histograms: dict[str, np.ndarray] = {}
        jobs = [(p, root, labels) for p in patients]
        for meta, counts in parallel_map(_write_patient, jobs, workers, "synth-cohort", progress):
            cases.update(meta)
            histograms.update(counts)
        domains = {case: meta["domain"] for case, meta in cases.items()}
        write_contrast(root / CONTRAST_FILE, histograms, domains)
        dataset = {
            "name": "adseg-synthetic-prostate",
            "description": "Analytic phantom of prostate mpMRI (T2w, ADC, high-b DWI) with "
            "lesions, benign mimics, two scanner domains, mixed orientations and repeat visits.",
            "licence": "CC0-1.0",
            "file_ending": ".nii.gz",
            "channel_names": {str(c): name for c, name in enumerate(CHANNELS)},
            "labels": LABEL_SETS[labels],
            "numTraining": len(cases),
            "adseg": {
                "generator": "adseg.data.synthetic",
                "version": __version__,
                "seed": seed,
                "n_patients": n_patients,
                "labels": labels,
                "two_visit_fraction": two_visit_fraction,
                "domain_b_fraction": domain_b_fraction,
                "domain_shift": domain_shift,
                "contrast": CONTRAST_FILE,
            },
            "cases": cases,
        }
        write_json(root / "dataset.json", dataset)
    return dataset


def _check_args(n_patients, seed, labels, two_visit_fraction, domain_b_fraction, workers) -> None:
    if labels not in LABEL_SETS:
        raise ValueError(f"labels {labels!r} unknown; choose from {', '.join(LABEL_SETS)}")
    if not isinstance(n_patients, int) or n_patients < 1:
        raise ValueError(f"n_patients must be an integer >= 1, got {n_patients!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    fractions = {"two_visit_fraction": two_visit_fraction, "domain_b_fraction": domain_b_fraction}
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _write_patient(
    patient: Patient, root: Path, labels: str
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Render and write every visit of one patient; return their dataset.json entries and
    their tissue intensity histograms (:func:`adseg.data.contrast.case_histograms`)."""
    cases, histograms = {}, {}
    for visit in patient.visits:
        case = f"synth_{patient.index:03d}_{visit.number}"
        images, label, tissue = render_case(patient, visit, labels)
        histograms[case] = case_histograms(images, tissue)
        for c, image in enumerate(images):
            write_image(image, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        write_image(label, root / "labelsTr" / f"{case}.nii.gz")
        cases[case] = {
            "patient_id": f"P{patient.index:03d}",
            "domain": patient.domain,
            "visit": visit.number,
            "orientation": orientation_code(visit.t2_grid.direction),
            "oblique_deg": visit.oblique_deg,
            "n_lesions": len(patient.lesions),
            "lesion_diameters_mm": [round(d * visit.growth, 1) for _, d in patient.lesions],
            "lesion_zones": [zone for zone, _ in patient.lesions],
            "n_mimics": patient.n_mimics,
        }
    return cases, histograms


def _cohort_fractions(seed: int, index: int) -> np.ndarray:
    """Two numbers in [0, 1) for patient ``index``: domain and repeat-visit draws.

    A 2-D low-discrepancy (R2) sequence instead of independent draws, so even an 8-patient
    cohort gets both domains and some second visits in the asked proportions, and the first n
    patients stay the same whatever n_patients is.
    """
    g = 1.32471795724474602596  # plastic number: the R2 sequence's generator
    offset = np.random.default_rng([seed, 0]).random(2)
    return (offset + index * np.array([1 / g, 1 / g**2])) % 1.0


def sample_patient(
    seed: int,
    index: int,
    two_visit_fraction: float = 0.25,
    domain_b_fraction: float = 0.5,
    domain_shift: str = "scanner",
) -> Patient:
    """Draw anatomy, lesions, mimics, scanner and visit poses of patient ``index`` (from 1).

    The anatomy draws come first and do not depend on the fractions, so one index gives the
    same anatomy whatever its domain or number of visits.
    """
    rng = np.random.default_rng([seed, index])
    centre = rng.uniform(-15, 15, 3) + (0.0, 30.0, -60.0)
    tilt = Rotation.from_euler("x", rng.uniform(-12, 12), degrees=True).as_matrix()
    blobs, gland, tz = _sample_anatomy(rng, centre, tilt)
    mimics = _sample_mimics(rng, gland, tz)
    lesions = _sample_lesions(rng, gland, tz)
    mimics += _sample_lymph_nodes(rng, gland)
    u_domain, u_visits = _cohort_fractions(seed, index)
    domain = "B" if u_domain < domain_b_fraction else "A"
    growth = [1.0, rng.uniform(1.0, 1.15)]
    visits = tuple(
        _sample_visit(rng, v, centre, scanner_profile(domain, domain_shift), growth[v - 1])
        for v in range(1, 3 if u_visits < two_visit_fraction else 2)
    )
    blobs = (*blobs, *mimics, *(b for _, _, b in lesions))
    summary = tuple((zone, d) for zone, d, _ in lesions)
    n_mimics = sum(b.tissue not in (CAPSULE, NODE) for b in mimics)
    return Patient(seed, index, domain, blobs, summary, n_mimics, visits, domain_shift)


def _blob(
    rng: Rng,
    centre: np.ndarray,
    radii: np.ndarray,
    rotation: np.ndarray,
    tissue: int,
    hosts: tuple[int, ...] = (),
    roughness: float = 0.08,
) -> Blob:
    """An irregular ellipsoid with three random low-frequency boundary waves.

    ``roughness`` is the largest radial deviation, as a fraction of the radius.
    """
    k = rng.normal(size=(3, 3))
    k *= (rng.uniform(2.0, 6.0, 3) / np.linalg.norm(k, axis=1))[:, None]
    waves = np.column_stack([k, rng.uniform(0, 2 * np.pi, 3), roughness * rng.dirichlet([1] * 3)])
    return Blob(np.asarray(centre, float), np.asarray(radii, float), rotation, waves, tissue, hosts)


def _sample_anatomy(
    rng: Rng, centre: np.ndarray, tilt: np.ndarray
) -> tuple[list[Blob], Blob, Blob]:
    """Muscle, rectum, bladder, gland and transition zone in a tilted patient frame (mm).

    Returns the blobs in painting order, the gland and the transition zone.
    """
    g = rng.uniform([20, 15, 17.5], [25, 17.5, 22.5])  # gland semi-axes: LR, AP, SI

    def part(offset, radii, tissue, hosts=(), roughness=0.05) -> Blob:
        return _blob(rng, centre + tilt @ offset, radii, tilt, tissue, hosts, roughness)

    side = g[0] + rng.uniform(18, 22)
    rectum = (0, g[1] + rng.uniform(12, 16), -5)  # +y is posterior in LPS
    tz_size = rng.uniform(0.9, 1.15)  # benign hyperplasia enlarges the TZ
    blobs = [
        part((side, 0, 0), (9, 28, 120), MUSCLE),
        part((-side, 0, 0), (9, 28, 120), MUSCLE),
        part(rectum, (18, 11, 120), WALL),
        part(rectum, (14, 7, 120), GAS, (WALL,)),
        part((0, -8, g[2] + rng.uniform(18, 24)), (38, 28, 25), URINE),
        part((0, 0, 0), g, PZ, (), 0.08),
        part((0, -0.3 * g[1], 0.15 * g[2]), tz_size * g * (0.62, 0.55, 0.65), TZ, (PZ,), 0.1),
    ]
    return blobs, blobs[-2], blobs[-1]


def _point_in_zone(rng: Rng, gland: Blob, tz: Blob, zone: str) -> np.ndarray:
    """A random world point well inside the gland and inside (TZ) or outside (PZ) the TZ."""
    while True:
        u = rng.uniform(-0.8, 0.8, 3)
        point = gland.centre + gland.rotation @ (u * gland.radii)
        in_tz = np.sum(((point - tz.centre) @ tz.rotation / tz.radii) ** 2) <= 1.0
        if np.sum(u**2) <= 0.64 and in_tz == (zone == "TZ"):
            return point


NOMINAL = {name: np.array(values, float) for name, values in TISSUES.items()}
CAPSULE_MM = 1.5
CONSPICUITY = (0.35, 1.0)  # a patient's lesion conspicuity: 0 = its zone, 1 = nominal lesion


def _sample_mimics(rng: Rng, gland: Blob, tz: Blob) -> list[Blob]:
    """1-5 TZ stromal nodules (each in a capsule) and 0-3 PZ prostatitis bands.

    Each draws its own (T2w, ADC, S0) from ranges that overlap the lesions' on every channel.
    """
    mimics = []
    for _ in range(1 + rng.choice(5, p=[0.2, 0.3, 0.25, 0.15, 0.1])):
        r = rng.uniform(3, 8) * rng.uniform(0.9, 1.1, 3)
        point = _point_in_zone(rng, gland, tz, "TZ")
        rotation = _random_rotation(rng)
        own = tuple(rng.uniform([0.25, 1050, 0.65], [0.45, 1300, 0.85]))
        rim = _blob(rng, point, r + CAPSULE_MM, rotation, CAPSULE, (TZ,), 0.04)
        mimics += [
            rim,
            dataclasses.replace(rim, radii=r, tissue=NODULE, hosts=(CAPSULE,), properties=own),
        ]
    for _ in range(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15])):
        r = rng.uniform([8, 2, 6], [14, 4, 12])  # a flat band
        point = _point_in_zone(rng, gland, tz, "PZ")
        own = tuple(rng.uniform([0.50, 900, 0.90], [0.75, 1250, 1.15]))
        blob = _blob(rng, point, r, _random_rotation(rng), PROSTATITIS, (PZ,), 0.1)
        mimics.append(dataclasses.replace(blob, properties=own))
    return mimics


def _sample_lymph_nodes(rng: Rng, gland: Blob) -> list[Blob]:
    """0-4 pelvic lymph nodes in the fat left and right of the gland, each with the values of
    a conspicuous PZ lesion (conspicuity 0.6-1): to a threshold they are lesions."""
    nodes = []
    pz = NOMINAL["peripheral_zone"]
    for _ in range(rng.choice(5, p=[0.15, 0.25, 0.3, 0.2, 0.1])):
        radius = rng.uniform(4.0, 8.0)
        side = rng.choice([-1.0, 1.0])
        offset = (
            side * (gland.radii[0] + radius + rng.uniform(2, 8)),
            rng.uniform(-0.6, 0.6) * gland.radii[1],
            rng.uniform(-0.6, 0.6) * gland.radii[2],
        )
        point = gland.centre + gland.rotation @ np.asarray(offset)
        own = tuple(pz + rng.uniform(0.6, 1.0) * (NOMINAL["lesion"] - pz))
        blob = _blob(
            rng, point, radius * rng.uniform(0.8, 1.2, 3), _random_rotation(rng), NODE, (FAT,), 0.08
        )
        nodes.append(dataclasses.replace(blob, properties=own))
    return nodes


def _sample_lesions(rng: Rng, gland: Blob, tz: Blob) -> list[tuple[str, float, Blob]]:
    """0-3 lesions (any in 2/3 of patients): (zone, diameter in mm, blob).

    A lesion's (T2w, ADC, S0) lies between its zone's and the nominal lesion's by its
    conspicuity: the patient's (drawn from :data:`CONSPICUITY`) times a per-lesion factor.
    """
    if rng.random() >= 2 / 3:
        return []
    conspicuity = rng.uniform(*CONSPICUITY)
    lesions = []
    for _ in range(rng.choice([1, 2, 3], p=[0.55, 0.30, 0.15])):
        diameter = float(rng.uniform(3, 20))
        zone = "PZ" if rng.random() < 0.7 else "TZ"
        radii = diameter / 2 * rng.uniform(0.8, 1.2, 3)
        point = _point_in_zone(rng, gland, tz, zone)
        c = float(np.clip(conspicuity * rng.uniform(0.85, 1.15), 0.15, 1.0))
        host = NOMINAL["peripheral_zone" if zone == "PZ" else "transition_zone"]
        own = tuple(host + c * (NOMINAL["lesion"] - host))
        blob = _blob(rng, point, radii, _random_rotation(rng), LESION, GLAND, 0.2)
        lesions.append((zone, diameter, dataclasses.replace(blob, properties=own)))
    return lesions


def _random_rotation(rng: Rng) -> np.ndarray:
    return Rotation.from_quat(rng.normal(size=4)).as_matrix()


def _sample_visit(
    rng: Rng, number: int, centre: np.ndarray, scanner: ScannerProfile, growth: float
) -> Visit:
    """Pose and grids of one scan: RAS, LPS or 5-15 degrees oblique; DWI grid offset."""
    kind = rng.choice(["RAS", "LPS", "oblique"], p=[0.4, 0.3, 0.3])
    base = RAS if kind == "RAS" or (kind == "oblique" and rng.random() < 0.5) else np.eye(3)
    if kind == "oblique":
        axis = rng.normal(size=3)
        angle = np.radians(rng.uniform(5, 15))
        base = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix() @ base
    fov_centre = centre + rng.uniform([-4, -4, -3], [4, 4, 3])
    slices = round(SI_COVERAGE_MM / scanner.t2_spacing[2])
    t2 = _grid(fov_centre, base, scanner.t2_spacing, T2_FOV_MM, slices)
    # ADC/DWI: a different field of view and origin, same slice direction
    shift = rng.uniform(-3, 3, 3) * (1, 1, scanner.dwi_spacing[2] / 6)
    dwi = _grid(fov_centre + base @ shift, base, scanner.dwi_spacing, DWI_FOV_MM, slices)
    return Visit(number, t2, dwi, round(obliquity_deg(base), 2), float(growth))


def _grid(centre, direction, spacing, fov_mm: float, slices: int) -> Grid:
    """A grid of ``fov_mm`` in-plane and ``slices`` slices centred on world ``centre``."""
    n = round(fov_mm / spacing[0])
    size = np.array([n, n, slices])
    origin = centre - direction @ ((size - 1) / 2 * np.asarray(spacing))
    return Grid(size, spacing, origin, direction)
