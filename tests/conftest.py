"""Shared fixtures: tiny real NIfTI files and cohort folders written under ``tmp_path``.

Arrays given to ``write_image`` are in SimpleITK/numpy order ``(z, y, x)`` with ITK (LPS)
geometry; arrays given to ``write_nibabel`` are in nibabel order ``(x, y, z[, c])`` with a
RAS affine. The cohort factories write clean cohorts that tests then break one file at a time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SIZE_ZYX = (6, 8, 8)
SPACING_XYZ = (0.6, 0.6, 3.0)


def rewrite_arrays(preprocessed: Path, case_ids: Sequence[str] | None = None) -> None:
    """Write the training arrays of ``case_ids`` (default: every case) anew from their NIfTI
    files, as preprocessing would: for tests that edit a preprocessed case. Read by nibabel
    (SimpleITK reads a NaN voxel of a NIfTI file as 0)."""
    from adseg.preprocessing import store

    if case_ids is None:
        case_ids = [p.name[: -len(".nii.gz")] for p in (preprocessed / "labelsTr").glob("*.nii.gz")]
    for case_id in case_ids:
        channels = sorted((preprocessed / "imagesTr").glob(f"{case_id}_????.nii.gz"))
        label = preprocessed / "labelsTr" / f"{case_id}.nii.gz"
        store.write_case(
            preprocessed,
            case_id,
            [np.asarray(nib.load(p).dataobj).transpose() for p in channels],
            np.asarray(nib.load(label).dataobj).transpose(),
        )


def write_sitk_file(
    path: str | Path,
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = LPS,
) -> Path:
    """Write a ``(z, y, x)`` (or ``(y, x)``) array as NIfTI with SimpleITK; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(array))
    n = image.GetDimension()
    image.SetSpacing([float(s) for s in spacing[:n]])
    image.SetOrigin([float(o) for o in origin[:n]])
    if n == 3:
        image.SetDirection([float(d) for d in direction])
    sitk.WriteImage(image, str(path))
    return path


