"""``adseg predict``: masks for new scans, written back in each scan's own geometry.

The model folder alone decides the network, the preprocessing (orientation, spacing,
normalisation, channel order) and the label names. For each case:

1. read its channels (3-D files in channel order, or one 4-D file);
2. preprocess them exactly as the training cases
   (:func:`adseg.preprocessing.case.preprocess_images`);
3. infer with every chosen fold (MONAI sliding-window / slice inference, Gaussian blending),
   optionally with mirroring, and average the softmax maps; drop lesions smaller than the
   model's least size, if it has one (``model.json`` ``postprocess``, the threshold scheme);
4. resample the class probabilities onto the grid of the case's reference channel file (linear,
   per class) and take the argmax;
5. write the mask with that file's own NIfTI header (shape, affine, qform and sform codes), and
   optionally the probabilities as a 4-D float32 image, one volume per class, and (with
   ``uncertainty``) the voxel entropy and fold disagreement maps as float32 images
   (:mod:`adseg.inference.uncertainty`), with each lesion's mean entropy in its row.

Everything is checked before any output is made, and a failure names its file: the output
folder (:func:`adseg.guard.check_output`: never an input, inside one or holding one), the
model folder and its checkpoints (read as data), the scans (:mod:`adseg.inference.inputs`:
exactly the model's channels, readable, not empty or constant, in world register). Each output
file is written atomically, so a case is complete or absent. ``predictions.csv`` records what
each mask came from (:mod:`adseg.inference.provenance`): a rerun skips a finished case made
from the same model and files (and redoes one whose asked-for uncertainty maps are missing),
refuses one made from others unless ``overwrite``, and removes the temporary files a killed
run left.
"""

from __future__ import annotations

import csv
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from adseg.data.cohort import read_channels
from adseg.geometry import Grid
from adseg.guard import check_output, claim, owned
from adseg.inference.inputs import (
    InputCase,
    PredictError,
    channel_order,
    check_exists,
    check_images,
    collect_inputs,
    read_summary,
    write_summary,
)
from adseg.inference.modelfolder import CHECKPOINTS, FoldModel, read_model
from adseg.inference.provenance import (
    WRITE_TEST,
    check_distinct_channels,
    check_not_foreign,
    input_files,
    input_fingerprint,
    model_fingerprint,
    plan_cases,
    remove_stale_temps,
)
from adseg.inference.sliding import (
    discriminator_score,
    ensemble_spec,
    make_inferer,
    map_to_grid,
    one_hot,
    predict_probabilities,
    remove_small_components,
    to_grid,
)
from adseg.inference.uncertainty import (
    fold_disagreement,
    map_paths,
    normalised_entropy,
    plan_uncertainty,
    probabilities_and_votes,
)
from adseg.io import atomic_path
from adseg.log import logger, progress
from adseg.preprocessing.case import nonzero_bbox, preprocess_images

SUMMARY = "predictions.csv"


def check_models(models: list[FoldModel]) -> None:
    """All folds must share preprocessing, channels and labels to be averaged."""
    first = models[0]
    for m in models[1:]:
        for key in ("channel_names", "labels", "slice_axis"):
            if m.spec[key] != first.spec[key]:
                raise PredictError(
                    f"{m.folder}: {key} differs from {first.folder}; folds cannot be ensembled"
                )
        if m.plan.to_dict() != first.plan.to_dict():
            raise PredictError(f"{m.folder}: preprocessing differs from {first.folder}")


def describe_model(model_dir: str | Path, models: list[FoldModel]) -> str:
    """The start-up line: the channels the model expects, in order, and its labels, e.g.
    ``<model> (fold(s) 0, 1) expects 3 channel(s), in this order: 0000 = T2w, 0001 = ADC,
    0002 = DWI (model.json channel_names); labels: 0 = background, 1 = lesion``."""
    spec = models[0].spec
    names = spec["channel_names"]
    folds = ", ".join(str(m.spec.get("fold")) for m in models)
    labels = ", ".join(f"{v} = {k}" for k, v in sorted(spec["labels"].items(), key=lambda i: i[1]))
    return (
        f"{model_dir} (fold(s) {folds}) expects {len(names)} channel(s), in this order: "
        f"{channel_order(names)} (model.json channel_names); labels: {labels}"
    )


def check_writable(out: Path, command: str | None = None) -> None:
    """Create ``out`` (marked as ``command``'s output folder, :func:`adseg.guard.claim`, if
    given) and prove a file can be written there."""
    try:
        if command is None:
            out.mkdir(parents=True, exist_ok=True)
        else:
            claim(out, command)
        with atomic_path(out / WRITE_TEST) as tmp:
            tmp.write_bytes(b"")
        (out / WRITE_TEST).unlink()
    except OSError as err:
        raise PredictError(f"{out}: output folder is not writable ({err.strerror})") from None


