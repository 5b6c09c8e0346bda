"""Check a training job against its data before any work, and describe the model it makes.

Every problem found is reported at once, as one ``ValueError`` whose lines name the setting
and the fix: unknown names, a fold outside the splits, patches that do not fit the network or
the cases, a discriminator that its loss forbids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from adseg.data.shares import training_share
from adseg.data.splits import case_meta_from_dataset, fold_cases
from adseg.io import read_json
from adseg.preprocessing.case import Plan
from adseg.training.loader import slice_axis
from adseg.training.losses import check_loss
from adseg.training.networks import DISCRIMINATOR_INPUTS, REAL_MAPS, SEGMENTORS
from adseg.training.schemes import ADVERSARIAL_SCHEMES, SCHEMES

AXES = "xyz"


@dataclass
class TrainJob:
    """One (scheme, fold) training job, checked."""

    config: dict
    scheme: str
    fold: int
    preprocessed: Path
    out: Path
    plan: Plan
    spec: dict
    # what runs, results and MLflow call the model (the scheme, unless a pipeline such as
    # ADDA names its models itself)
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.scheme


def downsampling(name: str, features: list[int]) -> int:
    """Factor by which the segmentor halves its input (patch sizes must be multiples)."""
    levels = 5 if name == "BasicUNet" else len(features) - 1
    return 2**levels


def _network_problems(config: dict, scheme: str) -> list[str]:
    t, a = config["train"], config["adversarial"]
    net = t["network"]
    problems = []
    if net["name"] not in SEGMENTORS:
        problems.append(
            f"train.network.name {net['name']!r} unknown; choose from {', '.join(SEGMENTORS)}"
        )
        return problems
    if net["name"] == "BasicUNet" and len(net["features"]) != 6:
        problems.append(f"train.network.features: BasicUNet needs 6 sizes, got {net['features']}")
    if net["name"] == "DynUNet" and len(net["features"]) < 3:
        problems.append(
            f"train.network.features: DynUNet needs at least 3 levels, got {net['features']}"
        )
    patch = t["patch_size"]
    if len(patch) != net["spatial_dims"]:
        problems.append(
            f"train.patch_size {patch} has {len(patch)} sizes but network.spatial_dims is "
            f"{net['spatial_dims']}"
        )
    factor = downsampling(net["name"], net["features"])
    if any(p % factor for p in patch):
        problems.append(
            f"train.patch_size {patch}: {net['name']} with {len(net['features'])} levels "
            f"downsamples by {factor}; use multiples of {factor}"
        )
    if scheme in ADVERSARIAL_SCHEMES:
        problems += _discriminator_problems(a, patch)
    return problems


def _discriminator_problems(a: dict, patch: list[int]) -> list[str]:
    """Settings of D (only checked for the schemes that train one)."""
    problems = []
    try:
        check_loss(a["loss"])
    except ValueError as err:
        problems.append(f"adversarial.loss: {err}")
    if a["d_input"] not in DISCRIMINATOR_INPUTS:
        problems.append(
            f"adversarial.d_input {a['d_input']!r} unknown; choose from "
            f"{', '.join(DISCRIMINATOR_INPUTS)}"
        )
    if a["real_maps"] not in REAL_MAPS:
        problems.append(
            f"adversarial.real_maps {a['real_maps']!r} unknown; choose from {', '.join(REAL_MAPS)}"
        )
    if a["loss"] == "wgan-gp" and a["d_norm"] == "batch":
        problems.append(
            "adversarial.d_norm batch with loss wgan-gp: the gradient penalty is per sample "
            "and batch norm couples samples; use none or instance (or auto)"
        )
    depth = 2 ** len(a["d_features"])
    if min(patch) < depth:
        problems.append(
            f"adversarial.d_features: {len(a['d_features'])} strided layers need patches of at "
            f"least {depth} voxels, train.patch_size is {patch}"
        )
    return problems


def _data_problems(config: dict, plan: Plan, sizes: dict[str, list[int]]) -> list[str]:
    """Settings that do not fit this cohort: class weights, patch vs. case sizes."""
    t = config["train"]
    problems = []
    classes = len(plan.labels)
    if sorted(plan.labels.values()) != list(range(classes)):
        problems.append(
            f"labels {plan.labels}: values must be 0..{classes - 1} without gaps (as in nnU-Net), "
            "one output channel per label"
        )
    if t["class_weights"] is not None and len(t["class_weights"]) != classes:
        problems.append(
            f"train.class_weights has {len(t['class_weights'])} values; the data has {classes} "
            f"classes ({', '.join(plan.labels)})"
        )
    axis = slice_axis(plan.target_spacing)
    patch = list(t["patch_size"])
    axes = [i for i in range(3) if i != axis] if len(patch) == 2 else [0, 1, 2]
    for size, ax in zip(patch, axes, strict=False):
        largest = max(s[ax] for s in sizes.values())
        if size > 2 * largest:
            problems.append(
                f"train.patch_size {patch}: {size} voxels along {AXES[ax]} but the largest case "
                f"has {largest}; use a smaller patch"
                + (" or network.spatial_dims 2" if len(patch) == 3 else "")
            )
    return problems


def _case_sizes(preprocessed: Path, case_ids: list[str]) -> dict[str, list[int]]:
    sizes = {}
    for case_id in case_ids:
        path = preprocessed / "properties" / f"{case_id}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the preprocessed folder")
        sizes[case_id] = read_json(path)["final_grid"]["size"]
    return sizes


def frequency_weights(label_files: list[str], classes: int) -> list[float]:
    """Class weights for L_mce: inverse square roots of the classes' voxel frequencies over
    ``label_files`` (a fold's training patients), scaled so the mean weight per voxel is 1.

    The square root tempers plain inverse frequency (lesions are ~0.3 % of the voxels: a
    weight of ~300 would make S paint lesion everywhere it is unsure).

    Raises:
        ValueError: a class absent from every file (its weight would be infinite).
    """
    counts = np.zeros(classes)
    for path in label_files:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        counts += np.bincount(labels.ravel().astype(np.int64), minlength=classes)[:classes]
    if np.any(counts == 0):
        missing = [k for k in range(classes) if counts[k] == 0]
        raise ValueError(f"class weights: classes {missing} occur in no training label map")
    freq = counts / counts.sum()
    weights = freq**-0.5
    return [float(w) for w in weights / np.sum(freq * weights)]


def check_job(
    config: dict,
    scheme: str,
    fold: int,
    preprocessed: Path,
    splits: dict,
    out: Path,
    domains: list[str] | None = None,
    name: str | None = None,
) -> TrainJob:
    """Validate a (scheme, fold) job and build the spec of the model it will write.

    ``domains`` restricts training and validation to the fold's cases of those scanner
    domains (dataset.json ``domain``); the model is still tested on all the fold's held-out
    cases (``test_cases``), so its results can be split by domain.

    Raises:
        ValueError: every problem found, one per line.
        FileNotFoundError: the preprocessed folder lacks a file.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} unknown; choose from {', '.join(SCHEMES)}")
    for required in ("dataset.json", "plans.json"):
        if not (preprocessed / required).is_file():
            raise FileNotFoundError(
                f"{preprocessed / required}: missing; run 'adseg preprocess' first"
            )
    dataset = read_json(preprocessed / "dataset.json")
    plan = Plan.from_dict(read_json(preprocessed / "plans.json"))
    metas = case_meta_from_dataset(dataset)
    entry = fold_cases(splits, fold, metas, "splits")
    if domains:
        entry = _of_domains(entry, dataset, domains, fold)
    fraction = config["train"].get("fraction", 1.0)
    if fraction < 1:
        c = config["folds"]
        entry = training_share(entry, metas, fraction, c["seed"], c["stratify"])
    # a fitted rule uses no network of train.network's (pointwise, it fits any patch)
    rule = SCHEMES[scheme].fitted == "rule"
    problems = [] if rule else _network_problems(config, scheme)
    if not problems:
        sizes = _case_sizes(preprocessed, entry["train"] + entry["val"])
        problems += _data_problems(config, plan, sizes)
    if problems:
        raise ValueError("cannot train:\n  " + "\n  ".join(problems))
    spec = _spec(config, scheme, entry, plan) | {"name": name or scheme}
    if rule:
        spec["network"] |= {"name": "ThresholdRule", "features": []}
    if SCHEMES[scheme].supervised == "wce":
        labels = [preprocessed / "labelsTr" / f"{c}.nii.gz" for c in entry["train"]]
        spec["class_weights"] = frequency_weights(labels, len(plan.labels))
    if domains:
        spec["domains"] = sorted(domains)
    if fraction < 1:
        spec["train_fraction"] = fraction
    return TrainJob(config, scheme, fold, preprocessed, out, plan, spec, name or scheme)


