"""A non-learned baseline: thresholds on the z-scored channels and a least lesion size.

The results table needs a floor no network was trained for. To be evaluated exactly as the
CNN schemes (same folds, test patients and metrics, a continuous lesion map for PI-CAI's AP),
the rule is a model like the others: :class:`ThresholdRule` is a pointwise torch module whose
parameters are buffers (``checkpoint_final.pt``'s state dict), run by ``adseg evaluate`` and
``adseg predict`` through the same sliding-window inference; the least component size is
``model.json``'s ``postprocess`` (:func:`adseg.inference.sliding.remove_small_components`).

The rule: a voxel is lesion when every active channel ``c`` is on the lesion side of its
threshold, ``d_c·(x_c − t_c) > 0`` with ``d_c = ±1``. :func:`fit_threshold_rule` fits the
directions, thresholds and active channels on the fold's training cases and the least
component size on its inner validation cases; it is given no other case ids, so no test
patient can reach the fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import nn

from adseg.evaluation.metrics import dice
from adseg.training.loader import case_items

# least component sizes tried on the validation cases, in voxels of the preprocessed grid
MIN_COMPONENT_SIZES = (0, 4, 8, 16, 32, 64, 128)
QUANTILES = np.linspace(0.0, 1.0, 41)  # the threshold grid: per channel, per class
SAMPLE = 200_000  # training voxels per class at most in the threshold search
SCALES = np.logspace(-1, 2, 31)  # the lesion logit per unit of margin (z-score units)
MAX_SWEEPS = 10
NEVER = -1.0e4  # the logit of classes the rule never predicts (zones); finite in bfloat16
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # as adseg predict counts lesions
# the fit's record: each accepted move of the threshold search, then each least size tried
SEARCH_COLUMNS = ("step", "channel", "active", "threshold", "train_dice")
LOG_COLUMNS = (*SEARCH_COLUMNS, "min_component_voxels", "val_dice")


class ThresholdRule(nn.Module):
    """Per-channel thresholds as a segmentor: ``(B, C, *spatial)`` to logits ``(B, K, *spatial)``.

    With the margin ``m = min over active c of d_c·(x_c − t_c)``, the lesion logit is
    ``scale·m``, background's 0 and any other class's :data:`NEVER`: the softmax's lesion
    probability is ``sigmoid(scale·m)`` and the argmax is lesion exactly where the rule holds.
    Every voxel is computed from its own intensities, so any patch, slice or mirroring gives
    the same map.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (),
    ) -> None:
        """Arguments as :func:`adseg.training.networks.build_segmentor`'s; ``spatial_dims``
        and ``features`` are accepted and unused (pointwise: any input shape fits)."""
        super().__init__()
        if in_channels < 1 or out_channels < 2:
            raise ValueError(
                f"ThresholdRule needs >= 1 input channel and >= 2 classes, got {in_channels} "
                f"and {out_channels}"
            )
        self.out_channels = out_channels
        self.register_buffer("direction", torch.ones(in_channels))
        self.register_buffer("threshold", torch.zeros(in_channels))
        self.register_buffer("active", torch.ones(in_channels, dtype=torch.bool))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("lesion", torch.tensor(1))

    def set_rule(
        self,
        direction: Sequence[float],
        threshold: Sequence[float],
        active: Sequence[bool],
        scale: float,
        lesion: int,
    ) -> ThresholdRule:
        """Set the rule's parameters (checked); returns the module."""
        n = self.direction.numel()
        if not len(direction) == len(threshold) == len(active) == n:
            raise ValueError(f"a rule on {n} channels needs {n} directions, thresholds, flags")
        if any(d not in (-1, 1) for d in direction):
            raise ValueError(f"directions must be +1 or -1, got {list(direction)}")
        if not any(active):
            raise ValueError("a rule needs at least one active channel")
        if not 0 < lesion < self.out_channels:
            raise ValueError(f"lesion class {lesion} not a foreground class of {self.out_channels}")
        self.direction.copy_(torch.tensor(direction, dtype=torch.float32))
        self.threshold.copy_(torch.tensor(threshold, dtype=torch.float32))
        self.active.copy_(torch.tensor(active, dtype=torch.bool))
        self.scale.fill_(float(scale))
        self.lesion.fill_(int(lesion))
        return self

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        """``min over active c of d_c·(x_c − t_c)``, ``(B, 1, *spatial)``: lesion above 0."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        signed = self.direction.view(shape) * (x - self.threshold.view(shape))
        return signed.masked_fill(~self.active.view(shape), math.inf).amin(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.margin(x)
        logits = torch.full(
            (x.shape[0], self.out_channels, *x.shape[2:]), NEVER, dtype=x.dtype, device=x.device
        )
        logits[:, :1] = 0.0
        lesion = int(self.lesion)
        logits[:, lesion : lesion + 1] = self.scale * margin
        return logits


def small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The voxels of ``mask``'s connected components (26-connectivity in 3-D) smaller than
    ``min_voxels`` voxels, as a boolean array of ``mask``'s shape."""
    mask = np.asarray(mask, dtype=bool)
    if min_voxels <= 1 or not mask.any():
        return np.zeros_like(mask)
    structure = CONNECTIVITY if mask.ndim == 3 else ndimage.generate_binary_structure(mask.ndim, 2)
    components, _ = ndimage.label(mask, structure)
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False  # the background
    return small[components]