def write_like(reference: Path, array_zyx: np.ndarray, path: Path, dtype) -> None:
    """Write ``array_zyx`` (or ``(K, z, y, x)``) with ``reference``'s NIfTI header geometry.

    Shape, affine, and qform/sform matrices and codes are the reference's; the data type is
    ``dtype`` with no intensity scaling.
    """
    ref = nib.load(str(reference))
    data = np.asarray(array_zyx)
    data = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data.astype(dtype), ref.affine, header)
    image.set_qform(ref.header.get_qform(), code=int(ref.header["qform_code"]))
    image.set_sform(ref.header.get_sform(), code=int(ref.header["sform_code"]))
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))


def lesion_stats(
    labels_zyx: np.ndarray, spacing_xyz, names: dict[int, str], entropy: np.ndarray | None = None
) -> dict:
    """Per foreground label: volume in mL, number of connected components (26-connected) and
    each component's mean of ``entropy`` (``<name>_mean_entropy``: one value per component,
    joined by ``"; "``, the components ordered by their first voxel in ``(z, y, x)`` order);
    then ``mean_entropy``, the mean of ``entropy`` over every foreground voxel. Without
    ``entropy`` (or without such voxels) those columns are empty.

    Args:
        entropy: the normalised entropy map ``(z, y, x)`` of the labels' grid, or None.
    """
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    structure = ndimage.generate_binary_structure(3, 3)
    out = {}
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        mask = labels_zyx == value
        voxels = int(np.count_nonzero(mask))
        out[f"{name}_ml"] = round(voxels * voxel_ml, 4)
        # components within the mask's bounding box, where they all lie: labelling the
        # whole volume took 2 ms even with nothing in it
        box = nonzero_bbox([mask]) if voxels else ()
        components, count = ndimage.label(mask[box], structure) if voxels else (None, 0)
        out[f"{name}_count"] = int(count)
        means = []
        if entropy is not None and count:
            means = ndimage.mean(entropy[box], components, np.arange(1, count + 1))
        out[f"{name}_mean_entropy"] = "; ".join(f"{m:.4f}" for m in means)
    foreground = labels_zyx != 0
    known = entropy is not None and foreground.any()
    out["mean_entropy"] = round(float(entropy[foreground].mean()), 4) if known else ""
    return out


@dataclass
class Critics:
    """The folds' discriminators (loaded once per call) and the threshold that flags a map."""

    discs: list[tuple[FoldModel, torch.nn.Module]]
    threshold: float | None

    @classmethod
    def load(cls, models: list[FoldModel], threshold: float | None, device) -> Critics:
        discs = [(m, m.discriminator("final", device)) for m in models]
        discs = [(m, d) for m, d in discs if d is not None]
        if threshold is None:
            own = [m.spec.get("quality_threshold") for m, _ in discs]
            own = [t for t in own if t is not None]
            threshold = float(np.mean(own)) if own else None
        return cls(discs, threshold)

    def score(self, image: torch.Tensor, probs: torch.Tensor) -> float | None:
        """D's mean score of the predicted label map over the folds that have a D, or None.

        D sees the one-hot argmax map, the map that is written.
        """
        if not self.discs:
            return None
        labels = one_hot(probs.argmax(0), probs.shape[0])
        scores = [
            discriminator_score(
                disc,
                m.spec["discriminator"]["input"],
                m.spatial_dims,
                m.spec["slice_axis"],
                image,
                labels,
            )
            for m, disc in self.discs
        ]
        return float(np.mean(scores)) if scores else None


@dataclass
class PredictOptions:
    """Choices of one ``adseg predict`` call."""

    folds: list[int] | None = None
    tta: bool = False
    save_probabilities: bool = False
    uncertainty: bool = False
    device: str = "auto"
    overwrite: bool = False
    checkpoint: str = "final"
    quality_threshold: float | None = None
    show_progress: bool = True


def predict_case(
    case: InputCase,
    models,
    nets,
    critics: Critics,
    inferer,
    opts: PredictOptions,
    out: Path,
    device,
):
    """Segment one case and write its outputs; return its summary row."""
    t0 = time.perf_counter()
    spec, plan = models[0].spec, models[0].plan
    channels = read_channels(case.channels)
    # the record's intensity statistics are QC of a training cohort; a prediction needs none
    images, _, record = preprocess_images(channels, None, plan, statistics=False)
    x = torch.from_numpy(np.stack([sitk.GetArrayFromImage(im).transpose(2, 1, 0) for im in images]))
    dims, axis = spec["network"]["spatial_dims"], spec["slice_axis"]
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    specs = [m.spec for m in models]
    if opts.uncertainty:
        probs, votes = probabilities_and_votes(nets, specs, x, inferer, dims, axis, opts.tta, amp)
    else:
        probs = predict_probabilities(nets, x, inferer, dims, axis, opts.tta, amp)
    probs = remove_small_components(probs, ensemble_spec(specs))
    reference = channels[plan.reference_channel]
    grid, ref_grid = Grid.from_dict(record["final_grid"]), Grid.of(reference)
    labels, prob_arr = to_grid(probs, grid, ref_grid)
    ref_file = case.channels[plan.reference_channel].path
    names = {v: k for k, v in spec["labels"].items()}
    entropy = normalised_entropy(prob_arr) if opts.uncertainty else None
    row = {"case_id": case.case_id, **lesion_stats(labels, reference.GetSpacing(), names, entropy)}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    score = critics.score(x, probs)
    if score is not None:
        row["d_score"] = round(score, 4)
        if critics.threshold is not None:
            row["d_threshold"] = round(critics.threshold, 4)
            row["d_flag"] = "unlike-expert" if score < critics.threshold else ""
    if opts.save_probabilities:
        write_like(ref_file, prob_arr, out / f"{case.case_id}_probabilities.nii.gz", np.float32)
    if opts.uncertainty:
        disagreement = map_to_grid(fold_disagreement(votes, probs.argmax(0)), grid, ref_grid)
        for path, values in zip(map_paths(out, case.case_id), (entropy, disagreement), strict=True):
            write_like(ref_file, values, path, np.float32)
    # the mask last: its presence marks a finished case
    write_like(ref_file, labels, out / f"{case.case_id}.nii.gz", np.uint8)
    return row