def _of_domains(entry: dict, dataset: dict, domains: list[str], fold: int) -> dict:
    """A fold's cases with training and validation cut to ``domains``; ``test`` keeps all."""
    cases = dataset["cases"]
    present = sorted({cases[c]["domain"] for c in entry["train"] + entry["val"]})
    unknown = sorted(set(domains) - set(present))
    if unknown:
        raise ValueError(
            f"domain {', '.join(unknown)} not in fold {fold}; its cases come from domains "
            f"{', '.join(present)} (dataset.json 'domain')"
        )
    keep = {k: [c for c in entry[k] if cases[c]["domain"] in domains] for k in ("train", "val")}
    for k, ids in keep.items():
        if not ids:
            raise ValueError(f"fold {fold} has no {k} cases of domain {', '.join(domains)}")
    return entry | keep


def _spec(config: dict, scheme: str, entry: dict, plan: Plan) -> dict:
    t, a = config["train"], config["adversarial"]
    net = t["network"]
    spec = {
        "scheme": scheme,
        "fold": entry["fold"],
        "seed": t["seed"],
        "network": {
            "name": net["name"],
            "spatial_dims": net["spatial_dims"],
            "features": list(net["features"]),
            "in_channels": len(plan.channel_names),
            "out_channels": len(plan.labels),
        },
        "patch_size": list(t["patch_size"]),
        "slice_axis": slice_axis(plan.target_spacing),
        "channel_names": list(plan.channel_names),
        "labels": dict(plan.labels),
        # fitted on train, selected (validation Dice, best, collapse checks) on val, an inner
        # split of the fold's training patients; `adseg evaluate` tests on test, the held-out
        # patients of every domain
        "train_cases": list(entry["train"]),
        "val_cases": list(entry["val"]),
        "test_cases": list(entry["test"]),
        "discriminator": None,
    }
    if scheme in ADVERSARIAL_SCHEMES:
        norm = a["d_norm"]
        if norm == "auto":
            norm = "none" if a["loss"] == "wgan-gp" else "instance"
        spec["discriminator"] = {
            "input": a["d_input"],
            "features": list(a["d_features"]),
            "norm": norm,
            "output": a["d_output"],
            "loss": a["loss"],
            "real_maps": a["real_maps"],
        }
    return spec