@dataclass
class Voxels:
    """Pooled training voxels ``(C, n)``, their class ``(n,)``, and the voxels each stands for."""

    values: np.ndarray
    lesion: np.ndarray
    weight: np.ndarray


@dataclass
class RuleFit:
    """A fitted rule, what it scored, and the record of its search."""

    rule: ThresholdRule
    lesion: str
    min_component_voxels: int
    train_dice: float  # pooled over the training voxels
    val_dice: float  # mean over validation cases and foreground classes (CNN schemes' val Dice)
    val_dice_pooled: dict[int, float]  # per least component size tried
    trace: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, channel_names: Sequence[str]) -> dict:
        """The rule in readable form (``model.json``): thresholds in z-score units, none
        for a channel that is off."""
        params = [b.tolist() for b in (self.rule.direction, self.rule.threshold, self.rule.active)]
        rows = zip(channel_names, *params, strict=True)
        return {
            "lesion_label": self.lesion,
            "channels": [
                {"channel": name, "direction": int(d), "threshold": t if a else None, "active": a}
                for name, d, t, a in rows
            ],
            "scale": float(self.rule.scale),
            "train_dice_pooled": self.train_dice,
            "val_dice_pooled_by_min_component_voxels": {
                str(k): v for k, v in self.val_dice_pooled.items()
            },
            "fit_seconds": round(self.seconds, 3),
        }


def read_cases(preprocessed: Path, case_ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The preprocessed channels ``(C, Z, Y, X)`` and labels ``(Z, Y, X)`` of ``case_ids``
    (numpy's axis order: the rule is pointwise and 26-connectivity symmetric)."""
    cases = []
    for item in case_items(preprocessed, case_ids):
        image = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(p)) for p in item["image"]])
        label = sitk.GetArrayFromImage(sitk.ReadImage(item["label"]))
        cases.append((image.astype(np.float32), label))
    return cases


def training_voxels(cases, lesion: int, seed: int) -> Voxels:
    """All lesion and background voxels of ``cases``, each class sampled down to
    :data:`SAMPLE` (seeded, without replacement) and weighted back to its full count."""
    values = np.concatenate([image.reshape(len(image), -1) for image, _ in cases], axis=1)
    is_lesion = np.concatenate([label.ravel() == lesion for _, label in cases])
    rng = np.random.default_rng(seed)
    keep, weights = [], []
    for members in (np.flatnonzero(is_lesion), np.flatnonzero(~is_lesion)):
        chosen = members
        if len(members) > SAMPLE:
            chosen = np.sort(rng.choice(members, SAMPLE, replace=False))
        keep.append(chosen)
        weights.append(np.full(len(chosen), len(members) / max(len(chosen), 1)))
    index = np.concatenate(keep)
    return Voxels(values[:, index], is_lesion[index], np.concatenate(weights))


def pooled_dice(tp, fp, positives: float):
    """Dice from (weighted) true and false positives and the positives' total; 1 where there
    is nothing to find and nothing was found (as :func:`adseg.evaluation.metrics.dice`)."""
    denom = np.asarray(tp + fp + positives, dtype=float)
    return np.where(denom > 0, 2.0 * np.asarray(tp) / np.where(denom > 0, denom, 1.0), 1.0)