def model_files(models: list[FoldModel], checkpoint: str) -> list[Path]:
    """The files of the folds that decide a mask and its row: spec, plan, checkpoints read."""
    files = []
    for m in models:
        used = {CHECKPOINTS[checkpoint]}
        if m.spec.get("discriminator") is not None:
            used.add(CHECKPOINTS["final"])  # the critic's weights
        files += [m.folder / "model.json", m.folder / "plans.json"]
        files += [m.folder / name for name in sorted(used)]
    return files


def check_cases(cases: list[InputCase], models: list[FoldModel]) -> dict[str, dict[str, str]]:
    """Check every case's files; return each case's provenance (fingerprints, files).

    Raises:
        PredictError: a case id given twice, or any file a model cannot segment.
    """
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise PredictError(f"case ids given twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    names, reference = models[0].spec["channel_names"], models[0].plan.reference_channel
    hashes: dict[Path, str] = {}
    out = {}
    # cases checked side by side: reading is most of it, and SimpleITK and zlib let go of the
    # GIL (the first case in order with an error raises, as one by one)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        warnings = list(pool.map(lambda case: check_images(case, names, reference), cases))
    for case, case_warnings in zip(cases, warnings, strict=True):
        for warning in case_warnings:
            logger.warning("%s", warning)
        check_distinct_channels(case, names, hashes)
        out[case.case_id] = {
            "input_sha256": input_fingerprint(case, hashes),
            "input_files": input_files(case),
        }
    return out


def predict(
    inputs: list[str | Path], out: str | Path, model_dir: str | Path, opts: PredictOptions
) -> Path:
    """Segment every input case with the model folder's folds; return the summary CSV path.

    Raises:
        OutputError: an output folder that is, lies in or holds an input (or the model).
        PredictError, ModelError, CheckpointError: bad input or model files, or cases
            predicted from another model or other files (unless ``overwrite``); all found
            before any output is made.
    """
    from adseg.training.engine import pick_device

    check_exists([Path(p) for p in inputs], Path(model_dir))
    check_output(out, [*inputs, model_dir], overwrite=opts.overwrite)
    out = Path(out)
    models = read_model(model_dir, opts.folds)
    check_models(models)
    logger.info("%s", describe_model(model_dir, models))
    names = models[0].spec["channel_names"]
    cases = collect_inputs([Path(p) for p in inputs], names)
    provenance = check_cases(cases, models)
    device = pick_device(opts.device)
    nets = [m.segmentor(opts.checkpoint, device) for m in models]
    critics = Critics.load(models, opts.quality_threshold, device)
    model_sha = model_fingerprint(model_files(models, opts.checkpoint), opts.tta)
    for record in provenance.values():
        record["model_sha256"] = model_sha
    spec = models[0].spec
    inferer = make_inferer(spec["network"]["spatial_dims"], spec["patch_size"], spec["slice_axis"])
    summary = out / SUMMARY
    try:
        rows = read_summary(summary)
    except (KeyError, csv.Error, UnicodeDecodeError) as err:
        raise PredictError(f"{summary}: not a predictions table adseg wrote ({err})") from None
    todo = plan_cases(
        cases, provenance, rows, out, opts.overwrite, opts.save_probabilities, Path(model_dir)
    )
    ours = out.is_dir() and owned(out)
    todo = plan_uncertainty(cases, todo, out, ours, opts.uncertainty)
    check_not_foreign(out, todo, ours)
    check_writable(out, "predict")
    if ours:
        remove_stale_temps(out)
    if len(todo) < len(cases):
        logger.info("%d case(s) already done in %s; skipping them", len(cases) - len(todo), out)
    for case in progress(todo, "predict", enabled=opts.show_progress):
        if rows.pop(case.case_id, None) is not None:
            # a row describes the mask beside it: drop it before that mask is replaced
            write_summary(summary, rows)
        for path in map_paths(out, case.case_id):
            path.unlink(missing_ok=True)  # so are old maps: an --overwrite may change the mask
        row = predict_case(case, models, nets, critics, inferer, opts, out, device)
        rows[case.case_id] = {**row, **provenance[case.case_id]}
        write_summary(summary, rows)
        logger.info("%s: %s", case.case_id, row)
    if not summary.is_file():
        write_summary(summary, rows)
    return summary
