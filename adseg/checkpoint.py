"""Checkpoints are data, never code: written atomically, read with ``weights_only=True``.

A checkpoint holds tensors, state dicts and plain values (numbers, strings, lists, dicts).
``torch.load(weights_only=True)`` refuses anything else, so a pickled payload planted in a
model folder is never run; :func:`load_checkpoint` names the file and the reason instead.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from adseg.errors import AdsegError
from adseg.io import atomic_path


class CheckpointError(AdsegError, ValueError):
    """A file that is not an adseg checkpoint (foreign, truncated, empty, or holding code)."""


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name, then rename: a killed job never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """A checkpoint's contents, read as data on the CPU.

    Args:
        required: keys the checkpoint must have (e.g. ``("segmentor",)``).

    Raises:
        CheckpointError: ``<path>: not an adseg checkpoint (<reason>)``.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
        raise CheckpointError(
            f"{path}: not an adseg checkpoint (it holds objects other than tensors and plain "
            f"values, which adseg never loads: {reason[:200]})"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        IndexError,
        KeyError,
    ) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if path.stat().st_size == 0:
            reason = "empty file"
        raise CheckpointError(f"{path}: not an adseg checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not an adseg checkpoint (holds a {type(state).__name__}, not a dict)"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an adseg checkpoint (no {', '.join(missing)})")
    return state
