"""The one training engine: what every study (segmentation schemes, ADDA, GAN tasks) shares.

A study supplies its networks' update for one epoch (:class:`Study`); the engine does the
rest the same way for all of them:

- device and CPU threads (:func:`pick_device`), bfloat16 autocast on CUDA (:func:`autocast`);
- seeding: :func:`begin` seeds MONAI, torch and numpy before the networks are built, and every
  epoch reseeds from (seed, epoch) (:func:`epoch_seed`), so a run resumed from its last
  checkpoint repeats the uninterrupted run exactly on CPU;
- the resume fingerprint (:func:`fingerprint`) and checkpoints written atomically and read as
  data only (``torch.load(weights_only=True)``: tensors, state dicts and plain values);
- the epoch loop (:func:`run_epochs`): the study's epoch, its end-of-epoch work, the log line,
  the tracking event, ``training_log.tsv``, the study's guards (non-finite losses, collapse),
  then ``checkpoint_last.pt``, and only then the event is sent: a job killed at any point
  trains and logs each epoch once (the tracker drops an event whose checkpoint never came);
- a failure or interruption marks the tracked run FAILED or KILLED (:func:`tracked`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from monai.data import get_track_meta, set_track_meta
from monai.utils import set_determinism

from adseg import __version__
from adseg.checkpoint import load_checkpoint, save_checkpoint
from adseg.errors import AdsegError
from adseg.io import write_tsv
from adseg.log import logger, progress

CHECKPOINT = "checkpoint_last.pt"
LOG = "training_log.tsv"


class TrainingError(AdsegError, RuntimeError, heading="training stopped"):
    """Training diverged (non-finite loss) or an adversary collapsed."""


def pick_device(choice: str, setting: str = "train.device") -> torch.device:
    """``auto`` takes CUDA when available; ``cuda`` without a GPU is an error naming
    ``setting`` (the option or config key the choice came from)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} is cuda, but PyTorch sees no CUDA device")
    auto = choice == "auto"
    if auto:
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if auto and choice == "cpu" and visible and visible != "-1":
        # a scheduler (Slurm's --gpus, gres) gave this job GPUs that torch cannot use
        logger.warning(
            "running on cpu although CUDA_VISIBLE_DEVICES=%s: %s",
            visible,
            "torch is a CPU build"
            if torch.version.cuda is None
            else "torch sees no CUDA device (driver?)",
        )
    return torch.device(choice)


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """bfloat16 autocast runs where it is asked for and the device supports it (CUDA)."""
    return amp and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, amp: bool) -> Callable[[], Any]:
    """A context factory: bfloat16 autocast per :func:`amp_enabled`, a no-op elsewhere."""
    enabled = amp_enabled(device, amp)
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=enabled)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return seed * 100_003 + epoch


def fingerprint(settings: dict, files: Iterable[Path]) -> str:
    """What a checkpoint must share with the run that resumes it: the job's settings (a
    JSON-able dict) and the contents of the files it trains on, as 16 hex digits."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
    key = {**settings, "data": digest.hexdigest()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def resume_state(out: Path, mode: str, key: str) -> dict | None:
    """The checkpoint to resume from, per ``mode``: ``no`` starts afresh; ``yes`` needs
    ``out/checkpoint_last.pt`` with fingerprint ``key``; ``auto`` resumes when it matches and
    starts afresh otherwise (what the workflow uses)."""
    path = out / CHECKPOINT
    if mode == "no":
        return None
    if not path.is_file():
        if mode == "yes":
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        return None
    state = load_checkpoint(path, required=("trainer", "history", "fingerprint"))
    if state.get("fingerprint") != key:
        message = (
            f"{path}: checkpoint from another config (scheme, fold, splits, preprocessing or "
            "training settings differ)"
        )
        if mode == "yes":
            raise ValueError(message + "; remove the folder or train without --resume")
        logger.warning("%s; starting afresh", message)
        return None
    return state


def begin(
    out: Path, device: str, setting: str, threads: int, seed: int, resume: str, key: str
) -> tuple[torch.device, dict | None]:
    """Device and CPU threads, the checkpoint to resume from (or None), then the run's seed:
    call before building networks, whose initial weights draw from it."""
    chosen = pick_device(device, setting)
    if chosen.type == "cpu":
        torch.set_num_threads(threads)
    state = resume_state(out, resume, key)
    set_determinism(seed)
    return chosen, state


def clear(out: Path, fresh: bool, always: Iterable[str], fresh_only: Iterable[str]) -> None:
    """Remove what marks ``out`` finished (``always``) and, on a fresh start, what an earlier
    run left beside it (``fresh_only``, the checkpoint and log among them)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in [*always, *(fresh_only if fresh else ())]:
        (out / name).unlink(missing_ok=True)


