"""The domain-shift diagnostic: how well a linear classifier tells the domains apart from the
encoders' features, before and after adaptation (uses domains, never a segmentation label)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from adseg.adda.adapter import Adapter
from adseg.adda.data import image_dataset
from adseg.adda.job import AddaJob
from adseg.log import logger


@torch.inference_mode()
def encoder_features(
    encoder: nn.Module, image: torch.Tensor, spatial_dims: int, axis: int, factor: int, device
) -> np.ndarray:
    """Bottleneck features of a case ``(C, X, Y, Z)``, averaged over space: one row per
    non-empty slice (2-D networks) or one row for the case (3-D)."""
    x = torch.as_tensor(image, dtype=torch.float32)
    if spatial_dims == 2:
        x = x.movedim(axis + 1, 0)  # (slices, C, a, b)
        x = x[x.flatten(1).abs().sum(1) > 0]
    else:
        x = x.unsqueeze(0)
    pad = []
    for size in reversed(x.shape[2:]):
        extra = -size % factor
        pad += [extra // 2, extra - extra // 2]
    x = F.pad(x, pad)
    rows = [encoder(batch.to(device))[-1].float().flatten(2).mean(2).cpu() for batch in x.split(16)]
    return torch.cat(rows).numpy() if rows else np.zeros((0, 0), np.float32)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U over the ranks; ties count half)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logistic_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-2
) -> np.ndarray:
    """A linear domain classifier (L2-regularised logistic regression on standardised
    features, fitted with L-BFGS); its logits on ``x_test``."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.as_tensor((x_train - mean) / std, dtype=torch.float64)
    yt = torch.as_tensor(y_train, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    test = torch.as_tensor((x_test - mean) / std, dtype=torch.float64)
    return (test @ w + b).detach().numpy()


def domain_auc(
    features: dict[str, dict[str, np.ndarray]],
    train: dict[str, list[str]],
    test: dict[str, list[str]],
) -> float:
    """AUC of a domain classifier fitted on the training cases' features and scored on the
    held-out cases'. 0.5: the encoders' features do not tell the domains apart; 1: they
    separate them perfectly.

    Args:
        features: ``{"source"|"target": {case_id: (rows, channels)}}``.
        train, test: ``{"source"|"target": [case ids]}``.
    """

    def stack(cases):
        xs, ys = [], []
        for side, label in (("source", 0), ("target", 1)):
            for c in cases[side]:
                xs.append(features[side][c])
                ys.append(np.full(len(features[side][c]), label))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = stack(train)
    x_test, y_test = stack(test)
    return auc(logistic_scores(x_train, y_train, x_test), y_test)


def diagnostic_cases(job: AddaJob) -> tuple[dict, dict]:
    """The fold's training and held-out (test) case ids per side, for
    :func:`domain_diagnostic`: a measurement, so it may see the test patients' images."""
    train = {"source": job.source_train, "target": job.target_train}
    test = {"source": job.source_test, "target": job.target_test}
    return train, test


def diagnostic_images(job: AddaJob) -> dict[str, dict]:
    """``{"source"|"target": {case_id: image}}`` of the diagnostic's cases (images only)."""
    train, test = diagnostic_cases(job)
    return {
        side: {i["case_id"]: i["image"] for i in image_dataset(job, train[side] + test[side])}
        for side in train
    }


def domain_diagnostic(job: AddaJob, adapter: Adapter, images: dict, device) -> dict:
    """The domain classifier's AUC on encoder features before (M_s on both domains) and after
    adaptation (M_s on source, M_t on target): trained on the fold's training cases, scored
    on its held-out cases. Uses the domain of each case, never a segmentation label.

    ``images``: from :func:`diagnostic_images`.
    """
    spec = job.spec
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    train, test = diagnostic_cases(job)
    if not (test["source"] and test["target"]):
        logger.warning("fold %d lacks held-out cases of a domain: no domain AUC", job.fold)
        return {"before": None, "after": None}

    def feats(encoder, side):
        return {
            c: encoder_features(encoder, img, dims, axis, job.factor, device)
            for c, img in images[side].items()
        }

    source = feats(adapter.enc_s, "source")
    before = {"source": source, "target": feats(adapter.enc_s, "target")}
    adapter.enc_t.eval()
    after = {"source": source, "target": feats(adapter.enc_t, "target")}
    adapter.enc_t.train()
    return {
        "before": domain_auc(before, train, test),
        "after": domain_auc(after, train, test),
        "classifier": "logistic regression on spatially averaged bottleneck features",
        "unit": "slice" if dims == 2 else "case",
        "train_cases": {s: len(v) for s, v in train.items()},
        "test_cases": {s: len(v) for s, v in test.items()},
    }