def write_nibabel_file(
    path: str | Path, array: np.ndarray, affine: np.ndarray | None = None
) -> Path:
    """Write an ``(x, y, z[, c])`` array as NIfTI with nibabel (RAS affine); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING_XYZ, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def make_phantom(
    size_zyx: Sequence[int] = SIZE_ZYX, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 image ``(z, y, x)`` (ramp + bright ball + noise) and its uint8 ball label.

    The label is 1 inside the ball, 2 in the ball's upper half in z, 0 elsewhere.
    """
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in size_zyx], indexing="ij")
    centre = [(n - 1) / 2 for n in size_zyx]
    dist = np.sqrt(((z - centre[0]) / 1.5) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    ball = dist <= min(size_zyx[1:]) / 3
    noise = np.random.default_rng(seed).normal(0, 1, size_zyx)
    image = (100 + 2 * x + 50 * ball + noise).astype(np.float32)
    label = ball.astype(np.uint8) + (ball & (z > centre[0])).astype(np.uint8)
    return image, label


@pytest.fixture
def nnunet_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a clean nnU-Net v2 raw cohort; returns its root folder.

    Keyword args: ``case_ids``, ``channels`` (names), ``labels`` (name -> value), ``four_d``
    (all channels in one 4-D ``_0000`` file), ``cases_meta`` (adseg's dataset.json ``cases``),
    ``name`` (folder name). Channels after the first are on a coarser grid over the same
    field of view, as ADC/DWI usually are.
    """

    def make(
        case_ids: Sequence[str] = ("case_000", "case_001"),
        channels: Sequence[str] = ("T2w", "ADC"),
        labels: dict[str, int] | None = None,
        four_d: bool = False,
        cases_meta: dict | None = None,
        name: str = "Dataset001_Tiny",
    ) -> Path:
        root = tmp_path / name
        labels = {"background": 0, "lesion": 1, "zone": 2} if labels is None else labels
        for i, case in enumerate(case_ids):
            image, label = make_phantom(seed=i)
            volumes = [image + 10 * k for k in range(len(channels))]
            if four_d:
                stacked = np.stack([v.transpose(2, 1, 0) for v in volumes], axis=-1)
                affine = np.diag([-SPACING_XYZ[0], -SPACING_XYZ[1], SPACING_XYZ[2], 1.0])
                write_nibabel_file(root / "imagesTr" / f"{case}_0000.nii.gz", stacked, affine)
            else:
                write_sitk_file(root / "imagesTr" / f"{case}_0000.nii.gz", image, SPACING_XYZ)
                for k, volume in enumerate(volumes[1:], start=1):
                    coarse = (2 * SPACING_XYZ[0], 2 * SPACING_XYZ[1], SPACING_XYZ[2])
                    origin = (0.5 * SPACING_XYZ[0], 0.5 * SPACING_XYZ[1], 0.0)
                    path = root / "imagesTr" / f"{case}_{k:04d}.nii.gz"
                    write_sitk_file(path, volume[:, ::2, ::2], coarse, origin)
            write_sitk_file(root / "labelsTr" / f"{case}.nii.gz", label, SPACING_XYZ)
        dataset = {
            "channel_names": {str(k): c for k, c in enumerate(channels)},
            "labels": labels,
            "numTraining": len(case_ids),
            "file_ending": ".nii.gz",
        }
        if cases_meta is not None:
            dataset["cases"] = cases_meta
        (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
        return root

    return make


@pytest.fixture
def msd_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a clean Medical Segmentation Decathlon task; returns its root folder.

    Images are 4-D ``(x, y, z, channel)`` files (3-D with one modality), labels 0/1/2, and a
    macOS ``._`` resource-fork file sits beside each image, as in the real tarballs.
    """

    def make(
        case_ids: Sequence[str] = ("prostate_00", "prostate_01"),
        modalities: Sequence[str] = ("T2", "ADC"),
        name: str = "Task05_Tiny",
    ) -> Path:
        root = tmp_path / name
        training = []
        for i, case in enumerate(case_ids):
            image, label = make_phantom(seed=i)
            volumes = [(image + 10 * k).transpose(2, 1, 0) for k in range(len(modalities))]
            array = volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1)
            write_nibabel_file(root / "imagesTr" / f"{case}.nii.gz", array)
            write_nibabel_file(root / "labelsTr" / f"{case}.nii.gz", label.transpose(2, 1, 0))
            (root / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac")
            training.append(
                {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
            )
        dataset = {
            "name": "Tiny",
            "modality": {str(k): m for k, m in enumerate(modalities)},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"},
            "numTraining": len(case_ids),
            "training": training,
            "test": [],
        }
        (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
        return root

    return make


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, array_zyx, spacing, origin, direction) -> path`` (SimpleITK)."""
    return write_sitk_file


@pytest.fixture
def write_nibabel() -> Callable[..., Path]:
    """``write_nibabel(path, array_xyz[c], affine) -> path`` (nibabel, RAS affine)."""
    return write_nibabel_file


@pytest.fixture
def phantom() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``phantom(size_zyx, seed) -> (image, label)``, both ``(z, y, x)``."""
    return make_phantom


def with_msd_keys(root: Path) -> None:
    """Give an nnU-Net raw folder's dataset.json MSD's keys too, as converted datasets have."""
    dataset = json.loads((root / "dataset.json").read_text())
    ids = sorted({p.name[: -len("_0000.nii.gz")] for p in (root / "imagesTr").glob("*_0000.*")})
    dataset["modality"] = dict(dataset["channel_names"])
    dataset["training"] = [
        {"image": f"./imagesTr/{c}_0000.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids
    ]
    (root / "dataset.json").write_text(json.dumps(dataset))


def assert_roles_disjoint(spec: dict, dataset: dict) -> None:
    """No test patient in a model's training or validation (selection) cases: the check of
    every model folder a test trains (segmentation schemes, ADDA, GAN tasks)."""
    patient = {c: m["patient_id"] for c, m in dataset["cases"].items()}
    fitted = {patient[c] for c in spec["train_cases"] + spec.get("target_cases", [])}
    selected = {patient[c] for c in spec["val_cases"] + spec.get("target_val_cases", [])}
    tested = {patient[c] for c in spec["test_cases"]}
    assert spec["val_cases"] and spec["test_cases"]
    assert not tested & (fitted | selected) and not fitted & selected


def pytest_configure(config) -> None:
    """``ADSEG_TEST_THREADS=N``: run the suite with ``torch.set_num_threads(N)``. Float
    results may differ in their last bits between thread counts (a sum in another order);
    the suite must hold at 1 thread and at the machine's."""
    threads = os.environ.get("ADSEG_TEST_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# Training settings small enough for a test to train a fold in seconds on one CPU thread.
TINY_TRAIN = {
    "train": {
        "network": {"name": "UNet", "spatial_dims": 2, "features": [8, 16]},
        "patch_size": [32, 32],
        "batch_size": 8,
        "samples_per_case": 2,
        "epochs": 2,
        "val_every": 1,
        "threads": 1,
    },
    "adversarial": {"d_features": [8, 16]},
}
# GAN models small enough to train for a few epochs in seconds (tests/gan/)
TINY_GAN = {
    "gan": {
        "threads": 1,
        "synthesis": {
            "image_size": 16,
            "latent_dim": 8,
            "epochs": 2,
            "batch_size": 16,
            "sample_every": 1,
            "models": {
                "dcgan": {"g_width": 8, "d_width": 8},
                "wgan-gp": {"loss": "wgan-gp", "g_width": 8, "d_width": 8, "d_steps": 2},
            },
        },
        "translation": {
            "patch_size": [24, 24],
            "levels": 3,
            "epochs": 2,
            "batch_size": 4,
            "slices_per_case": 3,
            "sample_every": 1,
            "models": {
                "pix2pix": {"g_width": 4, "d_width": 4, "d_layers": 2},
                "l1": {"adv_weight": 0.0, "g_width": 4},
            },
        },
    }
}


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory) -> dict:
    """A synthetic cohort of 6 patients, preprocessed at 2 x 2 x 3 mm, with 3 folds.

    Returns ``{"root", "raw", "preprocessed", "splits", "config"}`` (paths and the resolved
    config with :data:`TINY_TRAIN`). Session-scoped: tests must not modify these files.
    """
    from adseg.config import load_config
    from adseg.data.splits import case_meta_from_dataset, make_splits
    from adseg.data.synthetic import generate_cohort
    from adseg.io import write_json
    from adseg.preprocessing.cohort import prepare_cohort

    root = tmp_path_factory.mktemp("tiny_experiment")
    config = load_config(
        None,
        {
            **TINY_TRAIN,
            "dataset": {"synthetic": {"n_patients": 6, "seed": 3}},
            "preprocess": {"target_spacing": [2.0, 2.0, 3.0]},
            "folds": {"n": 3},
        },
    )
    raw = root / "raw"
    generate_cohort(raw, 6, 3, progress=False)
    preprocessed = root / "preprocessed"
    prepare_cohort(raw, config, preprocessed, workers=1, show_progress=False)
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    splits = make_splits(case_meta_from_dataset(dataset), 3, 0)
    write_json(root / "splits.json", splits)
    return {
        "root": root,
        "raw": raw,
        "preprocessed": preprocessed,
        "splits": root / "splits.json",
        "config": config,
    }


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory):
    """Commands the tests run track to a store of their own, never to ./results/mlflow.db."""
    import os

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "ADSEG_WORKFLOW_CONFIG")}
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    os.environ.pop("ADSEG_WORKFLOW_CONFIG", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and an artifact folder in tmp."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.folder / "server.log", "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'server.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--workers",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        log = (self.folder / "server.log").read_text()
        raise RuntimeError(f"mlflow server did not start: {log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def snakemake(*args: str, timeout: int = 900, env=None) -> subprocess.CompletedProcess:
    """The real ``snakemake`` on this repository's workflow, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
