"""ADDA: adapt a segmentor from one scanner domain to another without the target's labels.

Tzeng et al. 2017, *Adversarial discriminative domain adaptation*, for segmentation:

1. a source model, encoder M_s and decoder C, trained on labelled source cases
   (``adseg train --domains SOURCE``, scheme ce or hybrid);
2. the target encoder M_t starts as a copy of M_s; M_s and C stay frozen;
3. a domain discriminator D learns J_D = −E_s[log D(M_s(x_s))] − E_t[log(1 − D(M_t(x_t)))]
   (source real, target fake) and M_t learns the inverted-label loss
   J_M = −E_t[log D(M_t(x_t))] (the non-saturating generator loss);
4. the adapted model is C∘M_t, tested on the target domain.

Two variants of what D sees: ``feature`` (the encoder's bottleneck feature map, ADDA
proper) and ``output`` (C's softmax label maps of source and target images, the output-space
adaptation of Tsai et al. 2018, and the label-map analogue of Kohl's discriminator).

Target labels are never read: the target cases enter as dictionaries without a label, so
no transform can reach one (tests/adda/test_train.py changes every target label and gets the same
weights). The two updates are those of :mod:`adseg.training.steps`, shared with the adversarial
segmentation schemes and the GAN modules.

The adapted model is a complete model folder (``model.json``, ``checkpoint_final.pt``):
``adseg evaluate`` and ``adseg predict`` use it as any other. ``domain_auc.json`` beside it
holds the domain-shift diagnostic of :func:`domain_auc`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, DataLoader, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandFlipd,
    RandSpatialCropSamplesd,
    SpatialPadd,
    SqueezeDimd,
)
from monai.utils import set_determinism
from scipy.stats import rankdata
from torch import nn

from adseg import __version__
from adseg.data.splits import case_meta_from_dataset, validate_splits
from adseg.inference.modelfolder import FORMAT, FORMAT_VERSION, read_fold
from adseg.inference.sliding import make_inferer
from adseg.io import read_json, write_json, write_tsv
from adseg.log import logger, progress
from adseg.training.job import downsampling
from adseg.training.loader import case_items, patch_shape, validation_dataset
from adseg.training.losses import check_loss
from adseg.training.networks import LabelMapDiscriminator, split_segmentor, with_encoder
from adseg.training.schemes import ADDA_VARIANTS, SPLITTABLE_NETWORKS
from adseg.training.segmentation import (
    TrainingError,
    _resume_state,
    _save,
    mean_dice,
    pick_device,
)
from adseg.training.steps import discriminator_step, generator_step

LOG_COLUMNS = (
    "epoch",
    "loss_d",
    "d_real",
    "d_fake",
    "loss_m",
    "grad_norm_m",
    "grad_norm_d",
    "val_dice_source",
    "seconds",
)


class AddaJob:
    """One (variant, fold) adaptation, checked: what :func:`adapt_fold` needs."""

    def __init__(self, config, variant, fold, preprocessed, splits, source_dir, out):
        self.config, self.variant, self.fold = config, variant, fold
        self.preprocessed, self.splits_path = Path(preprocessed), Path(splits)
        self.source_dir, self.out = Path(source_dir), Path(out)
        self.scheme = self.name = f"adda-{variant}"
        a = config["adda"]
        problems = []
        if variant not in ADDA_VARIANTS:
            problems.append(f"variant {variant!r} unknown; choose from {', '.join(ADDA_VARIANTS)}")
        try:
            check_loss(a["loss"])
        except ValueError as err:
            problems.append(f"adda.loss: {err}")
        self.source = read_fold(self.source_dir)
        spec = self.source.spec
        net = spec["network"]
        if net["name"] not in SPLITTABLE_NETWORKS:
            problems.append(
                f"{self.source_dir}: network {net['name']} has no explicit encoder/decoder split; "
                f"ADDA needs train.network.name {' or '.join(SPLITTABLE_NETWORKS)}"
            )
        if spec["fold"] != fold:
            problems.append(f"{self.source_dir} is fold {spec['fold']}, not fold {fold}")
        if spec.get("domains") not in (None, [a["source"]]):
            problems.append(
                f"{self.source_dir} was trained on domains {spec['domains']}, not on the "
                f"source domain {a['source']!r} (adda.source)"
            )
        dataset = read_json(self.preprocessed / "dataset.json")
        folds = validate_splits(read_json(splits), case_meta_from_dataset(dataset), "splits")
        entry = folds["folds"][fold] if 0 <= fold < len(folds["folds"]) else None
        if entry is None:
            raise ValueError(f"fold {fold} is outside the splits: {len(folds['folds'])} folds")
        domain = {c: dataset["cases"][c]["domain"] for c in entry["train"] + entry["val"]}

        def of(cases, d):
            return [c for c in cases if domain[c] == d]

        self.source_train = of(entry["train"], a["source"])
        self.target_train = of(entry["train"], a["target"])
        self.source_val = of(entry["val"], a["source"])
        self.target_val = of(entry["val"], a["target"])
        self.test_cases = list(entry["val"])
        if a["source"] == a["target"]:
            problems.append(f"adda.source and adda.target are both {a['source']!r}")
        for name, cases in (
            (f"source ({a['source']}) training", self.source_train),
            (f"target ({a['target']}) training", self.target_train),
        ):
            if not cases:
                present = ", ".join(sorted(set(domain.values())))
                problems.append(f"fold {fold} has no {name} cases; its domains are {present}")
        self.factor = downsampling(net["name"], net["features"])
        if problems:
            raise ValueError("cannot adapt:\n  " + "\n  ".join(problems))
        self.spec = spec  # the source model's


# --- data: images only ------------------------------------------------------------------


def image_items(preprocessed: Path, case_ids: list[str]) -> list[dict]:
    """Data dictionaries without the label: what ADDA reads of its cases."""
    return [
        {"image": item["image"], "case_id": item["case_id"]}
        for item in case_items(preprocessed, case_ids)
    ]


def image_loader(
    items: list[dict],
    patch_size: list[int],
    spatial_dims: int,
    axis: int,
    batch_size: int,
    samples: int,
) -> tuple[DataLoader, Compose]:
    """A shuffling loader of random image patches (no label, so no label-guided crops: source
    and target patches are drawn alike), and its random transforms to seed per epoch."""
    crop = patch_shape(patch_size, spatial_dims, axis)
    steps = [
        RandSpatialCropSamplesd(
            keys="image", roi_size=crop, num_samples=samples, random_size=False
        ),
        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
    ]
    if spatial_dims == 2:
        steps.append(SqueezeDimd(keys="image", dim=axis + 1))
    randomize = Compose(steps)
    load = [*_load_images().transforms, SpatialPadd(keys="image", spatial_size=crop)]
    dataset = CacheDataset(
        items,
        transform=Compose([*load, *randomize.transforms]),
        num_workers=1,
        copy_cache=False,
        progress=False,
    )
    loader = DataLoader(dataset, batch_size=max(1, batch_size // samples), shuffle=True)
    return loader, randomize


def _load_images() -> Compose:
    return Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys="image", dtype=np.float32, track_meta=False),
        ]
    )


def _endless(loader):
    while True:
        yield from loader


# --- the two networks and their updates -------------------------------------------------------


class Adapter:
    """M_s, C (frozen), the trained M_t and the domain discriminator D of one job."""

    def __init__(self, source_net: nn.Module, variant: str, config: dict, device) -> None:
        a = config["adda"]
        self.variant, self.a, self.device = variant, a, device
        self.source = source_net.to(device).eval().requires_grad_(False)
        self.enc_s, self.dec = split_segmentor(self.source)
        # M_t := M_s; its copy of C is never used (C∘M_t uses the source's C)
        self.target = copy.deepcopy(self.source)
        self.enc_t, _ = split_segmentor(self.target)
        self.enc_t.requires_grad_(True).train()
        self.opt_t = torch.optim.Adam(self.enc_t.parameters(), lr=a["lr"], betas=(0.5, 0.999))
        dims = config["train"]["network"]["spatial_dims"]
        channels = self._channels(config["train"]["patch_size"], device)
        norm = a["d_norm"]
        if norm == "auto":
            norm = "none" if a["loss"] == "wgan-gp" else "instance"
        features = a["feature_d_features"] if variant == "feature" else a["output_d_features"]
        self.disc = LabelMapDiscriminator(dims, channels, features, norm, "global").to(device)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=a["d_lr"], betas=(0.5, 0.999))
        amp = config["train"]["amp"] and device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.amp = amp
        self.autocast = functools.partial(
            torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp
        )

    def _channels(self, patch: list[int], device) -> int:
        with torch.no_grad():
            probe = torch.zeros(1, self._in_channels(), *patch, device=device)
            return int(self.represent(self.enc_s, probe).shape[1])

    def _in_channels(self) -> int:
        first = next(p for p in self.enc_s.parameters() if p.dim() > 2)
        return int(first.shape[1])

    def represent(self, encoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """What D sees of an image batch: the bottleneck (feature) or C's softmax (output)."""
        levels = encoder(image)
        if self.variant == "feature":
            return levels[-1].float()
        return torch.softmax(self.dec(levels).float(), dim=1)

    def step(self, source_image: torch.Tensor, target_image: torch.Tensor) -> dict[str, float]:
        """k steps of D (source real, target fake), then one step of M_t through frozen D."""
        a = self.a
        with torch.no_grad(), self.autocast():
            real = self.represent(self.enc_s, source_image)
        with self.autocast():
            fake = self.represent(self.enc_t, target_image)
        for _ in range(a["d_steps"]):
            d = discriminator_step(
                self.disc,
                self.opt_d,
                real,
                fake,
                a["loss"],
                a["real_label"],
                a["gp_weight"],
                a["clip"],
                self.autocast,
            )
        m = generator_step(
            self.enc_t, self.disc, self.opt_t, fake, a["loss"], autocast=self.autocast
        )
        return {
            "loss_d": d["loss_d"],
            "d_real": d["d_real"],
            "d_fake": d["d_fake"],
            "grad_norm_d": d["grad_norm_d"],
            "loss_m": m["loss_adv"],
            "grad_norm_m": m["grad_norm_g"],
        }

    def adapted_state(self) -> dict:
        """C∘M_t as the segmentor's state dict: the source network with M_t's weights."""
        return with_encoder(self.source.state_dict(), self.enc_t.state_dict())

    def state(self) -> dict:
        return {
            "encoder": self.enc_t.state_dict(),
            "opt_t": self.opt_t.state_dict(),
            "discriminator": self.disc.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.enc_t.load_state_dict(state["encoder"])
        self.opt_t.load_state_dict(state["opt_t"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["opt_d"])


# --- the domain-shift diagnostic ----------------------------------------------------------


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
    """The fold's training and held-out case ids per side, for :func:`domain_diagnostic`."""
    train = {"source": job.source_train, "target": job.target_train}
    test = {"source": job.source_val, "target": job.target_val}
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


def image_dataset(job: AddaJob, case_ids: list[str]) -> CacheDataset:
    """Whole cases, images only: ``{"image": (C, X, Y, Z), "case_id": ...}``."""
    return CacheDataset(
        image_items(job.preprocessed, case_ids), transform=_load_images(), progress=False
    )


# --- the job --------------------------------------------------------------------------------


def fingerprint(job: AddaJob) -> str:
    """What a checkpoint must share with the run that resumes it: the variant, fold, cases,
    ADDA settings, the source model's weights and the images (never a label)."""
    digest = hashlib.sha256()
    digest.update((job.source_dir / "checkpoint_final.pt").read_bytes())
    for item in image_items(job.preprocessed, job.source_train + job.target_train):
        for path in item["image"]:
            digest.update(Path(path).read_bytes())
    key = {
        "variant": job.variant,
        "fold": job.fold,
        "cases": [job.source_train, job.target_train, job.source_val],
        "adda": {k: v for k, v in job.config["adda"].items() if k not in ("enabled", "val_every")},
        "seed": job.config["train"]["seed"],
        "batch": [job.config["train"]["batch_size"], job.config["train"]["samples_per_case"]],
        "weights_and_images": digest.hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def source_dice(job: AddaJob, net: nn.Module, dataset, inferer, amp: bool) -> float:
    """Mean Dice of C∘M_t on the fold's held-out *source* cases (labelled source data: a
    check that adaptation has not wrecked the decoder's input, not a target metric)."""
    net.eval()
    return mean_dice(net, dataset, inferer, job.spec, amp)


def adapt_fold(
    config: dict,
    variant: str,
    fold: int,
    preprocessed: str | Path,
    splits: str | Path,
    source_model: str | Path,
    out: str | Path,
    resume: str = "auto",
    show_progress: bool = True,
    tracker=None,
) -> dict:
    """Adapt fold ``fold``'s source model to the target domain; write the model folder ``out``.

    Args:
        config: a resolved config (``adda`` and ``train`` sections used).
        variant: ``feature`` or ``output`` (what the domain discriminator sees).
        source_model: the fold's source-only model folder (``adseg train --domains SOURCE``).
        resume: ``no``, ``yes`` or ``auto``, as for :func:`adseg.training.segmentation.train_fold`.
        tracker: an :class:`adseg.tracking.FoldRun`, or None.

    Returns:
        The adapted model's spec (``model.json``).

    Raises:
        ValueError: bad settings or inputs, found before any training.
        TrainingError: a non-finite loss.
    """
    job = AddaJob(config, variant, fold, preprocessed, splits, source_model, out)
    a, t = config["adda"], config["train"]
    device = pick_device(t["device"])
    if device.type == "cpu":
        torch.set_num_threads(t["threads"])
    key = fingerprint(job)
    state = _resume_state(job, resume, key)
    set_determinism(t["seed"])
    adapter = Adapter(job.source.segmentor("final"), variant, config, device)
    history: list[dict] = []
    if state is not None:
        adapter.load_state(state["adapter"])
        history = state["history"]
        logger.info("resuming %s fold %d after epoch %d", job.name, fold, len(history))
    job.out.mkdir(parents=True, exist_ok=True)
    for name in ["model.json", "checkpoint_final.pt", "domain_auc.json"] + (
        ["checkpoint_last.pt", "training_log.tsv"] if state is None else []
    ):
        (job.out / name).unlink(missing_ok=True)
    _write_static(job)
    spec = job.spec
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    loaders = [
        image_loader(
            image_items(job.preprocessed, cases),
            spec["patch_size"],
            dims,
            axis,
            t["batch_size"],
            t["samples_per_case"],
        )
        for cases in (job.source_train, job.target_train)
    ]
    val_set = validation_dataset(case_items(job.preprocessed, job.source_val))
    images = diagnostic_images(job)
    inferer = make_inferer(dims, spec["patch_size"], axis, t["batch_size"])
    if tracker is not None:
        tracker.start(
            _TrackedJob(job), len(history) if state is not None else None, device, job.splits_path
        )
    logger.info(
        "ADDA %s fold %d on %s: %s -> %s, %d source and %d unlabelled target cases",
        variant,
        fold,
        device,
        a["source"],
        a["target"],
        len(job.source_train),
        len(job.target_train),
    )
    tracked = get_track_meta()
    set_track_meta(False)
    try:
        _epochs(job, adapter, loaders, val_set, inferer, history, key, show_progress, tracker)
        diagnostic = domain_diagnostic(job, adapter, images, device)
    except BaseException as err:
        if tracker is not None:
            tracker.fail(err)
        raise
    finally:
        set_track_meta(tracked)
    spec = _finish(job, adapter, history, diagnostic)
    if tracker is not None:
        tracker.metrics(_auc_metrics(diagnostic), step=len(history))
        tracker.finish(spec)
    return spec


def _auc_metrics(diagnostic: dict) -> dict:
    return {
        f"adda/domain_auc_{k}": diagnostic[k]
        for k in ("before", "after")
        if diagnostic[k] is not None
    }


class _TrackedJob:
    """What :class:`adseg.tracking.FoldRun` reads of a job."""

    def __init__(self, job: AddaJob) -> None:
        self.name = self.scheme = job.name
        self.fold, self.out, self.preprocessed = job.fold, job.out, job.preprocessed
        self.spec = {
            "train_cases": job.source_train + job.target_train,
            "val_cases": job.test_cases,
        }


def _epochs(job, adapter, loaders, val_set, inferer, history, key, show, tracker) -> None:
    a, t = job.config["adda"], job.config["train"]
    (src_loader, src_rand), (tgt_loader, tgt_rand) = loaders
    net = copy.deepcopy(adapter.source)
    for epoch in progress(
        range(len(history), a["epochs"]),
        f"{job.name} fold {job.fold}",
        total=a["epochs"] - len(history),
        enabled=show,
    ):
        t0 = time.perf_counter()
        seed = t["seed"] * 100_003 + epoch
        set_determinism(seed)
        src_rand.set_random_state(seed=seed % 2**32)
        tgt_rand.set_random_state(seed=(seed + 1) % 2**32)
        source, target = _endless(src_loader), _endless(tgt_loader)
        sums: dict[str, list[float]] = {}
        for i in range(a["steps_per_epoch"]):
            xs = next(source)["image"].to(adapter.device)
            xt = next(target)["image"].to(adapter.device)
            stats = adapter.step(xs, xt)
            bad = [k for k, v in stats.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(
                    f"non-finite {', '.join(bad)} at epoch {epoch + 1}, step {i + 1}; lower "
                    "adda.lr or adda.d_lr"
                )
            for k, v in stats.items():
                sums.setdefault(k, []).append(v)
        row = {"epoch": epoch + 1, **{k: float(np.mean(v)) for k, v in sums.items()}}
        if (epoch + 1) % a["val_every"] == 0 or epoch + 1 == a["epochs"]:
            net.load_state_dict(adapter.adapted_state())
            row["val_dice_source"] = source_dice(job, net, val_set, inferer, adapter.amp)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        logger.info(_message(row, a["epochs"]))
        if tracker is not None:
            tracker.epoch(_tracked_row(row), a["d_lr"])
        write_tsv(job.out / "training_log.tsv", history, LOG_COLUMNS)
        _save(
            {
                "adapter": adapter.state(),
                "history": history,
                "fingerprint": key,
                "adseg_version": __version__,
            },
            job.out / "checkpoint_last.pt",
        )


def _tracked_row(row: dict) -> dict:
    """An epoch row under the metric names FoldRun logs (M_t plays the segmentor's part)."""
    names = {"loss_m": "loss_adv", "grad_norm_m": "grad_norm_s", "val_dice_source": "val_dice"}
    return {names.get(k, k): v for k, v in row.items()}


def _message(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key, label in (
        ("loss_d", "J_D"),
        ("loss_m", "J_M"),
        ("d_real", "D(source)"),
        ("d_fake", "D(target)"),
        ("val_dice_source", "source val Dice"),
    ):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.3f}")
    parts.append(f"{row['seconds']:.1f} s")
    return ", ".join(parts)


def _write_static(job: AddaJob) -> None:
    import yaml

    from adseg.io import write_text

    write_text(job.out / "config.yaml", yaml.safe_dump(job.config, sort_keys=False))
    write_json(job.out / "plans.json", read_json(job.source_dir / "plans.json"))


def _finish(job: AddaJob, adapter: Adapter, history: list[dict], diagnostic: dict) -> dict:
    from adseg.plots import adda_curves

    a = job.config["adda"]
    source = {k: v for k, v in job.spec.items() if k != "quality_threshold"}
    spec = {
        **source,
        "scheme": "adda",
        "name": job.name,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adseg_version": __version__,
        "train_cases": job.source_train,
        "target_cases": job.target_train,
        "val_cases": job.source_val,
        "test_cases": job.test_cases,
        # D judged domains, not label maps: no quality check at predict time
        "discriminator": None,
        "adda": {
            "variant": job.variant,
            "source_domain": a["source"],
            "target_domain": a["target"],
            "source_model": str(job.source_dir.resolve()),
            "source_scheme": job.spec["scheme"],
            "loss": a["loss"],
        },
        "epochs_trained": len(history),
        "best_epoch": 0,
        "best_val_dice": None,
        "final_val_dice": history[-1].get("val_dice_source") if history else None,
    }
    spec.pop("domains", None)
    _save({"segmentor": adapter.adapted_state()}, job.out / "checkpoint_final.pt")
    write_json(job.out / "domain_auc.json", diagnostic)
    adda_curves(history, job.out / "learning_curves.png", f"{job.name} fold {job.fold}")
    write_json(job.out / "model.json", spec)
    return spec