@contextlib.contextmanager
def tracked(tracker, plain_tensors: bool = False) -> Iterator[None]:
    """Mark ``tracker``'s run FAILED or KILLED on any error or interruption inside.

    ``plain_tensors``: switch MONAI's metadata tracking off inside. Cached cases keep their
    metadata; the random transforms and the networks need none of it, and a MetaTensor sends
    every torch call through Python (3.5x the loading time, bench/run.py --only data).
    """
    meta = get_track_meta()
    if plain_tensors:
        set_track_meta(False)
    try:
        yield
    except BaseException as err:  # diverged, failed, interrupted or terminated
        if tracker is not None:
            tracker.fail(err)
        raise
    finally:
        set_track_meta(meta)


class Study(Protocol):
    """What :func:`run_epochs` needs of a study's trainer."""

    def train_epoch(self, epoch: int, seed: int) -> dict[str, Any]:
        """Reseed the study's random transforms from ``seed``, run one epoch of updates and
        return the epoch's row (means of the step statistics, and what else it logs)."""

    def end_epoch(self, epoch: int, row: dict, epochs: int) -> list[Path]:
        """Validation and figures after epoch ``epoch`` (added to ``row``); figure files."""

    def check(self, history: list[dict]) -> None:
        """Raise :class:`TrainingError` when the run must stop (diverged, collapsed)."""

    def message(self, row: dict, epochs: int) -> str:
        """The epoch's log line."""

    def tracked_row(self, row: dict) -> tuple[dict, float | None]:
        """The row under the names MLflow logs, and D's learning rate (or None)."""

    def checkpoint(self) -> dict:
        """What ``checkpoint_last.pt`` holds of the study: states under ``trainer``, and any
        other JSON-able entries (for segmentation, the best epoch so far)."""


@dataclass
class Loop:
    """One run of epochs: its name in progress bars, length, seed, folder and fingerprint."""

    label: str
    epochs: int
    seed: int
    out: Path
    key: str
    columns: tuple[str, ...]


def run_epochs(
    study: Study, loop: Loop, history: list[dict], show: bool = True, tracker=None
) -> None:
    """Train epoch by epoch from ``len(history)`` to ``loop.epochs``: each epoch reseeded,
    logged, tracked, checked and checkpointed; ``history`` grows by one row an epoch."""
    for epoch in progress(
        range(len(history), loop.epochs),
        loop.label,
        total=loop.epochs - len(history),
        enabled=show,
    ):
        t0 = time.perf_counter()
        seed = epoch_seed(loop.seed, epoch)
        set_determinism(seed)
        row = {"epoch": epoch + 1, **study.train_epoch(epoch, seed)}
        figures = study.end_epoch(epoch, row, loop.epochs)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        logger.info(study.message(row, loop.epochs))
        if tracker is not None:
            tracker.epoch(*study.tracked_row(row))
            for path in figures:
                tracker.artifact(path, "samples")
        write_tsv(loop.out / LOG, history, loop.columns)
        study.check(history)
        state = {"history": history, "fingerprint": loop.key, "adseg_version": __version__}
        save_checkpoint({**study.checkpoint(), **state}, loop.out / CHECKPOINT)
        if tracker is not None:
            tracker.commit()  # the epoch's events go out once its checkpoint is on disk


def epoch_line(head: str, row: dict, fields, fmt: str = ".3f") -> str:
    """An epoch's log line: ``head``, then ``label value`` for each ``(key, label)`` of
    ``fields`` that ``row`` has, then the epoch's seconds."""
    parts = [head]
    parts += [f"{label} {row[key]:{fmt}}" for key, label in fields if row.get(key) is not None]
    parts.append(f"{row['seconds']:.1f} s")
    return ", ".join(parts)


def non_finite(stats: dict[str, float]) -> list[str]:
    """The names of ``stats`` whose values are NaN or infinite."""
    return [k for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)]