def _weight_above(values: np.ndarray, weights: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """For each cut, the total weight of ``values`` strictly above it."""
    order = np.argsort(values, kind="stable")
    total = np.concatenate([[0.0], np.cumsum(weights[order])])
    return total[-1] - total[np.searchsorted(values[order], cuts, side="right")]


def _cut_scores(signed, vox: Voxels, rest, cuts, positives: float) -> np.ndarray:
    """Pooled Dice of ``rest & (signed > cut)`` for every cut."""
    pos, neg = rest & vox.lesion, rest & ~vox.lesion
    tp = _weight_above(signed[pos], vox.weight[pos], cuts)
    fp = _weight_above(signed[neg], vox.weight[neg], cuts)
    return pooled_dice(tp, fp, positives)


def _search(vox: Voxels, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, list]:
    """Coordinate ascent on pooled training Dice: start from the best single channel, then
    sweep the channels, each taking its best quantile threshold or switching off (while
    another stays on), until a sweep changes nothing. A change must improve the Dice."""
    n_channels = len(direction)
    signed = direction[:, None] * vox.values
    # cuts in signed units (d·x > d·t), each grid led by -inf: the channel off
    grids = [
        np.concatenate([[-np.inf], d * _grid(v, vox.lesion)])
        for v, d in zip(vox.values, direction, strict=True)
    ]
    positives = float(vox.weight[vox.lesion].sum())
    everywhere = np.ones(vox.lesion.shape, bool)
    singles = [
        _cut_scores(signed[c], vox, everywhere, grids[c][1:], positives) for c in range(n_channels)
    ]
    first = int(np.argmax([s.max() for s in singles]))
    active, cut = np.zeros(n_channels, bool), np.zeros(n_channels)
    active[first], cut[first] = True, grids[first][1 + int(np.argmax(singles[first]))]
    best = float(singles[first].max())
    trace = [_step("start", first, True, cut[first] * direction[first], best)]
    for sweep in range(1, MAX_SWEEPS + 1):
        changed = False
        for c in range(n_channels):
            others = active.copy()
            others[c] = False
            rest = np.all(signed[others] > cut[others, None], axis=0)
            scores = _cut_scores(signed[c], vox, rest, grids[c], positives)
            if not others.any():
                scores[0] = -np.inf  # the last active channel stays on
            k = int(np.argmax(scores))
            if scores[k] > best + 1e-12:
                active[c], best, changed = k > 0, float(scores[k]), True
                cut[c] = grids[c][k] if k > 0 else cut[c]
                trace.append(_step(f"sweep {sweep}", c, k > 0, cut[c] * direction[c], best))
        if not changed:
            break
    return np.where(active, cut * direction, 0.0), active, best, trace


def _grid(values: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """A channel's candidate thresholds: the quantiles of its lesion and of its background
    values (the sample's, so the rare lesion class gets its own share of the grid)."""
    return np.unique(np.concatenate([np.quantile(values[m], QUANTILES) for m in (lesion, ~lesion)]))


def _step(step: str, channel: int, active: bool, threshold: float, dice: float) -> dict:
    """One accepted move of the threshold search, a row of ``training_log.tsv``."""
    return dict(zip(SEARCH_COLUMNS, (step, channel, active, threshold, dice), strict=True))


@torch.inference_mode()
def margins(rule: ThresholdRule, values: np.ndarray) -> np.ndarray:
    """``rule``'s margin at each voxel of ``values`` ``(C, ...)`` (the module's own arithmetic,
    so the fit scores exactly the masks inference makes)."""
    return rule.margin(torch.from_numpy(np.ascontiguousarray(values))[None])[0, 0].numpy()


def _fit_scale(vox: Voxels, margin: np.ndarray) -> float:
    """The lesion logit per unit of margin that maximises the weighted likelihood of the
    training labels under ``p = sigmoid(scale·margin)`` (a grid, so it is deterministic)."""
    losses = [
        float(np.sum(vox.weight * np.logaddexp(0.0, np.where(vox.lesion, -s, s) * margin)))
        for s in SCALES
    ]
    return float(SCALES[int(np.argmin(losses))])


def _choose_min_size(
    cases, masks: list[np.ndarray], lesion: int, sizes: Sequence[int]
) -> tuple[int, dict[int, float]]:
    """The least component size with the best pooled Dice on the validation cases (the
    smallest such size on ties), and the pooled Dice of every size tried."""
    scores = {}
    for size in sizes:
        tp = fp = positives = 0
        for (_, label), mask in zip(cases, masks, strict=True):
            kept = mask & ~small_components(mask, size)
            truth = label == lesion
            tp += int(np.count_nonzero(kept & truth))
            fp += int(np.count_nonzero(kept & ~truth))
            positives += int(np.count_nonzero(truth))
        scores[int(size)] = float(pooled_dice(tp, fp, positives))
    chosen = max(scores, key=lambda s: (scores[s], -s))
    return chosen, scores


def _val_dice(cases, masks: list[np.ndarray], labels: dict[str, int], lesion: int) -> float:
    """Mean Dice over validation cases and foreground classes, 1 where both are empty: the
    CNN schemes' validation Dice, so ``best_val_dice`` compares like with like."""
    scores = [
        dice(label == value, mask if value == lesion else np.zeros_like(mask))
        for (_, label), mask in zip(cases, masks, strict=True)
        for value in sorted(labels.values())
        if value != 0
    ]
    return float(np.mean(scores)) if scores else math.nan


def _directions(vox: Voxels) -> np.ndarray:
    """+1 for a channel whose (weighted) lesion mean is at least its background mean, else -1."""
    pos, neg = vox.weight * vox.lesion, vox.weight * ~vox.lesion
    lesion_mean = vox.values @ pos / pos.sum()
    background_mean = vox.values @ neg / max(neg.sum(), 1.0)
    return np.where(lesion_mean >= background_mean, 1.0, -1.0)


def fit_threshold_rule(
    preprocessed: str | Path,
    train_cases: Sequence[str],
    val_cases: Sequence[str],
    labels: dict[str, int],
    lesion: str,
    seed: int = 0,
    min_sizes: Sequence[int] = MIN_COMPONENT_SIZES,
) -> RuleFit:
    """Fit a :class:`ThresholdRule` on one fold.

    Reads the preprocessed (z-scored) cases of ``train_cases`` for the directions (lesion vs.
    non-lesion mean), thresholds and active channels (coordinate ascent over each channel's
    quantile grid, "off" included, maximising pooled Dice over the training voxels; the
    background is sampled, seeded, and weighted back to its count, so the Dice is that of
    all voxels up to sampling), and of ``val_cases`` for the least component size. No other
    case is read.

    Args:
        preprocessed: the preprocessed folder.
        labels: label name -> value (0 background), one output class each.
        lesion: the label the rule finds; every other foreground class is never predicted.
        seed: seeds the background sample.
        min_sizes: the least component sizes (voxels of the preprocessed grid) tried.

    Raises:
        ValueError: ``lesion`` not a foreground label, no training or validation cases, or
            no lesion voxel in the training cases.
    """
    t0 = time.perf_counter()
    if lesion not in labels or labels[lesion] == 0:
        raise ValueError(f"lesion label {lesion!r} not a foreground label of {sorted(labels)}")
    if not train_cases or not val_cases:
        raise ValueError("the threshold rule needs training and validation cases")
    value = labels[lesion]
    preprocessed = Path(preprocessed)
    vox = training_voxels(read_cases(preprocessed, train_cases), value, seed)
    if not vox.lesion.any():
        raise ValueError(
            f"no {lesion!r} voxel in the fold's {len(train_cases)} training cases: there is "
            "nothing to fit a threshold rule to"
        )
    direction = _directions(vox)
    threshold, active, train_dice, trace = _search(vox, direction)
    rule = ThresholdRule(3, len(direction), len(labels))
    rule.set_rule(direction.tolist(), threshold.tolist(), active.tolist(), 1.0, value)
    scale = _fit_scale(vox, margins(rule, vox.values))
    rule.scale.fill_(scale)
    val = read_cases(preprocessed, val_cases)
    masks = [margins(rule, image) > 0 for image, _ in val]
    size, pooled = _choose_min_size(val, masks, value, min_sizes)
    kept = [m & ~small_components(m, size) for m in masks]
    trace += [
        {"step": "min size", "min_component_voxels": s, "val_dice": d} for s, d in pooled.items()
    ]
    return RuleFit(
        rule=rule,
        lesion=lesion,
        min_component_voxels=size,
        train_dice=train_dice,
        val_dice=_val_dice(val, kept, labels, value),
        val_dice_pooled=pooled,
        trace=trace,
        seconds=time.perf_counter() - t0,
    )
