"""The self-describing model folder (nnU-Net v2 style).

``<results>/<experiment>/<scheme>/`` holds one ``fold_<k>/`` per fold. Each fold folder
carries everything needed to use it, so prediction never consults the current config:

- ``model.json``: format version, network (name, spatial dims, features, channels), patch
  size and slice axis, scheme, fold, training and validation cases, the discriminator's spec;
- ``plans.json``: the preprocessing (orientation, spacing, normalisation, channel order,
  label names);
- ``config.yaml``: the resolved config it was trained with;
- ``checkpoint_final.pt`` (weights at the end), ``checkpoint_best.pt`` (best validation Dice),
  ``checkpoint_last.pt`` (full training state for ``--resume``);
- ``training_log.tsv`` and ``learning_curves.png``.

Checkpoints are read as data (:func:`adseg.checkpoint.load_checkpoint`): a truncated, empty or
foreign file, or one holding code, is refused with a message naming it, and weights that do
not fit the network ``model.json`` describes likewise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adseg.checkpoint import CheckpointError, load_checkpoint
from adseg.errors import AdsegError
from adseg.io import read_json
from adseg.preprocessing.case import Plan
from adseg.training.networks import LabelMapDiscriminator, build_segmentor, discriminator_channels

FORMAT = "adseg-model"
FORMAT_VERSION = 1
CHECKPOINTS = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt"}
FOLD_FILES = ("model.json", "plans.json", "config.yaml")


class ModelError(AdsegError, ValueError):
    """A model folder that is incomplete, or from an incompatible version."""


@dataclass
class FoldModel:
    """One trained fold: its spec, preprocessing plan and folder."""

    folder: Path
    spec: dict
    plan: Plan
    _states: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def spatial_dims(self) -> int:
        return int(self.spec["network"]["spatial_dims"])

    def checkpoint_path(self, checkpoint: str = "final") -> Path:
        """The file of ``checkpoint`` (final or best)."""
        return self.folder / CHECKPOINTS[checkpoint]

    def weights(self, checkpoint: str = "final") -> dict:
        """The contents of ``checkpoint``, read once as data.

        Raises:
            ModelError: the file is missing.
            CheckpointError: it is not an adseg checkpoint (naming it).
        """
        if checkpoint not in self._states:
            self._states[checkpoint] = load_weights(self.checkpoint_path(checkpoint))
        return self._states[checkpoint]

    def segmentor(self, checkpoint: str = "final", device: str | torch.device = "cpu") -> nn.Module:
        """The segmentor with the weights of ``checkpoint`` (final or best), in eval mode."""
        net = build_segmentor(**_network_args(self.spec))
        fit_weights(net, self.weights(checkpoint)["segmentor"], self.checkpoint_path(checkpoint))
        return net.to(device).eval()

    def discriminator(self, checkpoint: str = "final", device="cpu") -> nn.Module | None:
        """The trained label-map discriminator, or None for schemes without one."""
        if self.spec.get("discriminator") is None:
            return None
        weights = self.weights(checkpoint).get("discriminator")
        if weights is None:
            return None
        net = build_discriminator(self.spec)
        fit_weights(net, weights, self.checkpoint_path(checkpoint))
        return net.to(device).eval()


def _network_args(spec: dict) -> dict:
    n = spec["network"]
    return {
        "name": n["name"],
        "spatial_dims": n["spatial_dims"],
        "in_channels": n["in_channels"],
        "out_channels": n["out_channels"],
        "features": n["features"],
    }


def build_discriminator(spec: dict) -> nn.Module:
    """The discriminator described by a model spec's ``discriminator`` entry."""
    d = spec["discriminator"]
    cin = discriminator_channels(
        d["input"], spec["network"]["in_channels"], spec["network"]["out_channels"]
    )
    return LabelMapDiscriminator(
        spec["network"]["spatial_dims"], cin, d["features"], d["norm"], d["output"]
    )


def load_weights(path: Path, key: str = "segmentor") -> dict:
    """A model folder's checkpoint, read as data; it must hold ``key``.

    Raises:
        ModelError: the file is missing.
        CheckpointError: ``<path>: not an adseg checkpoint (<reason>)``.
    """
    if not path.is_file():
        raise ModelError(f"{path}: missing; is training of this fold finished?")
    try:
        return load_checkpoint(path, required=(key,))
    except CheckpointError:
        raise
    except Exception as err:  # torch's unpickler fails on arbitrary bytes in many ways
        reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
        raise CheckpointError(f"{path}: not an adseg checkpoint ({reason[:200]})") from None


def fit_weights(net: nn.Module, state: dict, path: Path) -> None:
    """Load a state dict into ``net``, naming ``path`` if they do not fit.

    Raises:
        ModelError: missing, unexpected or misshapen weights.
    """
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        reason = " ".join(str(err).split())
        raise ModelError(
            f"{path}: its weights do not fit the network in model.json ({reason[:300]})"
        ) from None


def read_fold(folder: str | Path) -> FoldModel:
    """Read and check one fold folder.

    Raises:
        ModelError: a missing file, or a folder written by an incompatible adseg version.
    """
    folder = Path(folder)
    missing = [name for name in FOLD_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"{folder}: not a complete model folder; missing {', '.join(missing)}")
    spec = read_json(folder / "model.json")
    if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{folder / 'model.json'}: format {spec.get('format')!r} version "
            f"{spec.get('format_version')!r}; this adseg reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    try:
        plan = Plan.from_dict(read_json(folder / "plans.json"))
    except (ValueError, TypeError) as err:
        raise ModelError(f"{folder / 'plans.json'}: {err}") from None
    return FoldModel(folder, spec, plan)


def read_model(
    folder: str | Path,
    folds: list[int] | None = None,
    read: Callable[[Path], Any] = read_fold,
) -> list:
    """All (or the chosen) folds of a model folder ``<scheme>/`` (or one ``fold_<k>/``),
    each read by ``read`` (a segmentor's :func:`read_fold` by default).

    Raises:
        ModelError: no such folder, a file, a folder with neither ``model.json`` nor
            ``fold_*`` folders, or folds it does not have.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"{folder}: no such model folder")
    if not folder.is_dir():
        raise ModelError(f"{folder}: a file; give the model folder (<scheme>/ or fold_<k>/)")
    if (folder / "model.json").is_file():
        model = read(folder)
        fold = model.spec.get("fold")
        if folds is not None and list(folds) != [fold]:
            raise ModelError(
                f"{folder}: one fold folder (fold {fold}); folds {list(folds)} were asked for. "
                "Give the model folder above it to choose folds"
            )
        return [model]
    found = {int(p.name[5:]): p for p in folder.glob("fold_*") if p.name[5:].isdigit()}
    if not found:
        raise ModelError(f"{folder}: no model.json and no fold_* folders")
    if folds is None:
        folds = sorted(found)
    absent = [k for k in folds if k not in found]
    if absent:
        raise ModelError(f"{folder}: no fold(s) {absent}; it has {sorted(found)}")
    return [read(found[k]) for k in folds]
