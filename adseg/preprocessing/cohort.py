"""Preprocess a whole validated cohort: fingerprint, plan, every case, and the QC table.

Output folder (written atomically as a whole, so it is complete or absent)::

    preprocessed/
      dataset.json          channel and label names, the original cohort's folder and layout,
                            per case: patient, domain, label volumes, original files
      plans.json            the Plan: how to preprocess a new scan the same way
      fingerprint.json      spacings, sizes, intensities, orientations; the chosen spacing
      qc.tsv                one row per case: geometry before/after, intensities, label volumes
      imagesTr/<case>_<c:04d>.nii.gz, labelsTr/<case>.nii.gz, properties/<case>.json
      arrays/<case>_{image,label,fg}.npy   the same voxels for training to read in parts
                            (:mod:`adseg.preprocessing.store`)
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from adseg import __version__
from adseg.config import cohort_layout
from adseg.data.checks import CaseInfo
from adseg.data.cohort import (
    Case,
    Cohort,
    CohortError,
    discover_cohort,
    read_channels,
    read_label,
)
from adseg.data.problems import ChannelSource
from adseg.data.validation import ValidationReport, case_warnings, validate_with_config
from adseg.errors import AdsegError
from adseg.geometry import Grid, obliquity_deg
from adseg.guard import check_output, claim
from adseg.io import atomic_dir, read_json, write_image, write_json, write_text
from adseg.log import logger, parallel_map
from adseg.preprocessing import store
from adseg.preprocessing.case import (
    Plan,
    channel_index,
    make_plan,
    nnunet_target_spacing,
    preprocess_images,
    reoriented_grid,
)

LABEL_VOLUME_WARNING = 0.2  # relative change of a label's volume through resampling


class PreprocessedError(AdsegError, FileNotFoundError):
    """A preprocessed folder whose record of the original cohort is missing or stale."""


def cohort_fingerprint(report: ValidationReport, reference_channel: int, orientation: str) -> dict:
    """Spacings, sizes and intensities of the cohort, and nnU-Net's target spacing for it.

    Spacings and sizes are those of the reference channel after reorientation, so their axes
    are the axes the target spacing applies to.
    """
    grids = [
        reoriented_grid(Grid.from_dict(c.channel_grids[reference_channel]), orientation)
        for c in report.cases
    ]
    spacings = np.array([g.spacing for g in grids])
    sizes = np.array([g.size for g in grids])
    n_channels = len(report.cases[0].intensity)
    intensity = {}
    for ch in range(n_channels):
        stats = {
            k: np.array([c.intensity[ch][k] for c in report.cases])
            for k in ("mean", "std", "p01", "p99")
        }
        intensity[str(ch)] = {f"median_{k}": float(np.median(v)) for k, v in stats.items()}
    return {
        "n_cases": len(report.cases),
        "reference_channel": reference_channel,
        "orientation": orientation,
        "spacings": spacings.tolist(),
        "sizes": sizes.tolist(),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_size": np.median(sizes, axis=0).tolist(),
        "nnunet_target_spacing": nnunet_target_spacing(spacings, sizes).tolist(),
        "original_orientations": dict(
            Counter(
                Grid.from_dict(c.channel_grids[reference_channel]).to_dict()["orientation"]
                for c in report.cases
            )
        ),
        "domains": dict(Counter(c.domain for c in report.cases)),
        "intensity": intensity,
    }


def prepare_cohort(
    root: str | Path,
    config: dict,
    out_dir: str | Path,
    report: ValidationReport | None = None,
    workers: int = 1,
    show_progress: bool = True,
) -> dict:
    """Validate (unless a report is given), plan and preprocess every case of a cohort.

    Args:
        root: the cohort folder (nnU-Net raw or MSD layout).
        config: a resolved config (see :func:`adseg.config.resolve_config`).
        out_dir: the preprocessed folder to write (replaced once complete; it must be new,
            empty or adseg's, and apart from the cohort: :func:`adseg.guard.check_output`).
        report: a validation report of this cohort, to skip re-reading every file.
        workers: processes used for the cases.

    Returns:
        The fingerprint, with the plan's target spacing under ``target_spacing``.

    Raises:
        CohortError: the cohort has errors; every one is listed, and nothing is written.
        OutputError: ``out_dir`` is, holds or lies in the cohort, or holds others' files.
    """
    check_output(out_dir, [root], replaces=True)
    layout, regex = cohort_layout(config), config["dataset"]["patient_regex"]
    cohort, problems = discover_cohort(root, layout=layout, patient_regex=regex)
    if report is None:
        report = validate_with_config(root, config, workers, show_progress)
    elif [c.case_id for c in report.cases] != [c.case_id for c in cohort.cases] or any(
        p.level == "error" for p in problems
    ):
        raise ValueError(
            f"the validation report does not match the cohort in {root}; validate again"
        )
    if not report.ok():
        raise CohortError(report.errors)
    settings = config["preprocess"]
    ref = channel_index(settings["reference_channel"], cohort.channel_names)
    fingerprint = cohort_fingerprint(report, ref, settings["orientation"])
    spacing = settings["target_spacing"]
    target = fingerprint["nnunet_target_spacing"] if spacing == "auto" else spacing
    plan = make_plan(settings, cohort.channel_names, cohort.labels, target)
    fingerprint["target_spacing"] = plan.target_spacing
    logger.info(
        "target spacing %s mm (%s)", plan.target_spacing, "auto" if spacing == "auto" else "config"
    )
    infos = {c.case_id: c for c in report.cases}
    with atomic_dir(out_dir) as tmp:
        claim(tmp, "preprocess")
        found = case_warnings(report, cohort.cases)
        jobs = [(c, infos[c.case_id], plan, tmp, found[c.case_id]) for c in cohort.cases]
        rows = parallel_map(preprocess_case, jobs, workers, "preprocess", show_progress)
        write_json(tmp / "plans.json", plan.to_dict())
        write_json(tmp / "fingerprint.json", fingerprint)
        write_json(tmp / "dataset.json", _dataset_json(cohort, rows))
        write_text(tmp / "qc.tsv", _tsv(rows))
    return fingerprint


def preprocess_case(
    case: Case, info: CaseInfo, plan: Plan, out: Path, validation_warnings: list[str]
) -> dict:
    """Preprocess and write one case; return its QC row (with validation's warnings)."""
    t0 = time.perf_counter()
    channels = read_channels(case.channels)
    label = read_label(case.label) if case.label is not None else None
    images, label_out, record = preprocess_images(channels, label, plan)
    for c, image in enumerate(images):
        write_image(image, out / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz")
    warnings = list(validation_warnings)
    volumes = {}
    if label_out is not None:
        write_image(label_out, out / "labelsTr" / f"{case.case_id}.nii.gz")
        volumes, volume_warnings = _label_volumes(info, label_out, plan.labels)
        warnings += volume_warnings
    store.write_case(
        out,
        case.case_id,
        [sitk.GetArrayViewFromImage(image) for image in images],
        None if label_out is None else sitk.GetArrayViewFromImage(label_out),
    )
    if record["label_voxels_outside_crop"]:
        warnings.append(
            f"{record['label_voxels_outside_crop']} label voxels outside the non-zero crop"
        )
    properties = {
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "domain": case.domain,
        "original_channel_grids": info.channel_grids,
        "original_label_grid": info.label_grid,
        **record,
        "label_volume_ml": volumes,
        "warnings": warnings,
        "adseg_version": __version__,
    }
    write_json(out / "properties" / f"{case.case_id}.json", properties)
    return _qc_row(case, info, plan, record, volumes, warnings, time.perf_counter() - t0)


def _label_volumes(
    info: CaseInfo, label: sitk.Image, labels: dict[str, int]
) -> tuple[dict, list[str]]:
    """Per label: volume in mL on the original and the preprocessed grid, with warnings."""
    arr = sitk.GetArrayViewFromImage(label)
    before_voxel_ml = float(np.prod(info.label_grid["spacing"])) / 1000.0
    after_voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    volumes, warnings = {}, []
    for name, value in labels.items():
        if value == 0:
            continue
        before = info.label_voxels.get(name, 0) * before_voxel_ml
        after = int(np.count_nonzero(arr == value)) * after_voxel_ml
        volumes[name] = {"original": round(before, 4), "preprocessed": round(after, 4)}
        if before > 0 and abs(after - before) > LABEL_VOLUME_WARNING * before:
            warnings.append(
                f"{name} volume changed {before:.3f} -> {after:.3f} mL through resampling"
            )
    return volumes, warnings


def _qc_row(
    case: Case,
    info: CaseInfo,
    plan: Plan,
    record: dict,
    volumes: dict,
    warnings: list[str],
    seconds: float,
) -> dict:
    row: dict = {"case_id": case.case_id, "patient_id": case.patient_id, "domain": case.domain}
    for name, grid in zip(plan.channel_names, info.channel_grids, strict=True):
        row[f"{name}_orientation"] = grid["orientation"]
        row[f"{name}_oblique_deg"] = round(obliquity_deg(grid["direction"]), 2)
        row[f"{name}_spacing"] = "x".join(f"{s:.3g}" for s in grid["spacing"])
        row[f"{name}_size"] = "x".join(str(s) for s in grid["size"])
    for name, stats in zip(plan.channel_names, info.intensity, strict=True):
        for key in ("min", "max", "mean", "std", "p01", "p99"):
            row[f"{name}_{key}"] = round(float(stats[key]), 4)
    for name, vol in volumes.items():
        row[f"{name}_ml"] = vol["original"]
        row[f"{name}_ml_preprocessed"] = vol["preprocessed"]
    final = record["final_grid"]
    target = record["target_grid"]
    row["preprocessed_size"] = "x".join(str(s) for s in final["size"])
    row["crop_fraction"] = round(float(np.prod(final["size"]) / np.prod(target["size"])), 4)
    row["seconds"] = round(seconds, 2)
    row["warnings"] = "; ".join(warnings)
    return row


def _tsv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _dataset_json(cohort: Cohort, rows: list[dict]) -> dict:
    """nnU-Net v2's dataset.json of the preprocessed cases, plus the record of the cohort they
    came from: its layout and each case's original channel and label files (relative to the
    cohort folder). Every later stage reads the originals from this record
    (:func:`original_cases`), so none has to detect the layout again."""
    root = Path(cohort.root).resolve()
    originals = {c.case_id: c for c in cohort.cases}
    cases = {}
    for row in rows:
        volumes = {
            k[: -len("_ml_preprocessed")]: v
            for k, v in row.items()
            if k.endswith("_ml_preprocessed")
        }
        case = originals[row["case_id"]]
        cases[row["case_id"]] = {
            "patient_id": row["patient_id"],
            "domain": row["domain"],
            "label_ml": volumes,
            "original": {
                "channels": [
                    {"path": _relative(s.path, root), "index": s.index} for s in case.channels
                ],
                "label": None if case.label is None else _relative(case.label, root),
            },
        }
    return {
        "name": "adseg-preprocessed",
        "source": str(root),
        "source_layout": cohort.layout,
        "source_layout_reason": cohort.layout_reason,
        "channel_names": {str(i): n for i, n in enumerate(cohort.channel_names)},
        "labels": cohort.labels,
        "file_ending": ".nii.gz",
        "numTraining": len(rows),
        "cases": cases,
        "adseg_version": __version__,
    }


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the cohort folder (discovery refuses files outside it)."""
    return Path(path).resolve().relative_to(root).as_posix()


def original_cases(preprocessed: str | Path) -> dict[str, Case]:
    """Case id -> the original case (channel and label files) that the preprocessed folder
    was made from, as preprocessing recorded it: the layout it read is never detected again.

    Raises:
        PreprocessedError: the folder has no such record (an older adseg wrote it), or the
            original cohort or one of its recorded files is gone.
    """
    preprocessed = Path(preprocessed)
    json_path = preprocessed / "dataset.json"
    dataset = read_json(json_path)
    root = Path(dataset["source"])
    missing = [k for k, v in dataset["cases"].items() if "original" not in v]
    if missing:
        raise PreprocessedError(
            f"{json_path}: no record of the original files of {len(missing)} case(s) (written "
            "by an older adseg); run preprocessing again"
        )
    if not root.is_dir():
        raise PreprocessedError(
            f"{root}: the original cohort of {preprocessed} is gone; evaluation compares with "
            "its label files"
        )
    out = {}
    for case_id, meta in dataset["cases"].items():
        record = meta["original"]
        channels = tuple(ChannelSource(root / c["path"], c["index"]) for c in record["channels"])
        label = None if record["label"] is None else root / record["label"]
        for path in [*(c.path for c in channels), label]:
            if path is not None and not path.is_file():
                raise PreprocessedError(
                    f"{path}: original file of case {case_id} (recorded in {json_path}) is gone"
                )
        out[case_id] = Case(case_id, meta["patient_id"], meta["domain"], channels, label)
    return out
